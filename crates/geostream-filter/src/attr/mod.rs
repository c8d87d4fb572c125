//! CQL2 attribute filters: parsed once by cql2, compiled into [`ir::Pred`], evaluated
//! without allocation.

mod compile;
pub(crate) mod eval;
pub(crate) mod fold;
pub(crate) mod ir;
pub(crate) mod like;

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use cql2::Expr;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{FilterError, Result};
use crate::{FeatureRef, Limits};
use ir::{Operand, Pred, SpatialOp, TimeBound, TimeOperand, Truth};

/// A compiled CQL2 filter over feature properties (and the feature geometry, for the
/// spatial predicates). See the crate documentation for what is supported and the
/// semantics of missing properties.
#[derive(Debug, Clone)]
pub struct AttributeFilter {
    pred: Pred,
    text: String,
    expr: Expr,
    nodes: usize,
}

impl PartialEq for AttributeFilter {
    /// Two filters are equal when they are the same expression.
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl AttributeFilter {
    /// Parses CQL2 text (`speed > 10 AND name LIKE 'bus%'`).
    pub fn parse_text(text: &str, limits: &Limits) -> Result<Self> {
        prescan_text(text, limits)?;
        let expr = parse_cql2_text(text)?;
        Self::compile(expr, limits)
    }

    /// Parses CQL2 JSON (`{"op": ">", "args": [{"property": "speed"}, 10]}`).
    pub fn parse_json(value: &Value, limits: &Limits) -> Result<Self> {
        let depth = json_depth(value);
        // Each CQL2 level is two JSON levels (operation object, args array); geometry
        // coordinates add four. Checked before deserializing, whose recursion this bounds.
        let max = 2 * limits.max_depth + 6;
        if depth > max {
            return Err(FilterError::TooDeep {
                depth: depth.saturating_sub(6) / 2,
                max: limits.max_depth,
            });
        }
        // Through the trait, not the inherent `Expr::deserialize` cql2 generates: only the trait
        // impl normalizes (flattens AND/OR, canonical operator names).
        let expr = <Expr as Deserialize>::deserialize(value)
            .map_err(|e| FilterError::Cql2Json(e.to_string()))?;
        Self::compile(expr, limits)
    }

    /// Parses either encoding: text starting with `{` is read as CQL2 JSON.
    pub fn parse(input: &str, limits: &Limits) -> Result<Self> {
        if input.trim_start().starts_with('{') {
            if input.len() > limits.max_text_bytes {
                return Err(FilterError::TooLong {
                    len: input.len(),
                    max: limits.max_text_bytes,
                });
            }
            let v: Value =
                serde_json::from_str(input).map_err(|e| FilterError::Cql2Json(e.to_string()))?;
            Self::parse_json(&v, limits)
        } else {
            Self::parse_text(input, limits)
        }
    }

    fn compile(expr: Expr, limits: &Limits) -> Result<Self> {
        let (nodes, depth) = measure(&expr);
        if nodes > limits.max_nodes {
            return Err(FilterError::TooManyNodes {
                nodes,
                max: limits.max_nodes,
            });
        }
        if depth > limits.max_depth {
            return Err(FilterError::TooDeep {
                depth,
                max: limits.max_depth,
            });
        }
        let pred = compile::Compiler { limits }.pred(&expr)?;
        let text = expr.to_text().map_err(|e| {
            FilterError::Unsupported(format!("the filter has no CQL2 text form: {e}"))
        })?;
        Ok(Self {
            pred,
            text,
            expr,
            nodes,
        })
    }

    /// Whether the feature passes: the filter must be TRUE (not FALSE, not unknown).
    #[inline]
    pub fn matches(&self, f: &FeatureRef<'_>) -> bool {
        self.evaluate(f) == Some(true)
    }

    /// The three-valued answer: `None` when it is unknown (a comparison with a missing
    /// or null property decided it), which [`AttributeFilter::matches`] treats as no match.
    pub fn evaluate(&self, f: &FeatureRef<'_>) -> Option<bool> {
        let cx = eval::Ctx {
            props: f.properties,
            geometry: f.geometry,
            bbox: f.bbox,
        };
        match eval::eval(&self.pred, &cx) {
            Truth::True => Some(true),
            Truth::False => Some(false),
            Truth::Unknown => None,
        }
    }

    /// The filter as CQL2 text, in cql2's canonical spelling.
    pub fn to_text(&self) -> String {
        self.text.clone()
    }

    /// The filter as CQL2 JSON.
    pub fn to_json(&self) -> Value {
        // Serializing an `Expr` cannot fail: every variant maps to plain JSON.
        serde_json::to_value(&self.expr).unwrap_or(Value::Null)
    }

    /// The parsed cql2 expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Number of expression nodes (operators, properties, literals), the measure
    /// [`Limits::max_nodes`] bounds.
    pub fn complexity(&self) -> usize {
        self.nodes
    }

    /// Names of the properties the filter reads, sorted, without duplicates. The feature
    /// geometry used by spatial predicates is not a property and is not listed.
    pub fn referenced_properties(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_props(&self.pred, &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// A box every matching feature's geometry must touch, when the filter requires one:
    /// the top-level predicate (or one of its top-level AND terms) is `S_INTERSECTS`,
    /// `S_WITHIN` or `S_EQUALS` between the feature geometry and a literal. Antimeridian
    /// boxes become full-longitude boxes.
    pub fn bbox(&self) -> Option<[f64; 4]> {
        let terms: &[Pred] = match &self.pred {
            Pred::And(ps) => ps,
            p => std::slice::from_ref(p),
        };
        terms.iter().find_map(|p| match p {
            Pred::Spatial {
                op: SpatialOp::Intersects | SpatialOp::Equals,
                literal,
                ..
            }
            | Pred::Spatial {
                op: SpatialOp::Within,
                literal,
                feature_first: true,
            }
            | Pred::Spatial {
                op: SpatialOp::Contains,
                literal,
                feature_first: false,
            } => literal
                .rect
                .map(|r| [r.min().x, r.min().y, r.max().x, r.max().y]),
            _ => None,
        })
    }

    pub(crate) fn pred(&self) -> &Pred {
        &self.pred
    }
}

fn collect_operand(o: &Operand, out: &mut Vec<String>) {
    match o {
        Operand::Prop(k) => out.push(k.to_string()),
        Operand::Arith(_, a, b) => {
            collect_operand(a, out);
            collect_operand(b, out);
        }
        Operand::Fold(_, a) => collect_operand(a, out),
        _ => {}
    }
}

fn collect_time(t: &TimeOperand, out: &mut Vec<String>) {
    match t {
        TimeOperand::Prop(k) => out.push(k.to_string()),
        TimeOperand::Interval(a, b) => {
            for b in [a, b] {
                if let TimeBound::Prop(k) = b {
                    out.push(k.to_string());
                }
            }
        }
        TimeOperand::Fixed { .. } => {}
    }
}

fn collect_props(p: &Pred, out: &mut Vec<String>) {
    match p {
        Pred::Const(_) | Pred::Spatial { .. } => {}
        Pred::And(ps) | Pred::Or(ps) => ps.iter().for_each(|p| collect_props(p, out)),
        Pred::Not(p) => collect_props(p, out),
        Pred::Cmp(_, a, b) => {
            collect_operand(a, out);
            collect_operand(b, out);
        }
        Pred::Between(a, b, c) => [a, b, c].into_iter().for_each(|o| collect_operand(o, out)),
        Pred::In(a, list) => {
            collect_operand(a, out);
            list.iter().for_each(|o| collect_operand(o, out));
        }
        Pred::Like(a, _) | Pred::IsNull(a) | Pred::Truthy(a) => collect_operand(a, out),
        Pred::Temporal(_, a, b) => {
            collect_time(a, out);
            collect_time(b, out);
        }
    }
}

/// Node count and depth of a cql2 expression.
fn measure(e: &Expr) -> (usize, usize) {
    let children: Vec<&Expr> = match e {
        Expr::Operation { args, .. } => args.iter().map(|a| a.as_ref()).collect(),
        Expr::Interval { interval } => interval.iter().map(|a| a.as_ref()).collect(),
        Expr::Timestamp { timestamp } => vec![timestamp.as_ref()],
        Expr::Date { date } => vec![date.as_ref()],
        Expr::Array(items) => items.iter().map(|a| a.as_ref()).collect(),
        // A BBOX is one literal, like a geometry (whose size is bounded by max_vertices).
        _ => Vec::new(),
    };
    let (mut nodes, mut depth) = (1, 0);
    for c in children {
        let (n, d) = measure(c);
        nodes += n;
        depth = depth.max(d);
    }
    (nodes, depth + 1)
}

/// Depth of a JSON value, without recursion (it runs before any limit is known to hold).
fn json_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Rule calls cql2's parser may make on any input, plus [`CALLS_PER_BYTE`] per byte.
const CALL_BASE: usize = 100_000;

/// Measured in the dev profile: about 2 calls per byte for a long string literal, 20 for a
/// 10,000-vertex polygon, 48 for a long `IN` list.
const CALLS_PER_BYTE: usize = 64;

/// Runs cql2's text parser with its work bounded.
///
/// cql2 parses with pest, a PEG parser that backtracks: on some short inputs (unclosed or
/// mismatched parentheses inside an expression, such as `x < ((((((((((((((((`) it explores
/// exponentially many alternatives, and 22 parentheses took 90 s. Pest's call limit makes it
/// give up after a number of rule calls proportional to the input. The limit is process-wide
/// in pest and read when a parse starts, so parses take turns to set it; legitimate filters
/// parse in microseconds to milliseconds, and they are parsed on subscribe, not per message.
fn parse_cql2_text(text: &str) -> Result<Expr> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    pest::set_call_limit(NonZeroUsize::new(
        CALL_BASE.saturating_add(CALLS_PER_BYTE.saturating_mul(text.len())),
    ));
    let r = cql2::parse_text(text);
    pest::set_call_limit(None);
    r.map_err(|e| {
        let m = e.to_string();
        if m.contains("call limit reached") {
            FilterError::Cql2Text(
                "the parser gave up on this text (unbalanced or pathological nesting)".into(),
            )
        } else {
            FilterError::Cql2Text(m)
        }
    })
}

/// Cheap checks on CQL2 text before it reaches the recursive-descent parser, whose stack
/// use grows with nesting and with runs of prefix or right-associative operators.
fn unbalanced() -> FilterError {
    FilterError::Cql2Text("parentheses are not balanced".into())
}

/// Whether a word opens a WKT geometry, whose parentheses hold only coordinates. (Not `BBOX`:
/// cql2 reads it as a function call, whose arguments are expressions.)
fn is_wkt_keyword(word: &[u8]) -> bool {
    const KEYWORDS: &[&[u8]] = &[
        b"POINT",
        b"LINESTRING",
        b"POLYGON",
        b"MULTIPOINT",
        b"MULTILINESTRING",
        b"MULTIPOLYGON",
        b"GEOMETRYCOLLECTION",
    ];
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

fn prescan_text(text: &str, limits: &Limits) -> Result<()> {
    if text.len() > limits.max_text_bytes {
        return Err(FilterError::TooLong {
            len: text.len(),
            max: limits.max_text_bytes,
        });
    }
    let b = text.as_bytes();
    let (mut depth, mut max_depth, mut tokens) = (0usize, 0usize, 0usize);
    // Numbers inside WKT coordinates are not nodes (their count is bounded by
    // `max_vertices`, checked after parsing); everywhere else a number is a node, and a run of
    // them joined by minus signs (`1 -1 -1 ...`) is a chain of subtractions as deep as it is
    // long. `wkt_from` is the depth of the parenthesis that opened the geometry we are in;
    // `after_wkt_word` says a geometry keyword was just read and its `(` may follow.
    let mut wkt_from: Option<usize> = None;
    let mut after_wkt_word = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_whitespace() || c == b'(' || c.is_ascii_alphabetic()) {
            after_wkt_word = false;
        }
        match c {
            b'\'' | b'"' => {
                // Skip a quoted string or identifier; a doubled quote is an escaped quote.
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                tokens += 1;
            }
            b'(' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                if after_wkt_word && wkt_from.is_none() {
                    wkt_from = Some(depth);
                }
                after_wkt_word = false;
            }
            b')' => {
                if depth == 0 {
                    return Err(unbalanced());
                }
                if wkt_from == Some(depth) {
                    wkt_from = None;
                }
                depth -= 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' => {
                tokens += 1;
                let start = i;
                while i + 1 < b.len()
                    && (b[i + 1].is_ascii_alphanumeric() || matches!(b[i + 1], b'_' | b':' | b'.'))
                {
                    i += 1;
                }
                let word = &b[start..=i];
                // `Z`, `M` and `ZM` may stand between a geometry keyword and its `(`.
                after_wkt_word = is_wkt_keyword(word)
                    || (after_wkt_word
                        && matches!(word, b"Z" | b"M" | b"ZM" | b"z" | b"m" | b"zm"));
            }
            b'=' | b'<' | b'>' | b'+' | b'*' | b'/' | b'%' | b'^' | b'!' => tokens += 1,
            // Inside WKT a minus before a digit is the sign of a coordinate.
            b'-' if wkt_from.is_some()
                && b.get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == b'.') => {}
            b'-' => tokens += 1,
            b'0'..=b'9' | b'.' => {
                if wkt_from.is_none() {
                    tokens += 1;
                }
                while i + 1 < b.len()
                    && (b[i + 1].is_ascii_digit()
                        || matches!(b[i + 1], b'.' | b'e' | b'E')
                        || (matches!(b[i + 1], b'+' | b'-') && matches!(b[i], b'e' | b'E')))
                {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    // Unbalanced parentheses never parse, and they are what makes the parser backtrack the
    // most (see `parse_cql2_text`): refused here, in one pass.
    if depth != 0 {
        return Err(unbalanced());
    }
    // WKT nests up to three levels inside its own parentheses.
    if max_depth > limits.max_depth + 3 {
        return Err(FilterError::TooDeep {
            depth: max_depth,
            max: limits.max_depth,
        });
    }
    // Names, keywords and operators are each at most a node or two; this bound only exists
    // to keep absurd inputs away from the parser, the exact count is checked after parsing.
    let max_tokens = 3 * limits.max_nodes + 16;
    if tokens > max_tokens {
        return Err(FilterError::TooManyNodes {
            nodes: tokens / 3,
            max: limits.max_nodes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
