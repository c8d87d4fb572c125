//! Evaluation of the compiled tree against one feature. Nothing here allocates: values are
//! borrowed from the feature or the filter, folded strings are streamed.

use std::cmp::Ordering;

use geo::{Contains, Geometry, Intersects, Relate};
use serde_json::{Map, Value};

use super::compile::boxes_may_touch;
use super::fold::{Fold, cmp_folded};
use super::ir::*;
use crate::time::parse_stamp;

/// What evaluation reads from a feature.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) props: &'a Map<String, Value>,
    pub(crate) geometry: Option<&'a Geometry<f64>>,
    pub(crate) bbox: Option<[f64; 4]>,
}

/// A runtime value. `Null` stands for JSON null, a missing property, and any operation
/// without an answer (type mismatch, division by zero): SQL's NULL.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Null,
    Num(f64),
    Str(&'a str, Fold),
    Bool(bool),
    Time(i64),
    /// Arrays and objects: present (not null) but comparable with nothing.
    Other,
}

fn from_json(v: Option<&Value>) -> Val<'_> {
    match v {
        None | Some(Value::Null) => Val::Null,
        Some(Value::Bool(b)) => Val::Bool(*b),
        Some(Value::Number(n)) => n.as_f64().map_or(Val::Null, Val::Num),
        Some(Value::String(s)) => Val::Str(s, Fold::NONE),
        Some(_) => Val::Other,
    }
}

#[inline]
fn operand<'a>(o: &'a Operand, cx: &Ctx<'a>) -> Val<'a> {
    match o {
        Operand::Prop(k) => from_json(cx.props.get(&**k)),
        Operand::Num(n) => Val::Num(*n),
        Operand::Str(s) => Val::Str(s, Fold::NONE),
        Operand::Bool(b) => Val::Bool(*b),
        Operand::Null => Val::Null,
        Operand::Time(t) => Val::Time(*t),
        Operand::Arith(op, a, b) => match (operand(a, cx), operand(b, cx)) {
            (Val::Num(x), Val::Num(y)) => arith(*op, x, y).map_or(Val::Null, Val::Num),
            _ => Val::Null,
        },
        Operand::Fold(f, inner) => match operand(inner, cx) {
            Val::Str(s, g) => Val::Str(s, g.with(*f)),
            _ => Val::Null,
        },
    }
}

/// Arithmetic on doubles. Division (all three kinds) by zero has no answer, as in SQL,
/// rather than an infinity that PostgreSQL could not even represent.
pub(crate) fn arith(op: ArithOp, x: f64, y: f64) -> Option<f64> {
    Some(match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div if y == 0.0 => return None,
        ArithOp::Div => x / y,
        ArithOp::Mod if y == 0.0 => return None,
        ArithOp::Mod => x % y,
        ArithOp::Pow => x.powf(y),
        ArithOp::IntDiv if y == 0.0 => return None,
        ArithOp::IntDiv => (x / y).trunc(),
    })
}

/// Orders two values of the same kind; `None` when either is NULL or the kinds differ.
/// A string beside a timestamp is read as a timestamp (and is NULL if it does not parse).
fn order(a: Val<'_>, b: Val<'_>) -> Option<Ordering> {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(&y),
        (Val::Str(x, fx), Val::Str(y, fy)) => Some(cmp_folded(x, fx, y, fy)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(&y)),
        (Val::Time(x), Val::Time(y)) => Some(x.cmp(&y)),
        (Val::Time(x), Val::Str(s, _)) => parse_stamp(s).ok().map(|t| x.cmp(&t.ms)),
        (Val::Str(s, _), Val::Time(y)) => parse_stamp(s).ok().map(|t| t.ms.cmp(&y)),
        _ => None,
    }
}

#[inline]
fn compare(op: CmpOp, a: Val<'_>, b: Val<'_>) -> Truth {
    match order(a, b) {
        Some(o) => Truth::from_bool(op.test(o)),
        None => {
            // NaN (from arithmetic) orders with nothing; it is unequal to everything, as
            // cql2 and IEEE say, rather than unknown.
            if let (Val::Num(x), Val::Num(y)) = (a, b) {
                Truth::from_bool(op == CmpOp::Ne && (x.is_nan() || y.is_nan()))
            } else {
                Truth::Unknown
            }
        }
    }
}

