//! Turns a parsed cql2 `Expr` into the evaluator's tree, refusing at this point anything the
//! evaluator could not answer, so evaluation itself never fails.

use cql2::Expr;
use geo::{BoundingRect, Coord, Geometry, Intersects, MultiPolygon, Rect};

use super::eval::eval_spatial;
use super::fold::{Fold, fold_string};
use super::ir::*;
use super::like::LikePattern;
use crate::Limits;
use crate::error::{FilterError, Result};
use crate::spatial::{check_bbox, geojson_to_geo, split_bbox, to_rect};
use crate::time::{DAY_MS, parse_stamp};

/// The property name spatial predicates use for the feature's own geometry.
pub(crate) const GEOMETRY_PROPERTY: &str = "geometry";

pub(crate) struct Compiler<'l> {
    pub(crate) limits: &'l Limits,
}

fn unsupported(msg: impl Into<String>) -> FilterError {
    FilterError::Unsupported(msg.into())
}

/// Short description of an expression for error messages.
fn describe(e: &Expr) -> String {
    match e {
        Expr::Operation { op, .. } => format!("operation {op}"),
        Expr::Interval { .. } => "an INTERVAL".into(),
        Expr::Timestamp { .. } => "a TIMESTAMP".into(),
        Expr::Date { .. } => "a DATE".into(),
        Expr::Property { property } => format!("property {property}"),
        Expr::BBox { .. } => "a BBOX".into(),
        Expr::Float(v) => format!("number {v}"),
        Expr::Literal(s) => format!("string '{s}'"),
        Expr::Bool(b) => format!("boolean {b}"),
        Expr::Array(_) => "a list".into(),
        Expr::Geometry(_) => "a geometry".into(),
        Expr::Null => "NULL".into(),
    }
}

/// A property name as written; an empty one (possible in CQL2 JSON) names nothing and has no
/// CQL2 text form.
fn property_name(p: &str) -> Result<&str> {
    if p.is_empty() {
        return Err(unsupported("a property name must not be empty"));
    }
    Ok(p)
}

fn arity(op: &str, args: &[Box<Expr>], n: usize) -> Result<()> {
    if args.len() == n {
        Ok(())
    } else {
        Err(unsupported(format!(
            "{op} takes {n} argument(s); got {}",
            args.len()
        )))
    }
}

const ARRAY_OPS: [&str; 4] = ["a_equals", "a_contains", "a_containedBy", "a_overlaps"];

fn arith_op(op: &str) -> Option<ArithOp> {
    Some(match op {
        "+" => ArithOp::Add,
        "-" => ArithOp::Sub,
        "*" => ArithOp::Mul,
        "/" => ArithOp::Div,
        "%" => ArithOp::Mod,
        "^" => ArithOp::Pow,
        "div" => ArithOp::IntDiv,
        _ => return None,
    })
}

fn cmp_op(op: &str) -> Option<CmpOp> {
    Some(match op {
        "=" => CmpOp::Eq,
        "<>" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        _ => return None,
    })
}

