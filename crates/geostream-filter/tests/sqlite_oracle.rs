//! The SQLite translation against `evaluate`, on random filters and random rows: the full
//! three-valued answer of the clause (TRUE / FALSE / NULL) must equal the Rust one.

mod common;

use geostream_filter::sql::{Dialect, SqlParam, attribute_to_sql};
use geostream_filter::{AttributeFilter, FeatureRef, FilterError, Limits};
use proptest::prelude::*;
use rusqlite::types::Value as Sql;
use serde_json::Value;

fn bind(p: &SqlParam) -> Sql {
    match p {
        SqlParam::Text(s) => Sql::Text(s.clone()),
        SqlParam::Float(v) => Sql::Real(*v),
        SqlParam::Int(v) => Sql::Integer(*v),
        SqlParam::Bool(b) => Sql::Integer(i64::from(*b)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_agrees_with_evaluate(text in common::filter(false), rows in proptest::collection::vec(common::props(), 8)) {
        let f = match AttributeFilter::parse_text(&text, &Limits::default()) {
            Ok(f) => f,
            Err(FilterError::InvalidDatetime { .. }) => return Ok(()), // inverted INTERVAL literal
            Err(e) => return Err(TestCaseError::fail(format!("{text}: {e}"))),
        };
        let sql = attribute_to_sql(&f, Dialect::Sqlite, 1).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t (id INTEGER, properties TEXT)").unwrap();
        for (i, props) in rows.iter().enumerate() {
            db.execute("INSERT INTO t VALUES (?1, ?2)", (i as i64, Value::Object(props.clone()).to_string())).unwrap();
        }
        let query = format!(
            "SELECT id, CASE WHEN ({c}) THEN 1 WHEN NOT ({c}) THEN 0 END FROM t ORDER BY id",
            c = sql.clause
        );
        let mut stmt = db.prepare(&query).map_err(|e| TestCaseError::fail(format!("{text}: {e}\n{query}")))?;
        let answers: Vec<Option<i64>> = stmt
            .query_map(rusqlite::params_from_iter(sql.params.iter().map(bind)), |r| r.get(1))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (props, sql_answer) in rows.iter().zip(answers) {
            let ours = f.evaluate(&FeatureRef::new(props));
            prop_assert_eq!(ours, sql_answer.map(|v| v == 1), "filter {} on {}\n{}", text, Value::Object(props.clone()), sql.clause);
        }
    }
}

/// Timestamps the Rust parser refuses must be NULL in SQL too, and the accepted ones must
/// convert to the same millisecond.
#[test]
fn timestamp_grammar_matches() {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE t (id INTEGER, properties TEXT)")
        .unwrap();
    let samples = [
        "2020-01-01",
        "2020-02-29",
        "2019-02-29",
        "2021-04-31",
        "2020-13-01",
        "0000-01-01",
        "0001-01-01",
        "9999-12-31T23:59:59.999Z",
        "2020-01-01T00:00:00Z",
        "2020-01-01 00:00:00Z",
        "2020-01-01T00:00:00",
        "2020-01-01T24:00:00Z",
        "2020-01-01T23:60:00Z",
        "2020-01-01T23:59:60Z",
        "2020-01-01T10:00:00.5Z",
        "2020-01-01T10:00:00.123456789+05:30",
        "2020-01-01T10:00:00.1234567890Z",
        "2020-01-01T10:00:00.Z",
        "2020-01-01T10:00:00-00:45",
        "2020-01-01T10:00:00+24:00",
        "2020-01-01T10:00:00+0100",
        "2020-01-01T10:00:00ZZ",
        "2020-01-01T10:00",
        "2020-1-01",
        "20200101",
        "2459000.5",
        "now",
        "",
        "2020-01-01T10:00:00.12x4Z",
        "2020-01-01t10:00:00z",
        "1969-12-31T23:59:59.999Z",
    ];
    for (i, s) in samples.iter().enumerate() {
        db.execute(
            "INSERT INTO t VALUES (?1, json_object('t', ?2))",
            (i as i64, s),
        )
        .unwrap();
    }
    // `t = TIMESTAMP(x)` for one accepted x per sample, and IS NULL-ness of the conversion via
    // T_EQUALS(t, t), which is unknown exactly when t is not a time.
    let f = AttributeFilter::parse_text("T_EQUALS(t, t)", &Limits::default()).unwrap();
    let sql = attribute_to_sql(&f, Dialect::Sqlite, 1).unwrap();
    let q = format!(
        "SELECT id, CASE WHEN ({c}) THEN 1 WHEN NOT ({c}) THEN 0 END FROM t ORDER BY id",
        c = sql.clause
    );
    let mut stmt = db.prepare(&q).unwrap();
    let got: Vec<Option<i64>> = stmt
        .query_map(
            rusqlite::params_from_iter(sql.params.iter().map(bind)),
            |r| r.get(1),
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (s, g) in samples.iter().zip(got) {
        let props = serde_json::json!({ "t": s });
        let rust = f.evaluate(&FeatureRef::new(props.as_object().unwrap()));
        assert_eq!(rust, g.map(|v| v == 1), "{s}");
    }
    // Millisecond values: compare each accepted sample with its own instant.
    for s in samples {
        let props = serde_json::json!({ "t": s });
        let Ok(tf) = geostream_filter::TemporalFilter::parse(s) else {
            continue;
        };
        if s.len() == 10 {
            continue;
        }
        let (ms, _) = tf.interval_ms();
        let f = AttributeFilter::parse_text(
            &format!("T_EQUALS(t, INTERVAL(TIMESTAMP('{s}'), TIMESTAMP('{s}')))"),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            f.evaluate(&FeatureRef::new(props.as_object().unwrap())),
            Some(true),
            "{s}"
        );
        let sql = attribute_to_sql(&f, Dialect::Sqlite, 1).unwrap();
        let n: i64 = db
            .query_row(
                &format!(
                    "SELECT count(*) FROM t WHERE json_extract(properties, '$.t') = ?{} AND ({})",
                    sql.params.len() + 1,
                    sql.clause
                ),
                rusqlite::params_from_iter(
                    sql.params
                        .iter()
                        .map(bind)
                        .chain([Sql::Text(s.to_string())]),
                ),
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            n, 1,
            "{s} ({ms:?}) did not convert to the same millisecond in SQLite"
        );
    }
}
