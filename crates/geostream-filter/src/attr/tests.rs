//! One test per construct, each with the cases that tell a right answer from a wrong one.

use geo::{Geometry, LineString, Point, Polygon};
use serde_json::{Value, json};

use super::AttributeFilter;
use crate::{FeatureRef, FilterError, Limits};

fn parse(text: &str) -> AttributeFilter {
    AttributeFilter::parse_text(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Three-valued answer of `text` on a feature with these properties.
fn eval(text: &str, props: Value) -> Option<bool> {
    let props = props.as_object().unwrap().clone();
    parse(text).evaluate(&FeatureRef::new(&props))
}

fn eval_geom(text: &str, g: &Geometry<f64>) -> Option<bool> {
    let props = serde_json::Map::new();
    parse(text).evaluate(&FeatureRef::new(&props).with_geometry(g))
}

const T: Option<bool> = Some(true);
const F: Option<bool> = Some(false);
const U: Option<bool> = None;

#[test]
fn comparisons_on_numbers() {
    let p = || json!({"speed": 12.5, "n": 3});
    assert_eq!(eval("speed > 10", p()), T);
    assert_eq!(eval("speed > 12.5", p()), F);
    assert_eq!(eval("speed >= 12.5", p()), T);
    assert_eq!(eval("speed < 13", p()), T);
    assert_eq!(eval("speed <= 12", p()), F);
    assert_eq!(eval("speed = 12.5", p()), T);
    assert_eq!(eval("speed <> 12.5", p()), F);
    assert_eq!(eval("speed != 1", p()), T);
    assert_eq!(eval("10 < speed", p()), T, "literal on the left");
    assert_eq!(
        eval("n = 3.0", p()),
        T,
        "integers and doubles compare as numbers"
    );
    assert_eq!(eval("speed > n", p()), T, "property against property");
}

#[test]
fn comparisons_on_strings_and_booleans() {
    let p = || json!({"name": "bus 7", "flag": true, "other": false});
    assert_eq!(eval("name = 'bus 7'", p()), T);
    assert_eq!(eval("name = 'Bus 7'", p()), F, "case-sensitive");
    assert_eq!(eval("name < 'bus 8'", p()), T);
    assert_eq!(eval("name > 'bus'", p()), T);
    assert_eq!(eval("flag = true", p()), T);
    assert_eq!(eval("flag = false", p()), F);
    assert_eq!(eval("other < flag", p()), T, "false orders before true");
    assert_eq!(eval("flag", p()), T, "a boolean property as a condition");
    assert_eq!(eval("other", p()), F);
    assert_eq!(eval("name", p()), U, "a string is not a condition");
}

#[test]
fn missing_null_and_mismatched_values_are_unknown() {
    let p = || json!({"speed": null, "name": "x", "tags": [1, 2]});
    for text in [
        "speed > 1",
        "missing > 1",
        "name > 1",
        "tags = 1",
        "missing = missing",
    ] {
        assert_eq!(eval(text, p()), U, "{text}");
        assert_eq!(eval(&format!("NOT ({text})"), p()), U, "NOT ({text})");
    }
    assert_eq!(
        eval("missing > 1 AND name = 'y'", p()),
        F,
        "unknown AND false"
    );
    assert_eq!(eval("missing > 1 OR name = 'x'", p()), T, "unknown OR true");
    assert_eq!(
        eval("missing > 1 OR name = 'y'", p()),
        U,
        "unknown OR false"
    );
    assert_eq!(
        eval("missing > 1 AND name = 'x'", p()),
        U,
        "unknown AND true"
    );
    assert_eq!(eval("name = NULL", p()), U);
}

#[test]
fn is_null() {
    let p = || json!({"a": null, "b": 0, "c": "", "d": [], "e": {}});
    assert_eq!(eval("a IS NULL", p()), T);
    assert_eq!(eval("missing IS NULL", p()), T);
    assert_eq!(eval("b IS NULL", p()), F);
    assert_eq!(eval("c IS NULL", p()), F);
    assert_eq!(eval("d IS NULL", p()), F);
    assert_eq!(eval("e IS NULL", p()), F);
    assert_eq!(eval("a IS NOT NULL", p()), F);
    assert_eq!(eval("b IS NOT NULL", p()), T);
    assert_eq!(eval("(b + 1) IS NULL", p()), F);
    assert_eq!(
        eval("(c + 1) IS NULL", p()),
        T,
        "arithmetic on a string has no value"
    );
}

#[test]
fn like() {
    let p = || json!({"name": "bus 12", "pct": "100%", "n": 5});
    assert_eq!(eval("name LIKE 'bus%'", p()), T);
    assert_eq!(eval("name LIKE 'Bus%'", p()), F);
    assert_eq!(eval("name LIKE '%12'", p()), T);
    assert_eq!(eval("name LIKE 'bus __'", p()), T);
    assert_eq!(eval("name LIKE 'bus _'", p()), F);
    assert_eq!(eval("name NOT LIKE 'tram%'", p()), T);
    assert_eq!(eval("pct LIKE '100\\%'", p()), T);
    assert_eq!(eval("name LIKE '100\\%'", p()), F);
    assert_eq!(eval("n LIKE '5'", p()), U, "LIKE on a number is unknown");
    assert_eq!(eval("missing LIKE '%'", p()), U);
    assert_eq!(eval("CASEI(name) LIKE CASEI('BUS%')", p()), T);
}

#[test]
fn between_and_in() {
    let p = || json!({"x": 5, "s": "m"});
    assert_eq!(eval("x BETWEEN 1 AND 10", p()), T);
    assert_eq!(eval("x BETWEEN 5 AND 5", p()), T, "inclusive");
    assert_eq!(eval("x BETWEEN 6 AND 10", p()), F);
    assert_eq!(eval("x NOT BETWEEN 6 AND 10", p()), T);
    assert_eq!(eval("s BETWEEN 'a' AND 'z'", p()), T);
    assert_eq!(eval("x BETWEEN 'a' AND 'z'", p()), U, "type mismatch");
    assert_eq!(eval("missing BETWEEN 1 AND 2", p()), U);
    assert_eq!(eval("x IN (1, 5, 9)", p()), T);
    assert_eq!(eval("x IN (1, 2)", p()), F);
    assert_eq!(eval("x NOT IN (1, 2)", p()), T);
    assert_eq!(eval("s IN ('a', 'm')", p()), T);
    assert_eq!(
        eval("x IN (1, NULL)", p()),
        U,
        "no match and a NULL: unknown, as in SQL"
    );
    assert_eq!(eval("x IN (5, NULL)", p()), T);
    assert_eq!(eval("missing IN (1, 2)", p()), U);
}

#[test]
fn arithmetic() {
    let p = || json!({"a": 7, "b": 2, "z": 0, "s": "x"});
    assert_eq!(eval("a + b = 9", p()), T);
    assert_eq!(eval("a - b - 1 = 4", p()), T, "left to right");
    assert_eq!(eval("a * b = 14", p()), T);
    assert_eq!(eval("a / b = 3.5", p()), T);
    assert_eq!(eval("a div b = 3", p()), T);
    assert_eq!(
        eval("-a div b = -3", p()),
        T,
        "integer division truncates toward zero"
    );
    assert_eq!(eval("a % b = 1", p()), T);
    assert_eq!(eval("b ^ 3 = 8", p()), T);
    assert_eq!(eval("a + b * 2 = 11", p()), T, "precedence");
    assert_eq!(eval("a / z > 0", p()), U, "division by zero has no value");
    assert_eq!(eval("a + s > 0", p()), U);
    assert_eq!(eval("-a < 0", p()), T);
}

#[test]
fn casei_and_accenti() {
    let p = || json!({"city": "São Paulo", "n": 3});
    assert_eq!(eval("CASEI(city) = CASEI('SÃO PAULO')", p()), T);
    assert_eq!(eval("CASEI(city) = 'são paulo'", p()), T);
    assert_eq!(eval("city = 'são paulo'", p()), F);
    assert_eq!(eval("ACCENTI(city) = 'Sao Paulo'", p()), T);
    assert_eq!(
        eval("ACCENTI(CASEI(city)) = ACCENTI(CASEI('SAO PAULO'))", p()),
        T
    );
    assert_eq!(eval("ACCENTI(city) LIKE 'Sao%'", p()), T);
    assert_eq!(eval("CASEI(n) = '3'", p()), U);
}

#[test]
fn timestamps_in_comparisons() {
    let p = || json!({"t": "2020-06-01T12:00:00Z", "d": "2020-06-01", "bad": "June", "num": 5});
    assert_eq!(eval("t > TIMESTAMP('2020-06-01T11:59:59Z')", p()), T);
    assert_eq!(eval("t < TIMESTAMP('2020-06-01T11:59:59Z')", p()), F);
    assert_eq!(
        eval("t = TIMESTAMP('2020-06-01T14:00:00+02:00')", p()),
        T,
        "offsets"
    );
    assert_eq!(eval("d = DATE('2020-06-01')", p()), T);
    assert_eq!(
        eval("t >= DATE('2020-06-01')", p()),
        T,
        "a DATE compares as its midnight"
    );
    assert_eq!(eval("bad > TIMESTAMP('2020-01-01T00:00:00Z')", p()), U);
    assert_eq!(eval("num > TIMESTAMP('2020-01-01T00:00:00Z')", p()), U);
    assert_eq!(
        eval(
            "t BETWEEN TIMESTAMP('2020-01-01T00:00:00Z') AND TIMESTAMP('2021-01-01T00:00:00Z')",
            p()
        ),
        T
    );
}

#[test]
fn temporal_relations() {
    let p = || {
        json!({"t": "2020-06-01T12:00:00Z", "start": "2020-06-01T00:00:00Z", "end": "2020-06-30T00:00:00Z",
               "open": "..", "day": "2020-06-01"})
    };
    assert_eq!(
        eval("T_BEFORE(t, TIMESTAMP('2020-06-02T00:00:00Z'))", p()),
        T
    );
    assert_eq!(
        eval("T_BEFORE(t, TIMESTAMP('2020-06-01T12:00:00Z'))", p()),
        F
    );
    assert_eq!(
        eval("T_AFTER(t, TIMESTAMP('2020-06-01T00:00:00Z'))", p()),
        T
    );
    assert_eq!(
        eval(
            "T_INTERSECTS(t, INTERVAL('2020-06-01T12:00:00Z', '..'))",
            p()
        ),
        T,
        "inclusive"
    );
    assert_eq!(
        eval(
            "T_INTERSECTS(t, INTERVAL('..', '2020-06-01T11:00:00Z'))",
            p()
        ),
        F
    );
    assert_eq!(
        eval(
            "T_DURING(t, INTERVAL('2020-05-01T00:00:00Z', '2020-07-01T00:00:00Z'))",
            p()
        ),
        T
    );
    assert_eq!(
        eval(
            "T_DURING(t, INTERVAL('2020-06-01T12:00:00Z', '2020-07-01T00:00:00Z'))",
            p()
        ),
        F,
        "strict"
    );
    assert_eq!(
        eval("T_EQUALS(t, TIMESTAMP('2020-06-01T12:00:00Z'))", p()),
        T
    );
    assert_eq!(
        eval("T_DISJOINT(t, TIMESTAMP('2020-06-01T12:00:00Z'))", p()),
        F
    );
    assert_eq!(
        eval("T_CONTAINS(INTERVAL(start, end), t)", p()),
        T,
        "property bounds"
    );
    assert_eq!(
        eval("T_DURING(t, INTERVAL(start, open))", p()),
        T,
        "'..' in a property is open"
    );
    assert_eq!(
        eval("T_INTERSECTS(day, TIMESTAMP('2020-06-01T23:00:00Z'))", p()),
        T,
        "a date is its day"
    );
    assert_eq!(eval("T_EQUALS(day, DATE('2020-06-01'))", p()), T);
    assert_eq!(
        eval("T_MEETS(INTERVAL(start, t), INTERVAL(t, end))", p()),
        T
    );
    assert_eq!(
        eval("T_METBY(INTERVAL(t, end), INTERVAL(start, t))", p()),
        T
    );
    assert_eq!(
        eval(
            "T_OVERLAPS(INTERVAL(start, t), INTERVAL('2020-06-01T06:00:00Z', end))",
            p()
        ),
        T
    );
    assert_eq!(
        eval(
            "T_OVERLAPPEDBY(INTERVAL('2020-06-01T06:00:00Z', end), INTERVAL(start, t))",
            p()
        ),
        T
    );
    assert_eq!(
        eval("T_STARTS(INTERVAL(start, t), INTERVAL(start, end))", p()),
        T
    );
    assert_eq!(
        eval("T_STARTEDBY(INTERVAL(start, end), INTERVAL(start, t))", p()),
        T
    );
    assert_eq!(
        eval("T_FINISHES(INTERVAL(t, end), INTERVAL(start, end))", p()),
        T
    );
    assert_eq!(
        eval("T_FINISHEDBY(INTERVAL(start, end), INTERVAL(t, end))", p()),
        T
    );
    assert_eq!(
        eval("T_BEFORE(missing, TIMESTAMP('2020-06-02T00:00:00Z'))", p()),
        U
    );
    assert_eq!(
        eval(
            "NOT T_BEFORE(missing, TIMESTAMP('2020-06-02T00:00:00Z'))",
            p()
        ),
        U
    );
}

#[test]
fn spatial_predicates() {
    let inside = Geometry::Point(Point::new(5.0, 5.0));
    let outside = Geometry::Point(Point::new(50.0, 5.0));
    let square = "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))";
    assert_eq!(
        eval_geom(&format!("S_INTERSECTS(geometry, {square})"), &inside),
        T
    );
    assert_eq!(
        eval_geom(&format!("S_INTERSECTS(geometry, {square})"), &outside),
        F
    );
    assert_eq!(
        eval_geom(&format!("S_INTERSECTS({square}, geometry)"), &inside),
        T
    );
    assert_eq!(
        eval_geom(&format!("S_DISJOINT(geometry, {square})"), &outside),
        T
    );
    assert_eq!(
        eval_geom(&format!("S_WITHIN(geometry, {square})"), &inside),
        T
    );
    assert_eq!(
        eval_geom(&format!("S_WITHIN({square}, geometry)"), &inside),
        F
    );
    assert_eq!(
        eval_geom(&format!("S_CONTAINS({square}, geometry)"), &inside),
        T
    );
    assert_eq!(
        eval_geom(&format!("S_CONTAINS(geometry, {square})"), &inside),
        F
    );
    assert_eq!(eval_geom("S_EQUALS(geometry, POINT(5 5))", &inside), T);
    let edge = Geometry::LineString(LineString::from(vec![(10.0, 0.0), (20.0, 0.0)]));
    assert_eq!(
        eval_geom(&format!("S_TOUCHES(geometry, {square})"), &edge),
        T
    );
    let crossing = Geometry::LineString(LineString::from(vec![(5.0, 5.0), (20.0, 5.0)]));
    assert_eq!(
        eval_geom(&format!("S_CROSSES(geometry, {square})"), &crossing),
        T
    );
    let overlapping = Geometry::Polygon(Polygon::new(
        LineString::from(vec![
            (5.0, 5.0),
            (15.0, 5.0),
            (15.0, 15.0),
            (5.0, 15.0),
            (5.0, 5.0),
        ]),
        vec![],
    ));
    assert_eq!(
        eval_geom(&format!("S_OVERLAPS(geometry, {square})"), &overlapping),
        T
    );
    assert_eq!(
        eval_geom("S_INTERSECTS(geometry, BBOX(0, 0, 10, 10))", &inside),
        T
    );
    assert_eq!(
        eval_geom(
            "S_INTERSECTS(geometry, BBOX(170, -10, -170, 10))",
            &Geometry::Point(Point::new(-175.0, 0.0))
        ),
        T,
        "an antimeridian BBOX literal"
    );
    let json = json!({"op": "s_intersects", "args": [{"property": "geometry"},
        {"type": "Polygon", "coordinates": [[[0,0],[10,0],[10,10],[0,10],[0,0]]]}]});
    let f = AttributeFilter::parse_json(&json, &Limits::default()).unwrap();
    let props = serde_json::Map::new();
    assert!(f.matches(&FeatureRef::new(&props).with_geometry(&inside)));
    assert_eq!(
        eval("S_INTERSECTS(geometry, POINT(1 1))", json!({})),
        U,
        "no geometry"
    );
    assert_eq!(
        eval("S_INTERSECTS(POINT(1 1), POINT(1 1))", json!({})),
        T,
        "two literals fold"
    );
    // A feature bbox that misses the literal settles the answer without the geometry.
    let f = parse(&format!("S_INTERSECTS(geometry, {square})"));
    let far_box = FeatureRef {
        bbox: Some([40.0, 0.0, 60.0, 10.0]),
        ..FeatureRef::new(&props).with_geometry(&outside)
    };
    assert!(!f.matches(&far_box));
}

#[test]
fn json_encoding_matches_text() {
    let text = parse("speed > 10 AND name LIKE 'bus%'");
    let json = AttributeFilter::parse_json(&text.to_json(), &Limits::default()).unwrap();
    assert_eq!(text, json);
    let also = AttributeFilter::parse(&text.to_json().to_string(), &Limits::default()).unwrap();
    assert_eq!(also.to_text(), text.to_text());
    let props = json!({"speed": 11, "name": "bus"});
    let props = props.as_object().unwrap();
    assert!(json.matches(&FeatureRef::new(props)));
}

#[test]
fn accessors() {
    let f = parse(
        "speed > 10 AND (name LIKE 'bus%' OR T_BEFORE(INTERVAL(a, b), TIMESTAMP('2020-01-01T00:00:00Z'))) AND S_INTERSECTS(geometry, BBOX(1, 2, 3, 4))",
    );
    assert_eq!(f.referenced_properties(), vec!["a", "b", "name", "speed"]);
    assert_eq!(
        f.to_text(),
        AttributeFilter::parse_text(&f.to_text(), &Limits::default())
            .unwrap()
            .to_text()
    );
    assert_eq!(f.bbox(), Some([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(parse("speed > 10").complexity(), 3);
    assert_eq!(parse("speed > 10").bbox(), None);
    assert_eq!(
        parse("speed > 10 OR S_INTERSECTS(geometry, BBOX(1, 2, 3, 4))").bbox(),
        None,
        "OR does not bound"
    );
}

#[test]
fn limits_are_enforced() {
    let limits = Limits::default();
    let many = (0..100)
        .map(|i| format!("p{i} = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let e = AttributeFilter::parse_text(&many, &limits).unwrap_err();
    assert_eq!(
        e,
        FilterError::TooManyNodes {
            nodes: 301,
            max: 200
        }
    );
    assert_eq!(e.to_string(), "filter has 301 nodes; at most 200 allowed");
    let deep = format!("{}x = 1{}", "NOT (".repeat(40), ")".repeat(40));
    let e = AttributeFilter::parse_text(&deep, &limits).unwrap_err();
    assert!(matches!(e, FilterError::TooDeep { .. }), "{e}");
    // Far beyond any limit: refused before the parser, so no stack overflow on a 2 MiB thread.
    let huge = format!("{}x = 1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(matches!(
        AttributeFilter::parse_text(&huge, &limits),
        Err(FilterError::TooDeep { .. })
    ));
    let nots = format!("{}x = 1", "NOT ".repeat(100_000));
    assert!(matches!(
        AttributeFilter::parse_text(&nots, &limits),
        Err(FilterError::TooManyNodes { .. })
    ));
    let chain = (0..5000)
        .map(|i| format!("a{i}"))
        .collect::<Vec<_>>()
        .join(" = ");
    assert!(AttributeFilter::parse_text(&chain, &limits).is_err());
    // Found by `tests/fuzz_cql2.rs`: `-1 -1 -1 ...` is a chain of subtractions, not a list of
    // negative numbers, and overflowed the stack at a few thousand terms. Minus signs and
    // numbers outside WKT count towards the limit; in and out of a geometry, and in `BBOX`,
    // whose arguments are expressions.
    for n in [1000, 5000, 100_000] {
        let minus = " -1".repeat(n);
        for text in [
            format!("m > -1{minus}"),
            format!("S_INTERSECTS(geometry, POINT(0 0)) AND m > 1{minus}"),
            format!("S_INTERSECTS(geometry, BBOX(0, 0, 1, 1{minus}))"),
            format!("point = 1 AND (1{minus}) > 0"),
        ] {
            assert!(
                matches!(
                    AttributeFilter::parse_text(&text, &limits),
                    Err(FilterError::TooManyNodes { .. })
                ),
                "{n} terms: {}",
                &text[..60]
            );
        }
    }
    let long = format!("x = '{}'", "a".repeat(2 << 20));
    assert_eq!(
        AttributeFilter::parse_text(&long, &limits)
            .unwrap_err()
            .to_string(),
        format!(
            "filter text is {} bytes; at most 1048576 allowed",
            long.len()
        )
    );
    let mut deep_json = json!({"property": "x"});
    for _ in 0..200 {
        deep_json = json!({"op": "not", "args": [deep_json]});
    }
    assert!(matches!(
        AttributeFilter::parse_json(&deep_json, &limits),
        Err(FilterError::TooDeep { .. })
    ));
    let points = (0..20)
        .map(|i| format!("{i} {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let small = Limits {
        max_vertices: 10,
        ..limits
    };
    assert_eq!(
        AttributeFilter::parse_text(
            &format!("S_INTERSECTS(geometry, LINESTRING({points}))"),
            &small
        )
        .unwrap_err()
        .to_string(),
        "geometry has 11 vertices; at most 10 allowed"
    );
    // Within the limits, the deepest and largest filters still parse.
    let ok = format!("{}x = 1{}", "NOT (".repeat(20), ")".repeat(20));
    assert!(AttributeFilter::parse_text(&ok, &limits).is_ok());
    let ok = (0..60)
        .map(|i| format!("p{i} = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    assert!(AttributeFilter::parse_text(&ok, &limits).is_ok());
}

#[test]
fn unsupported_constructs_are_named() {
    let limits = Limits::default();
    let err = |t: &str| {
        AttributeFilter::parse_text(t, &limits)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("A_CONTAINS(tags, ('a', 'b'))"),
        "unsupported CQL2 operator a_contains"
    );
    assert_eq!(err("myfunc(x) = 1"), "unsupported CQL2 operator myfunc");
    assert!(err("name LIKE other").contains("LIKE pattern must be a string literal"));
    assert!(
        err("S_INTERSECTS(footprint, POINT(1 2))")
            .contains("property 'footprint' is not a geometry")
    );
    assert!(err("x + 1").contains("produces a value, not a condition"));
    assert!(
        err("TIMESTAMP('2020-13-01T00:00:00Z') > t")
            .contains("invalid datetime '2020-13-01T00:00:00Z'")
    );
    assert!(
        err("T_BEFORE(t, INTERVAL('2021-01-01', '2020-01-01'))").contains("starts after it ends")
    );
    assert!(
        err("S_INTERSECTS(geometry, BBOX(0, 0, 10, 91))")
            .contains("BBOX latitude 91 is outside -90..90")
    );
    assert!(err("S_INTERSECTS(geometry, POLYGON((0 0, 1 0, 1 1, 0 1)))").contains("is not closed"));
    assert!(err("name LIKE 'abc\\'").contains("escape character"));
    assert!(err("speed >").starts_with("CQL2 text does not parse"));
    assert!(
        AttributeFilter::parse_json(&json!({"op": "=", "args": "nope"}), &limits)
            .unwrap_err()
            .to_string()
            .starts_with("CQL2 JSON does not parse")
    );
}

/// Regressions found by `tests/fuzz_cql2.rs`: inputs of a few dozen bytes on which cql2's
/// backtracking parser ran for seconds to minutes (85 bytes took 93 s in the dev profile).
#[test]
fn pathological_nesting_is_refused_quickly() {
    let limits = Limits::default();
    let slow = [
        "NOT ((t > TIMESTAMP('2021-02-28T23:59:59.999Z')) AND ((m / 4) <(((((((((((((((((((((("
            .to_string(),
        format!("x < {}", "(".repeat(30)),
        format!("{}x = 1", "(".repeat(30)),
        // Balanced, but nothing valid inside: only the call limit stops the backtracking.
        format!("{}x ={}", "(".repeat(30), ")".repeat(30)),
        format!("x = {}1 +{}", "(".repeat(30), ")".repeat(30)),
    ];
    for text in &slow {
        let start = std::time::Instant::now();
        let e = AttributeFilter::parse_text(text, &limits).unwrap_err();
        assert!(matches!(e, FilterError::Cql2Text(_)), "{text}: {e}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{text}: {:?}",
            start.elapsed()
        );
    }
    assert_eq!(
        AttributeFilter::parse_text("(x = 1))", &limits)
            .unwrap_err()
            .to_string(),
        "CQL2 text does not parse: parentheses are not balanced"
    );
    // Large legitimate filters stay within the parser's budget.
    let ring = (0..5000)
        .map(|i| {
            format!(
                "{} {}",
                f64::from(i % 360) / 2.0 - 90.0,
                f64::from(i % 170) / 2.0
            )
        })
        .chain(std::iter::once("-90 0".to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let poly = format!("S_INTERSECTS(geometry, POLYGON(({ring})))");
    assert!(AttributeFilter::parse_text(&poly, &limits).is_ok());
    let long = format!("x = '{}'", "(".repeat(500_000));
    assert!(AttributeFilter::parse_text(&long, &limits).is_ok());
}

/// Regression found by `tests/fuzz_cql2.rs`: CQL2 JSON with an empty `IN` list was accepted,
/// and its text form (`n IN ()`) did not parse back.
#[test]
fn empty_in_lists_are_refused() {
    let e = AttributeFilter::parse_json(
        &json!({"op": "in", "args": [{"property": "n"}, []]}),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported CQL2 construct: IN needs at least one value in its list"
    );
}

/// Regression found by `tests/fuzz_cql2.rs` (20,000-case run): CQL2 JSON naming the empty
/// property was accepted, and its text form (` = -3`) did not parse back.
#[test]
fn empty_property_names_are_refused() {
    for v in [
        json!({"op": "=", "args": [{"property": ""}, -3]}),
        json!({"op": "and", "args": [{"property": ""}, true]}),
    ] {
        let e = AttributeFilter::parse_json(&v, &Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported CQL2 construct: a property name must not be empty"
        );
    }
}