impl Compiler<'_> {
    /// Compiles an expression in a position where a condition is expected.
    pub(crate) fn pred(&self, e: &Expr) -> Result<Pred> {
        let Expr::Operation { op, args } = e else {
            return match e {
                Expr::Bool(b) => Ok(Pred::Const(Truth::from_bool(*b))),
                Expr::Null => Ok(Pred::Const(Truth::Unknown)),
                Expr::Property { property } => {
                    Ok(Pred::Truthy(Operand::Prop(property_name(property)?.into())))
                }
                other => Err(unsupported(format!(
                    "{} cannot be used as a condition",
                    describe(other)
                ))),
            };
        };
        let op = op.as_str();
        if let Some(c) = cmp_op(op) {
            arity(op, args, 2)?;
            return Ok(Pred::Cmp(
                c,
                self.operand(&args[0])?,
                self.operand(&args[1])?,
            ));
        }
        if let Some(t) = TemporalOp::from_name(op) {
            arity(op, args, 2)?;
            return Ok(Pred::Temporal(
                t,
                self.time(&args[0])?,
                self.time(&args[1])?,
            ));
        }
        if let Some(s) = SpatialOp::from_name(op) {
            arity(op, args, 2)?;
            return self.spatial(op, s, &args[0], &args[1]);
        }
        match op {
            "and" | "or" => {
                if args.is_empty() {
                    return Err(unsupported(format!("{op} needs at least one argument")));
                }
                let parts = args
                    .iter()
                    .map(|a| self.pred(a))
                    .collect::<Result<Vec<_>>>()?;
                Ok(if op == "and" {
                    Pred::And(parts.into())
                } else {
                    Pred::Or(parts.into())
                })
            }
            "not" => {
                arity(op, args, 1)?;
                Ok(Pred::Not(Box::new(self.pred(&args[0])?)))
            }
            "isNull" => {
                arity("IS NULL", args, 1)?;
                Ok(Pred::IsNull(self.operand(&args[0])?))
            }
            "between" => {
                arity("BETWEEN", args, 3)?;
                Ok(Pred::Between(
                    self.operand(&args[0])?,
                    self.operand(&args[1])?,
                    self.operand(&args[2])?,
                ))
            }
            "in" => {
                arity("IN", args, 2)?;
                let Expr::Array(items) = args[1].as_ref() else {
                    return Err(unsupported(format!(
                        "IN needs a list on its right; got {}",
                        describe(&args[1])
                    )));
                };
                // CQL2 text has no empty list (`x IN ()` does not parse), so an empty list in
                // CQL2 JSON would give a filter without a text form.
                if items.is_empty() {
                    return Err(unsupported("IN needs at least one value in its list"));
                }
                let list = items
                    .iter()
                    .map(|i| self.operand(i))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Pred::In(self.operand(&args[0])?, list.into()))
            }
            "like" => {
                arity("LIKE", args, 2)?;
                let value = self.operand(&args[0])?;
                let pattern = match self.operand(&args[1])? {
                    Operand::Str(s) => LikePattern::compile(&s)?,
                    _ => {
                        return Err(unsupported(format!(
                            "the LIKE pattern must be a string literal; got {}",
                            describe(&args[1])
                        )));
                    }
                };
                Ok(Pred::Like(value, pattern))
            }
            _ if ARRAY_OPS.contains(&op) => Err(FilterError::UnsupportedOperator(op.to_string())),
            _ if arith_op(op).is_some() || op == "casei" || op == "accenti" => Err(unsupported(
                format!("{op} produces a value, not a condition; compare it with something"),
            )),
            _ => Err(FilterError::UnsupportedOperator(op.to_string())),
        }
    }

    /// Compiles an expression in a position where a value is expected.
    pub(crate) fn operand(&self, e: &Expr) -> Result<Operand> {
        Ok(match e {
            Expr::Property { property } => Operand::Prop(property_name(property)?.into()),
            Expr::Float(v) => Operand::Num(*v),
            Expr::Literal(s) => Operand::Str(s.as_str().into()),
            Expr::Bool(b) => Operand::Bool(*b),
            Expr::Null => Operand::Null,
            Expr::Timestamp { timestamp } => {
                Operand::Time(literal_stamp(timestamp, "TIMESTAMP")?.ms)
            }
            Expr::Date { date } => {
                let s = literal_stamp(date, "DATE")?;
                if !s.date_only {
                    return Err(unsupported("DATE() takes a date written YYYY-MM-DD"));
                }
                Operand::Time(s.ms)
            }
            Expr::Operation { op, args } => {
                if let Some(a) = arith_op(op) {
                    let chained = matches!(
                        a,
                        ArithOp::Add | ArithOp::Sub | ArithOp::Mul | ArithOp::Div | ArithOp::Mod
                    );
                    if args.len() < 2 || (!chained && args.len() != 2) {
                        return Err(unsupported(format!(
                            "{op} takes {} arguments; got {}",
                            if chained { "2 or more" } else { "2" },
                            args.len()
                        )));
                    }
                    // Chains read left to right, as cql2 renders and evaluates them.
                    let mut acc = self.operand(&args[0])?;
                    for arg in &args[1..] {
                        acc = Operand::Arith(a, Box::new(acc), Box::new(self.operand(arg)?));
                    }
                    return Ok(acc);
                }
                let fold = match op.as_str() {
                    "casei" => Fold::CASEI,
                    "accenti" => Fold::ACCENTI,
                    other
                        if cmp_op(other).is_some()
                            || ["and", "or", "not", "like", "in", "between", "isNull"]
                                .contains(&other) =>
                    {
                        return Err(unsupported(format!(
                            "the condition {other} cannot be used as a value"
                        )));
                    }
                    other => return Err(FilterError::UnsupportedOperator(other.to_string())),
                };
                arity(op, args, 1)?;
                match self.operand(&args[0])? {
                    Operand::Str(s) => Operand::Str(fold_string(&s, fold).into()),
                    Operand::Fold(inner, x) => Operand::Fold(inner.with(fold), x),
                    p @ Operand::Prop(_) => Operand::Fold(fold, Box::new(p)),
                    Operand::Null => Operand::Null,
                    _ => {
                        return Err(unsupported(format!(
                            "{} takes a string or a property; got {}",
                            op.to_uppercase(),
                            describe(&args[0])
                        )));
                    }
                }
            }
            other => {
                return Err(unsupported(format!(
                    "{} cannot be used as a value",
                    describe(other)
                )));
            }
        })
    }

    fn time(&self, e: &Expr) -> Result<TimeOperand> {
        Ok(match e {
            Expr::Property { property } => TimeOperand::Prop(property.as_str().into()),
            Expr::Timestamp { timestamp } => {
                let ms = literal_stamp(timestamp, "TIMESTAMP")?.ms;
                TimeOperand::Fixed { start: ms, end: ms }
            }
            Expr::Date { date } => {
                let s = literal_stamp(date, "DATE")?;
                TimeOperand::Fixed {
                    start: s.ms,
                    end: s.ms + DAY_MS - 1,
                }
            }
            // A bare string beside a temporal operator is a time, as cql2 reads it: a date
            // names its whole day, anything with a time of day an instant.
            Expr::Literal(_) => {
                let s = literal_stamp(e, "a time literal")?;
                TimeOperand::Fixed {
                    start: s.ms,
                    end: s.end(),
                }
            }
            Expr::Interval { interval } => {
                let [a, b] = interval.as_slice() else {
                    return Err(unsupported(format!(
                        "INTERVAL takes 2 bounds; got {}",
                        interval.len()
                    )));
                };
                let (a, b) = (self.bound(a)?, self.bound(b)?);
                if let (TimeBound::At(x), TimeBound::At(y)) = (&a, &b)
                    && x > y
                {
                    return Err(FilterError::InvalidDatetime {
                        input: e.to_text().unwrap_or_default(),
                        reason: "the interval starts after it ends".into(),
                    });
                }
                match (a, b) {
                    (TimeBound::At(start), TimeBound::At(end)) => TimeOperand::Fixed { start, end },
                    (TimeBound::Open, TimeBound::Open) => TimeOperand::Fixed {
                        start: i64::MIN,
                        end: i64::MAX,
                    },
                    (a, b) => TimeOperand::Interval(a, b),
                }
            }
            other => {
                return Err(unsupported(format!(
                    "temporal operators take times, intervals or properties; got {}",
                    describe(other)
                )));
            }
        })
    }

    /// An interval bound is an instant; a date as a bound means its midnight, as in cql2.
    fn bound(&self, e: &Expr) -> Result<TimeBound> {
        match e {
            Expr::Literal(s) if s == ".." => Ok(TimeBound::Open),
            Expr::Property { property } => Ok(TimeBound::Prop(property.as_str().into())),
            Expr::Literal(_) => Ok(TimeBound::At(literal_stamp(e, "INTERVAL")?.ms)),
            Expr::Timestamp { timestamp } => {
                Ok(TimeBound::At(literal_stamp(timestamp, "TIMESTAMP")?.ms))
            }
            Expr::Date { date } => Ok(TimeBound::At(literal_stamp(date, "DATE")?.ms)),
            other => Err(unsupported(format!(
                "an INTERVAL bound must be a time, '..' or a property; got {}",
                describe(other)
            ))),
        }
    }

    fn spatial(&self, name: &str, op: SpatialOp, a: &Expr, b: &Expr) -> Result<Pred> {
        let is_feature = |e: &Expr| -> Result<bool> {
            match e {
                Expr::Property { property } if property == GEOMETRY_PROPERTY => Ok(true),
                Expr::Property { property } => Err(unsupported(format!(
                    "{name} compares the feature geometry (property '{GEOMETRY_PROPERTY}') with a literal; property '{property}' is not a geometry"
                ))),
                _ => Ok(false),
            }
        };
        match (is_feature(a)?, is_feature(b)?) {
            (true, true) => Err(unsupported(format!(
                "{name} needs a geometry literal; both arguments are the feature geometry"
            ))),
            (true, false) => Ok(Pred::Spatial {
                op,
                literal: Box::new(self.geometry_literal(b)?),
                feature_first: true,
            }),
            (false, true) => Ok(Pred::Spatial {
                op,
                literal: Box::new(self.geometry_literal(a)?),
                feature_first: false,
            }),
            (false, false) => {
                // Two literals: the answer is fixed, so work it out now.
                let left = self.geometry_literal(a)?;
                let right = self.geometry_literal(b)?;
                let t = eval_spatial(op, &right, &left.geom, None, true);
                Ok(Pred::Const(Truth::from_bool(t)))
            }
        }
    }

    fn geometry_literal(&self, e: &Expr) -> Result<SpatialLiteral> {
        let geom = match e {
            Expr::Geometry(g) => {
                // Both of cql2's spellings (WKT text, GeoJSON) serialize to GeoJSON, so one
                // validating reader serves both.
                let v = serde_json::to_value(g).map_err(|err| {
                    FilterError::InvalidGeometry(format!("cannot read geometry literal: {err}"))
                })?;
                geojson_to_geo(&v, self.limits, "geometry literal")?
            }
            Expr::BBox { bbox } => {
                let nums = bbox
                    .iter()
                    .map(|x| match x.as_ref() {
                        Expr::Float(v) => Ok(*v),
                        other => Err(unsupported(format!(
                            "BBOX takes numbers; got {}",
                            describe(other)
                        ))),
                    })
                    .collect::<Result<Vec<f64>>>()?;
                let b = match *nums.as_slice() {
                    [a, b, c, d] => [a, b, c, d],
                    [a, b, _, d, e, _] => [a, b, d, e],
                    _ => return Err(FilterError::BboxLength(nums.len())),
                };
                check_bbox(b, "BBOX")?;
                let parts = split_bbox(b);
                if parts.len() == 1 {
                    Geometry::Rect(to_rect(b))
                } else {
                    Geometry::MultiPolygon(MultiPolygon(
                        parts.into_iter().map(|p| to_rect(p).to_polygon()).collect(),
                    ))
                }
            }
            other => {
                return Err(unsupported(format!(
                    "spatial operators take a geometry literal or BBOX; got {}",
                    describe(other)
                )));
            }
        };
        let rect = geom.bounding_rect();
        Ok(SpatialLiteral { geom, rect })
    }
}

/// Reads a literal timestamp or date (`'...'` inside TIMESTAMP(), DATE(), INTERVAL()).
fn literal_stamp(e: &Expr, what: &str) -> Result<crate::time::Stamp> {
    let Expr::Literal(s) = e else {
        return Err(unsupported(format!(
            "{what} takes a quoted time; got {}",
            describe(e)
        )));
    };
    parse_stamp(s).map_err(|reason| FilterError::InvalidDatetime {
        input: s.clone(),
        reason: reason.to_string(),
    })
}

/// Whether the literal's box and the feature's box can touch; `false` proves disjointness.
pub(crate) fn boxes_may_touch(lit: &Option<Rect<f64>>, feature: [f64; 4]) -> bool {
    match lit {
        Some(r) => {
            // Feature boxes crossing the antimeridian are split like filter boxes.
            split_bbox(feature).iter().any(|b| {
                Rect::new(Coord { x: b[0], y: b[1] }, Coord { x: b[2], y: b[3] }).intersects(r)
            })
        }
        None => false,
    }
}
