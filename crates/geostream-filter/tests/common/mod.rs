//! Random filters over a small property schema, and random property maps for it, shared by
//! the property tests.
//!
//! Schema: `n`, `m` numbers; `s`, `u` strings; `b` boolean; `t` timestamp strings. Each
//! property is present with its type, JSON null, or missing. Filters stay within the cases
//! where this crate and cql2 intend the same answer (see the crate docs): BETWEEN and IN only
//! on operands of one type, no division by a value that may be zero, DATE() only in
//! temporal relations, no dotted names.

#![allow(dead_code)] // each test file uses part of this module

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use serde_json::{Map, Value, json};

pub(crate) const NUMS: &[f64] = &[-3.0, -1.0, 0.0, 1.0, 2.0, 2.5, 3.0, 7.0, 10.0];
pub(crate) const STRS: &[&str] = &[
    "", "a", "ab", "b", "bus", "bus 12", "Bus 1", "é", "Éa", "zz", "it's", "100%", "a_b",
];
pub(crate) const TIMES: &[&str] = &[
    "2020-01-01",
    "2020-01-01T00:00:00Z",
    "2020-01-01T12:30:00.250Z",
    "2020-01-02T00:00:00+01:00",
    "2020-06-15T08:00:00Z",
    "2021-02-28T23:59:59.999Z",
    "2020-06-15 08:00:00Z",
];
const PATTERNS: &[&str] = &[
    "b%", "%s", "_", "%", "bus%", "B%", "%1%", "a_", "%\\%", "a\\_b", "__", "%a%b%", "É%",
];

fn num() -> impl Strategy<Value = String> {
    proptest::sample::select(NUMS).prop_map(fmt_num)
}

pub(crate) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn strlit() -> impl Strategy<Value = String> {
    proptest::sample::select(STRS).prop_map(quote)
}

fn time_lit() -> impl Strategy<Value = String> {
    proptest::sample::select(TIMES).prop_map(|t| {
        if t.len() == 10 {
            format!("TIMESTAMP('{t}T00:00:00Z')")
        } else {
            format!("TIMESTAMP('{t}')")
        }
    })
}

fn cmp() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["=", "<>", "<", "<=", ">", ">="][..])
}

fn num_prop() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["n", "m"][..])
}

fn str_prop() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["s", "u"][..])
}

/// Number-valued expressions: properties, literals, arithmetic without zero divisors.
fn num_expr() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => num_prop().prop_map(str::to_string),
        1 => (num_prop(), proptest::sample::select(&["+", "-", "*"][..]), num_prop())
            .prop_map(|(a, o, b)| format!("({a} {o} {b})")),
        1 => (num_prop(), num()).prop_map(|(a, k)| format!("({a} + {k})")),
        1 => (num_prop(), proptest::sample::select(&["/ 2", "div 2", "* -1", "/ 4"][..]))
            .prop_map(|(a, o)| format!("({a} {o})")),
    ]
}

fn in_list<S: Strategy<Value = String>>(item: S) -> impl Strategy<Value = String> {
    (proptest::collection::vec(item, 1..4), any::<bool>()).prop_map(|(mut items, null)| {
        if null {
            items.push("NULL".into());
        }
        format!("({})", items.join(", "))
    })
}

fn interval() -> impl Strategy<Value = String> {
    let bound = prop_oneof![
        3 => proptest::sample::select(TIMES).prop_map(|t| format!("'{t}'")),
        1 => Just("'..'".to_string()),
        1 => Just("t".to_string()),
    ];
    (bound.clone(), bound).prop_map(|(a, b)| format!("INTERVAL({a}, {b})"))
}

fn time_operand() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("t".to_string()),
        2 => time_lit(),
        1 => proptest::sample::select(TIMES)
            .prop_filter("dates only", |t| t.len() == 10)
            .prop_map(|t| format!("DATE('{t}')")),
    ]
}

const TEMPORAL: &[&str] = &[
    "T_BEFORE",
    "T_AFTER",
    "T_MEETS",
    "T_METBY",
    "T_OVERLAPS",
    "T_OVERLAPPEDBY",
    "T_STARTS",
    "T_STARTEDBY",
    "T_DURING",
    "T_CONTAINS",
    "T_FINISHES",
    "T_FINISHEDBY",
    "T_EQUALS",
    "T_DISJOINT",
    "T_INTERSECTS",
];