pub(crate) fn eval(p: &Pred, cx: &Ctx<'_>) -> Truth {
    match p {
        Pred::Const(t) => *t,
        Pred::And(ps) => {
            let mut acc = Truth::True;
            for p in ps.iter() {
                match eval(p, cx) {
                    Truth::False => return Truth::False,
                    t => acc = acc.and(t),
                }
            }
            acc
        }
        Pred::Or(ps) => {
            let mut acc = Truth::False;
            for p in ps.iter() {
                match eval(p, cx) {
                    Truth::True => return Truth::True,
                    t => acc = acc.or(t),
                }
            }
            acc
        }
        Pred::Not(p) => eval(p, cx).not(),
        Pred::Cmp(op, a, b) => compare(*op, operand(a, cx), operand(b, cx)),
        Pred::Between(v, lo, hi) => {
            let v = operand(v, cx);
            compare(CmpOp::Ge, v, operand(lo, cx)).and(compare(CmpOp::Le, v, operand(hi, cx)))
        }
        Pred::In(v, list) => {
            let v = operand(v, cx);
            let mut acc = Truth::False;
            for item in list.iter() {
                match compare(CmpOp::Eq, v, operand(item, cx)) {
                    Truth::True => return Truth::True,
                    t => acc = acc.or(t),
                }
            }
            acc
        }
        Pred::Like(v, pat) => match operand(v, cx) {
            Val::Str(s, f) => Truth::from_bool(pat.matches(s, f)),
            _ => Truth::Unknown,
        },
        Pred::IsNull(v) => Truth::from_bool(matches!(operand(v, cx), Val::Null)),
        Pred::Truthy(v) => match operand(v, cx) {
            Val::Bool(b) => Truth::from_bool(b),
            _ => Truth::Unknown,
        },
        Pred::Temporal(op, a, b) => match (span(a, cx), span(b, cx)) {
            (Some(x), Some(y)) => Truth::from_bool(temporal(*op, x, y)),
            _ => Truth::Unknown,
        },
        Pred::Spatial {
            op,
            literal,
            feature_first,
        } => match cx.geometry {
            Some(g) => Truth::from_bool(eval_spatial(*op, literal, g, cx.bbox, *feature_first)),
            None => Truth::Unknown,
        },
    }
}

fn stamp_of(v: Option<&Value>) -> Option<crate::time::Stamp> {
    parse_stamp(v?.as_str()?).ok()
}

/// The span of a temporal operand; `None` when a property is missing, null or not a time.
fn span(t: &TimeOperand, cx: &Ctx<'_>) -> Option<(i64, i64)> {
    match t {
        TimeOperand::Fixed { start, end } => Some((*start, *end)),
        TimeOperand::Prop(k) => stamp_of(cx.props.get(&**k)).map(|s| (s.ms, s.end())),
        TimeOperand::Interval(a, b) => Some((bound(a, cx, i64::MIN)?, bound(b, cx, i64::MAX)?)),
    }
}

fn bound(b: &TimeBound, cx: &Ctx<'_>, open: i64) -> Option<i64> {
    match b {
        TimeBound::Open => Some(open),
        TimeBound::At(t) => Some(*t),
        TimeBound::Prop(k) => match cx.props.get(&**k) {
            Some(Value::String(s)) if s == ".." => Some(open),
            v => stamp_of(v).map(|s| s.ms),
        },
    }
}

/// The interval relations of OGC 21-065 (CQL2) section 7.11, on closed spans.
pub(crate) fn temporal(op: TemporalOp, l: (i64, i64), r: (i64, i64)) -> bool {
    let (rel, swapped) = op.base();
    let ((s1, e1), (s2, e2)) = if swapped { (r, l) } else { (l, r) };
    match rel {
        Rel::Before => e1 < s2,
        Rel::Meets => e1 == s2,
        Rel::Overlaps => s1 < s2 && s2 < e1 && e1 < e2,
        Rel::Starts => s1 == s2 && e1 < e2,
        Rel::During => s1 > s2 && e1 < e2,
        Rel::Finishes => s1 > s2 && e1 == e2,
        Rel::Equals => s1 == s2 && e1 == e2,
        Rel::Disjoint => !(s1 <= e2 && e1 >= s2),
        Rel::Intersects => s1 <= e2 && e1 >= s2,
    }
}

/// Evaluates `feature OP literal` (or `literal OP feature` when `!feature_first`).
pub(crate) fn eval_spatial(
    op: SpatialOp,
    lit: &SpatialLiteral,
    g: &Geometry<f64>,
    feature_box: Option<[f64; 4]>,
    feature_first: bool,
) -> bool {
    // A caller-supplied box that misses the literal's box settles every relation that
    // needs the two to touch, without looking at the geometry.
    let apart = feature_box.is_some_and(|b| !boxes_may_touch(&lit.rect, b));
    match op {
        SpatialOp::Intersects => !apart && lit.geom.intersects(g),
        SpatialOp::Disjoint => apart || !lit.geom.intersects(g),
        SpatialOp::Contains | SpatialOp::Within => {
            if apart {
                return false;
            }
            // "feature CONTAINS literal" and "literal WITHIN feature" are the same question.
            let feature_contains = (op == SpatialOp::Contains) == feature_first;
            if feature_contains {
                g.contains(&lit.geom)
            } else {
                lit.geom.contains(g)
            }
        }
        SpatialOp::Equals | SpatialOp::Touches | SpatialOp::Overlaps | SpatialOp::Crosses => {
            if apart {
                return false;
            }
            // These four are symmetric, so operand order does not matter.
            let m = lit.geom.relate(g);
            match op {
                SpatialOp::Equals => m.is_equal_topo(),
                SpatialOp::Touches => m.is_touches(),
                SpatialOp::Overlaps => m.is_overlaps(),
                _ => m.is_crosses(),
            }
        }
    }
}