/// Conditions. `folds` allows CASEI/ACCENTI (which SQLite cannot translate).
pub(crate) fn leaf(folds: bool) -> BoxedStrategy<String> {
    let mut options: Vec<(u32, BoxedStrategy<String>)> = vec![
        (
            4,
            (num_expr(), cmp(), num())
                .prop_map(|(a, o, b)| format!("{a} {o} {b}"))
                .boxed(),
        ),
        (
            1,
            (num_prop(), cmp(), num_prop())
                .prop_map(|(a, o, b)| format!("{a} {o} {b}"))
                .boxed(),
        ),
        (
            3,
            (str_prop(), cmp(), strlit())
                .prop_map(|(a, o, b)| format!("{a} {o} {b}"))
                .boxed(),
        ),
        (
            1,
            (str_prop(), cmp(), str_prop())
                .prop_map(|(a, o, b)| format!("{a} {o} {b}"))
                .boxed(),
        ),
        (
            1,
            (str_prop(), cmp(), num())
                .prop_map(|(a, o, b)| format!("{a} {o} {b}"))
                .boxed(),
        ),
        (
            1,
            (num_prop(), cmp(), strlit())
                .prop_map(|(a, o, b)| format!("{a} {o} {b}"))
                .boxed(),
        ),
        (
            1,
            (cmp(), any::<bool>())
                .prop_map(|(o, v)| format!("b {o} {v}"))
                .boxed(),
        ),
        (1, Just("b".to_string()).boxed()),
        (
            1,
            (cmp(), num_prop())
                .prop_map(|(o, p)| format!("{p} {o} NULL"))
                .boxed(),
        ),
        (
            3,
            (
                str_prop(),
                any::<bool>(),
                proptest::sample::select(PATTERNS),
            )
                .prop_map(|(p, not, pat)| {
                    format!("{p} {}LIKE {}", if not { "NOT " } else { "" }, quote(pat))
                })
                .boxed(),
        ),
        (
            2,
            (num_expr(), any::<bool>(), num(), num())
                .prop_map(|(e, not, a, b)| {
                    format!("{e} {}BETWEEN {a} AND {b}", if not { "NOT " } else { "" })
                })
                .boxed(),
        ),
        (
            1,
            (str_prop(), strlit(), strlit())
                .prop_map(|(p, a, b)| format!("{p} BETWEEN {a} AND {b}"))
                .boxed(),
        ),
        (
            2,
            (num_prop(), any::<bool>(), in_list(num()))
                .prop_map(|(p, not, l)| format!("{p} {}IN {l}", if not { "NOT " } else { "" }))
                .boxed(),
        ),
        (
            1,
            (str_prop(), in_list(strlit()))
                .prop_map(|(p, l)| format!("{p} IN {l}"))
                .boxed(),
        ),
        (
            2,
            (
                proptest::sample::select(&["n", "m", "s", "u", "b", "t", "nope"][..]),
                any::<bool>(),
            )
                .prop_map(|(p, not)| format!("{p} IS {}NULL", if not { "NOT " } else { "" }))
                .boxed(),
        ),
        (
            2,
            (cmp(), time_lit())
                .prop_map(|(o, l)| format!("t {o} {l}"))
                .boxed(),
        ),
        (
            3,
            (
                proptest::sample::select(TEMPORAL),
                time_operand(),
                prop_oneof![time_operand(), interval()],
            )
                .prop_map(|(op, a, b)| format!("{op}({a}, {b})"))
                .boxed(),
        ),
    ];
    if folds {
        options.push((
            2,
            (
                str_prop(),
                proptest::sample::select(&["CASEI", "ACCENTI"][..]),
                cmp(),
                strlit(),
            )
                .prop_map(|(p, f, o, l)| format!("{f}({p}) {o} {f}({l})"))
                .boxed(),
        ));
        options.push((
            1,
            (str_prop(), proptest::sample::select(PATTERNS))
                .prop_map(|(p, pat)| {
                    format!("CASEI(ACCENTI({p})) LIKE CASEI(ACCENTI({}))", quote(pat))
                })
                .boxed(),
        ));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

pub(crate) fn filter(folds: bool) -> BoxedStrategy<String> {
    leaf(folds)
        .prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) OR ({b})")),
                inner.prop_map(|a| format!("NOT ({a})")),
            ]
        })
        .boxed()
}

fn slot(v: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![6 => v.prop_map(Some), 1 => Just(Some(Value::Null)), 1 => Just(None)].boxed()
}

pub(crate) fn props() -> impl Strategy<Value = Map<String, Value>> {
    let n = || {
        slot(
            proptest::sample::select(NUMS)
                .prop_map(|v| json!(v))
                .boxed(),
        )
    };
    let s = || {
        slot(
            proptest::sample::select(STRS)
                .prop_map(|v| json!(v))
                .boxed(),
        )
    };
    let b = slot(any::<bool>().prop_map(|v| json!(v)).boxed());
    let t = slot(
        proptest::sample::select(TIMES)
            .prop_map(|v| json!(v))
            .boxed(),
    );
    (n(), n(), s(), s(), b, t).prop_map(|(n, m, s, u, b, t)| {
        let mut map = Map::new();
        for (k, v) in [("n", n), ("m", m), ("s", s), ("u", u), ("b", b), ("t", t)] {
            if let Some(v) = v {
                map.insert(k.to_string(), v);
            }
        }
        map
    })
}
