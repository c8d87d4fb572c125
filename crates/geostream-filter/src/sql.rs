//! Parameterized SQL for the stores, giving the same answers as
//! [`AttributeFilter::matches`](crate::AttributeFilter::matches).
//!
//! Feature properties live in a JSON column named `properties` (`jsonb` in PostgreSQL,
//! JSON text in SQLite); PostGIS geometry in a `geom geometry(Geometry, 4326)` column.
//!
//! Every user value travels as a parameter. Property names are embedded in the SQL text
//! (so expression indexes such as `((properties->>'speed')::double precision)` can be used)
//! and are therefore restricted to `[A-Za-z0-9_:.-]`; any other name is an error.
//!
//! How the clause mirrors the Rust semantics:
//! * every property access is guarded by its JSON type (`jsonb_typeof` / `json_type`), so
//!   a value of the wrong type is NULL instead of a cast error or SQLite's cross-type order;
//! * three-valued logic is SQL's own; temporal relations are wrapped so any NULL operand
//!   makes the whole relation NULL, as in Rust;
//! * strings compare with `COLLATE "C"` in PostgreSQL (code point order, like Rust); SQLite
//!   compares bytes already; LIKE becomes `GLOB` in SQLite, whose LIKE ignores ASCII case;
//! * timestamps are checked against the same grammar as the Rust parser and converted to
//!   epoch milliseconds with integer arithmetic, so both sides agree to the millisecond;
//! * division by zero is NULL (`NULLIF`), as in Rust.
//!
//! Not translated (an error; evaluate those filters in Rust): spatial predicates, `CASEI`
//! and `ACCENTI` in SQLite (its `lower()` folds ASCII only), `ACCENTI` in PostgreSQL (the
//! `unaccent` extension folds differently), `%` and `^` (no portable double-precision form).
//! `CASEI` in PostgreSQL uses `lower()`, which agrees with Rust for every character when
//! the database `LC_CTYPE` is a UTF-8 locale, and for ASCII only under `C`.

use crate::attr::AttributeFilter;
use crate::attr::ir::*;
use crate::attr::like::{LikePattern, Tok};
use crate::error::{FilterError, Result};
use crate::spatial::to_wkt;

/// The SQL dialect to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL with PostGIS: `$1` placeholders with explicit casts, `jsonb` properties.
    Postgres,
    /// SQLite 3.38+: `?1` placeholders, JSON text properties.
    Sqlite,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::Sqlite => "SQLite",
        }
    }
}

/// A `WHERE` clause (without the keyword) and the values of its placeholders, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFilter {
    /// Boolean SQL expression; a row matches when it is TRUE.
    pub clause: String,
    /// Values for the placeholders `first_param_index`, `first_param_index + 1`, ...
    pub params: Vec<SqlParam>,
}

/// A placeholder value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// Bind as text.
    Text(String),
    /// Bind as a double.
    Float(f64),
    /// Bind as a 64-bit integer.
    Int(i64),
    /// Bind as a boolean (in SQLite, as the integer 1 or 0, which is what rusqlite does).
    Bool(bool),
}

/// Translates an attribute filter; placeholders are numbered from `first_param_index`
/// (1 for a clause on its own).
pub fn attribute_to_sql(
    f: &AttributeFilter,
    d: Dialect,
    first_param_index: usize,
) -> Result<SqlFilter, FilterError> {
    let mut w = Writer {
        d,
        next: first_param_index,
        params: Vec::new(),
    };
    let clause = w.pred(f.pred())?;
    Ok(SqlFilter {
        clause,
        params: w.params,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Num,
    Text,
    Bool,
    Time,
}

/// Static type of an operand; `None` for a property (its JSON type decides at run time)
/// and for NULL.
fn static_ty(o: &Operand) -> Option<Ty> {
    match o {
        Operand::Prop(_) | Operand::Null => None,
        Operand::Num(_) | Operand::Arith(..) => Some(Ty::Num),
        Operand::Str(_) | Operand::Fold(..) => Some(Ty::Text),
        Operand::Bool(_) => Some(Ty::Bool),
        Operand::Time(_) => Some(Ty::Time),
    }
}

struct Writer {
    d: Dialect,
    next: usize,
    params: Vec<SqlParam>,
}

impl Writer {
    fn param(&mut self, p: SqlParam) -> String {
        let n = self.next;
        self.next += 1;
        let s = match self.d {
            Dialect::Sqlite => format!("?{n}"),
            // Explicit casts: the server never has to guess a parameter's type.
            Dialect::Postgres => match &p {
                SqlParam::Text(_) => format!("${n}::text"),
                SqlParam::Float(_) => format!("${n}::double precision"),
                SqlParam::Int(_) => format!("${n}::bigint"),
                SqlParam::Bool(_) => format!("${n}::boolean"),
            },
        };
        self.params.push(p);
        s
    }

    fn unsupported(&self, what: impl Into<String>) -> FilterError {
        FilterError::NotSqlTranslatable {
            what: what.into(),
            dialect: self.d.name(),
        }
    }

    fn truth(&self, t: Truth) -> String {
        match (self.d, t) {
            (Dialect::Postgres, Truth::True) => "TRUE".into(),
            (Dialect::Postgres, Truth::False) => "FALSE".into(),
            (Dialect::Postgres, Truth::Unknown) => "CAST(NULL AS boolean)".into(),
            (Dialect::Sqlite, Truth::True) => "1".into(),
            (Dialect::Sqlite, Truth::False) => "0".into(),
            (Dialect::Sqlite, Truth::Unknown) => "NULL".into(),
        }
    }

    // -- property access ------------------------------------------------------------------

    fn key(&self, name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(FilterError::InvalidPropertyName(name.to_string()))
        }
    }

    /// The JSON value of a property as SQL: `jsonb` in PostgreSQL, the JSON type name in
    /// SQLite (used only inside the typed accessors below).
    fn json_type(&self, name: &str) -> String {
        match self.d {
            Dialect::Postgres => format!("jsonb_typeof(properties->'{name}')"),
            Dialect::Sqlite => format!("json_type(properties, '$.\"{name}\"')"),
        }
    }

    fn raw_text(&self, name: &str) -> String {
        match self.d {
            Dialect::Postgres => format!("(properties->>'{name}')"),
            Dialect::Sqlite => format!("json_extract(properties, '$.\"{name}\"')"),
        }
    }

    /// A property as a value of type `ty`, NULL when it is missing, null or another type.
    fn prop_as(&self, name: &str, ty: Ty) -> Result<String> {
        self.key(name)?;
        let jt = self.json_type(name);
        let raw = self.raw_text(name);
        Ok(match (self.d, ty) {
            (Dialect::Postgres, Ty::Num) => {
                format!("(CASE WHEN {jt} = 'number' THEN {raw}::double precision END)")
            }
            (Dialect::Postgres, Ty::Text) => format!("(CASE WHEN {jt} = 'string' THEN {raw} END)"),
            (Dialect::Postgres, Ty::Bool) => {
                format!("(CASE WHEN {jt} = 'boolean' THEN {raw}::boolean END)")
            }
            (Dialect::Sqlite, Ty::Num) => {
                format!("(CASE WHEN {jt} IN ('integer', 'real') THEN CAST({raw} AS REAL) END)")
            }
            (Dialect::Sqlite, Ty::Text) => format!("(CASE WHEN {jt} = 'text' THEN {raw} END)"),
            (Dialect::Sqlite, Ty::Bool) => {
                format!("(CASE {jt} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)")
            }
            (_, Ty::Time) => {
                let text = self.prop_as(name, Ty::Text)?;
                self.time_ms(&text, false)
            }
        })
    }

    // -- timestamps -----------------------------------------------------------------------

    /// Epoch milliseconds of a text expression `t`, NULL unless it is a timestamp in the
    /// grammar of `time::parse_stamp`. With `span_end`, a bare date gives its last
    /// millisecond instead of its first.
    ///
    /// Nested CASEs rather than AND: PostgreSQL does not promise to short-circuit AND, and
    /// the casts inside must only ever see text the outer checks have proven well-formed.
    fn time_ms(&self, t: &str, span_end: bool) -> String {
        let sub = |from: usize, len: usize| format!("substr({t}, {from}, {len})");
        let int = |from: usize, len: usize| format!("CAST({} AS INTEGER)", sub(from, len));
        let (y, m, d) = (int(1, 4), int(6, 2), int(9, 2));
        let (hh, mi, ss) = (int(12, 2), int(15, 2), int(18, 2));
        let len = format!("length({t})");
        // Length of the zone suffix: Z, ±HH:MM, or none.
        let tzlen = match self.d {
            Dialect::Sqlite => format!(
                "(CASE WHEN {t} GLOB '*Z' THEN 1 WHEN {t} GLOB '*[+-][0-9][0-9]:[0-9][0-9]' THEN 6 ELSE 0 END)"
            ),
            Dialect::Postgres => format!(
                "(CASE WHEN {t} LIKE '%Z' THEN 1 WHEN {t} ~ '[+-][0-9][0-9]:[0-9][0-9]$' THEN 6 ELSE 0 END)"
            ),
        };
        // The fraction between the seconds and the zone, with its leading dot (or empty).
        let frac = format!("substr({t}, 20, {len} - 19 - {tzlen})");
        let shape = match self.d {
            Dialect::Sqlite => {
                let date = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]";
                format!(
                    "({t} GLOB '{date}' OR ({t} GLOB '{date}[T ][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' \
                     AND ({frac} = '' OR ({frac} GLOB '.[0-9]*' AND NOT {frac} GLOB '.*[^0-9]*' AND length({frac}) <= 10))))"
                )
            }
            Dialect::Postgres => format!(
                "({t} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}([T ][0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\\.[0-9]{{1,9}})?(Z|[+-][0-9]{{2}}:[0-9]{{2}})?)?$')"
            ),
        };
        let leap = format!(
            "(CASE WHEN ({y} % 4 = 0 AND {y} % 100 <> 0) OR {y} % 400 = 0 THEN 1 ELSE 0 END)"
        );
        let days_in_month =
            format!("(CASE WHEN {m} = 2 THEN 28 + {leap} ELSE 30 + ({m} + {m} / 8) % 2 END)");
        let date_ok =
            format!("({y} >= 1 AND {m} BETWEEN 1 AND 12 AND {d} BETWEEN 1 AND {days_in_month})");
        let oh = format!("CAST(substr({t}, {len} - 4, 2) AS INTEGER)");
        let om = format!("CAST(substr({t}, {len} - 1, 2) AS INTEGER)");
        let time_ok = format!(
            "({len} = 10 OR ({hh} <= 23 AND {mi} <= 59 AND {ss} <= 59 AND ({tzlen} <> 6 OR ({oh} <= 23 AND {om} <= 59))))"
        );
        let days = match self.d {
            // julianday() of a valid date at midnight is an exact x.5 value.
            Dialect::Sqlite => format!("CAST(julianday({}) - 2440587.5 AS INTEGER)", sub(1, 10)),
            Dialect::Postgres => format!(
                "CAST(CAST({} AS date) - DATE '1970-01-01' AS bigint)",
                sub(1, 10)
            ),
        };
        let offset_min = format!(
            "(CASE WHEN {tzlen} = 6 THEN (CASE WHEN substr({t}, {len} - 5, 1) = '-' THEN -1 ELSE 1 END) * ({oh} * 60 + {om}) ELSE 0 END)"
        );
        // First three fraction digits, right-padded: '.5' is 500 ms.
        let millis = format!(
            "(CASE WHEN length({frac}) > 1 THEN CAST(substr(substr({frac}, 2) || '00', 1, 3) AS INTEGER) ELSE 0 END)"
        );
        let time_part = format!(
            "(CASE WHEN {len} = 10 THEN {} ELSE ({hh} * 3600 + {mi} * 60 + {ss} - {offset_min} * 60) * 1000 + {millis} END)",
            if span_end { "86399999" } else { "0" }
        );
        format!(
            "(CASE WHEN {shape} THEN (CASE WHEN {date_ok} AND {time_ok} THEN {days} * 86400000 + {time_part} END) END)"
        )
    }

    // -- operands -------------------------------------------------------------------------

    /// An operand as SQL of type `ty`; a literal of another type is NULL.
    fn operand(&mut self, o: &Operand, ty: Ty) -> Result<String> {
        if static_ty(o).is_some_and(|t| t != ty)
            && !(ty == Ty::Time && static_ty(o) == Some(Ty::Text))
        {
            return Ok("NULL".into());
        }
        Ok(match o {
            Operand::Prop(k) => self.prop_as(k, ty)?,
            Operand::Null => "NULL".into(),
            Operand::Num(v) => self.param(SqlParam::Float(*v)),
            Operand::Bool(b) => self.param(SqlParam::Bool(*b)),
            Operand::Time(t) => self.param(SqlParam::Int(*t)),
            Operand::Str(s) if ty == Ty::Time => {
                let p = self.param(SqlParam::Text(s.to_string()));
                self.time_ms(&p, false)
            }
            Operand::Str(s) => self.param(SqlParam::Text(s.to_string())),
            // Folding does not change a timestamp's meaning; read the inner text.
            Operand::Fold(_, inner) if ty == Ty::Time => self.operand(inner, Ty::Time)?,
            Operand::Fold(f, inner) => {
                if self.d == Dialect::Sqlite {
                    return Err(self.unsupported("CASEI/ACCENTI"));
                }
                if f.has(crate::attr::fold::Fold::ACCENTI) {
                    return Err(self.unsupported("ACCENTI"));
                }
                let s = self.operand(inner, Ty::Text)?;
                format!("lower({s})")
            }
            Operand::Arith(op, a, b) => {
                let (a, b) = (self.operand(a, Ty::Num)?, self.operand(b, Ty::Num)?);
                let zero = if self.d == Dialect::Sqlite {
                    "0.0"
                } else {
                    "0"
                };
                match op {
                    ArithOp::Add => format!("({a} + {b})"),
                    ArithOp::Sub => format!("({a} - {b})"),
                    ArithOp::Mul => format!("({a} * {b})"),
                    ArithOp::Div => format!("({a} / NULLIF({b}, {zero}))"),
                    ArithOp::IntDiv => match self.d {
                        Dialect::Postgres => format!("trunc({a} / NULLIF({b}, 0))"),
                        Dialect::Sqlite => format!("CAST({a} / NULLIF({b}, 0.0) AS INTEGER)"),
                    },
                    ArithOp::Mod => return Err(self.unsupported("the % operator")),
                    ArithOp::Pow => return Err(self.unsupported("the ^ operator")),
                }
            }
        })
    }

    // -- predicates -----------------------------------------------------------------------

    fn pred(&mut self, p: &Pred) -> Result<String> {
        Ok(match p {
            Pred::Const(t) => self.truth(*t),
            Pred::And(ps) | Pred::Or(ps) => {
                let sep = if matches!(p, Pred::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts = ps
                    .iter()
                    .map(|p| self.pred(p))
                    .collect::<Result<Vec<_>>>()?;
                format!("({})", parts.join(sep))
            }
            Pred::Not(p) => format!("(NOT {})", self.pred(p)?),
            Pred::Cmp(op, a, b) => self.compare(*op, a, b)?,
            Pred::Between(v, lo, hi) => {
                let ge = self.compare(CmpOp::Ge, v, lo)?;
                let le = self.compare(CmpOp::Le, v, hi)?;
                format!("({ge} AND {le})")
            }
            Pred::In(v, list) => {
                if list.is_empty() {
                    return Ok(self.truth(Truth::False));
                }
                let parts = list
                    .iter()
                    .map(|i| self.compare(CmpOp::Eq, v, i))
                    .collect::<Result<Vec<_>>>()?;
                format!("({})", parts.join(" OR "))
            }
            Pred::Like(v, pat) => {
                let s = self.operand(v, Ty::Text)?;
                match self.d {
                    Dialect::Postgres => {
                        let p = self.param(SqlParam::Text(pat.source().to_string()));
                        format!("({s} LIKE {p})")
                    }
                    Dialect::Sqlite => {
                        let p = self.param(SqlParam::Text(glob_pattern(pat)));
                        format!("({s} GLOB {p})")
                    }
                }
            }
            Pred::IsNull(v) => match v {
                Operand::Prop(k) => {
                    self.key(k)?;
                    format!("({} IS NULL)", self.raw_text(k))
                }
                Operand::Null => self.truth(Truth::True),
                o => match static_ty(o) {
                    Some(ty @ (Ty::Num | Ty::Text))
                        if matches!(o, Operand::Arith(..) | Operand::Fold(..)) =>
                    {
                        let s = self.operand(o, ty)?;
                        format!("({s} IS NULL)")
                    }
                    _ => self.truth(Truth::False),
                },
            },
            Pred::Truthy(v) => match v {
                Operand::Prop(k) => {
                    let b = self.prop_as(k, Ty::Bool)?;
                    match self.d {
                        Dialect::Postgres => b,
                        Dialect::Sqlite => format!("({b} = 1)"),
                    }
                }
                Operand::Bool(b) => self.truth(Truth::from_bool(*b)),
                _ => self.truth(Truth::Unknown),
            },
            Pred::Temporal(op, a, b) => {
                let (s1, e1) = self.span(a)?;
                let (s2, e2) = self.span(b)?;
                let (base, swapped) = op.base();
                let (s1, e1, s2, e2) = if swapped {
                    (s2, e2, s1, e1)
                } else {
                    (s1, e1, s2, e2)
                };
                let rel = match base {
                    Rel::Before => format!("{e1} < {s2}"),
                    Rel::Meets => format!("{e1} = {s2}"),
                    Rel::Overlaps => format!("{s1} < {s2} AND {s2} < {e1} AND {e1} < {e2}"),
                    Rel::Starts => format!("{s1} = {s2} AND {e1} < {e2}"),
                    Rel::During => format!("{s1} > {s2} AND {e1} < {e2}"),
                    Rel::Finishes => format!("{s1} > {s2} AND {e1} = {e2}"),
                    Rel::Equals => format!("{s1} = {s2} AND {e1} = {e2}"),
                    Rel::Disjoint => format!("NOT ({s1} <= {e2} AND {e1} >= {s2})"),
                    Rel::Intersects => format!("{s1} <= {e2} AND {e1} >= {s2}"),
                };
                // All four ends known, or the relation is unknown: plain SQL would let a
                // FALSE conjunct decide even when another end is NULL.
                format!(
                    "(CASE WHEN {s1} IS NULL OR {e1} IS NULL OR {s2} IS NULL OR {e2} IS NULL THEN NULL ELSE ({rel}) END)"
                )
            }
            Pred::Spatial {
                op,
                literal,
                feature_first,
            } => match self.d {
                Dialect::Sqlite => {
                    return Err(self.unsupported(format!(
                        "spatial predicate {}",
                        op.postgis().replace("ST_", "S_").to_uppercase()
                    )));
                }
                Dialect::Postgres => {
                    let wkt = self.param(SqlParam::Text(to_wkt(&literal.geom)));
                    let lit = format!("ST_GeomFromText({wkt}, 4326)");
                    let (a, b) = if *feature_first {
                        ("geom".to_string(), lit)
                    } else {
                        (lit, "geom".to_string())
                    };
                    format!("{}({a}, {b})", op.postgis())
                }
            },
        })
    }

    fn compare(&mut self, op: CmpOp, a: &Operand, b: &Operand) -> Result<String> {
        if matches!(a, Operand::Null) || matches!(b, Operand::Null) {
            return Ok(self.truth(Truth::Unknown));
        }
        let sym = op.symbol();
        let ty = match (static_ty(a), static_ty(b)) {
            (Some(x), Some(y)) if x == y => Some(x),
            (Some(Ty::Time), Some(Ty::Text)) | (Some(Ty::Text), Some(Ty::Time)) => Some(Ty::Time),
            (Some(_), Some(_)) => return Ok(self.truth(Truth::Unknown)),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        };
        match ty {
            Some(ty) => self.typed_compare(sym, a, b, ty),
            None => {
                // Two properties: whichever JSON type they share decides how they compare.
                let mut arms = Vec::new();
                for ty in [Ty::Num, Ty::Text, Ty::Bool] {
                    let (x, y) = (self.operand(a, ty)?, self.operand(b, ty)?);
                    let cmp = self.cmp_sql(sym, &x, &y, ty);
                    arms.push(format!(
                        "WHEN {x} IS NOT NULL AND {y} IS NOT NULL THEN {cmp}"
                    ));
                }
                Ok(format!("(CASE {} END)", arms.join(" ")))
            }
        }
    }

    fn typed_compare(&mut self, sym: &str, a: &Operand, b: &Operand, ty: Ty) -> Result<String> {
        let x = self.operand(a, ty)?;
        let y = self.operand(b, ty)?;
        Ok(format!("({})", self.cmp_sql(sym, &x, &y, ty)))
    }

    fn cmp_sql(&self, sym: &str, x: &str, y: &str, ty: Ty) -> String {
        match (self.d, ty) {
            (Dialect::Postgres, Ty::Text) => {
                format!("({x} COLLATE \"C\") {sym} ({y} COLLATE \"C\")")
            }
            _ => format!("{x} {sym} {y}"),
        }
    }

    /// Start and end (epoch ms) of a temporal operand.
    fn span(&mut self, t: &TimeOperand) -> Result<(String, String)> {
        Ok(match t {
            TimeOperand::Fixed { start, end } => (
                self.param(SqlParam::Int(*start)),
                self.param(SqlParam::Int(*end)),
            ),
            TimeOperand::Prop(k) => {
                let text = self.prop_as(k, Ty::Text)?;
                (self.time_ms(&text, false), self.time_ms(&text, true))
            }
            TimeOperand::Interval(a, b) => (self.bound(a, i64::MIN)?, self.bound(b, i64::MAX)?),
        })
    }

    fn bound(&mut self, b: &TimeBound, open: i64) -> Result<String> {
        Ok(match b {
            TimeBound::Open => self.param(SqlParam::Int(open)),
            TimeBound::At(t) => self.param(SqlParam::Int(*t)),
            TimeBound::Prop(k) => {
                let text = self.prop_as(k, Ty::Text)?;
                let open = self.param(SqlParam::Int(open));
                let ms = self.time_ms(&text, false);
                format!("(CASE WHEN {text} = '..' THEN {open} ELSE {ms} END)")
            }
        })
    }
}

/// A LIKE pattern as an SQLite GLOB pattern: `%` → `*`, `_` → `?`, and GLOB's own special
/// characters bracketed so they match themselves.
fn glob_pattern(p: &LikePattern) -> String {
    let mut s = String::new();
    for t in p.tokens() {
        match t {
            Tok::Many => s.push('*'),
            Tok::One => s.push('?'),
            Tok::Char(c @ ('*' | '?' | '[')) => {
                s.push('[');
                s.push(*c);
                s.push(']');
            }
            Tok::Char(c) => s.push(*c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn sql(text: &str, d: Dialect) -> Result<SqlFilter> {
        attribute_to_sql(
            &AttributeFilter::parse_text(text, &Limits::default()).unwrap(),
            d,
            1,
        )
    }

    #[test]
    fn postgres_shape() {
        let s = sql("speed > 10 AND name LIKE 'bus%'", Dialect::Postgres).unwrap();
        assert_eq!(
            s.clause,
            "(((CASE WHEN jsonb_typeof(properties->'speed') = 'number' THEN (properties->>'speed')::double precision END) > $1::double precision) AND \
             ((CASE WHEN jsonb_typeof(properties->'name') = 'string' THEN (properties->>'name') END) LIKE $2::text))"
        );
        assert_eq!(
            s.params,
            vec![SqlParam::Float(10.0), SqlParam::Text("bus%".into())]
        );
    }

    #[test]
    fn sqlite_shape_and_numbering() {
        let f = AttributeFilter::parse_text(
            "name = 'x''; DROP TABLE t' OR n IS NULL",
            &Limits::default(),
        )
        .unwrap();
        let s = attribute_to_sql(&f, Dialect::Sqlite, 3).unwrap();
        assert!(s.clause.contains("?3"), "{}", s.clause);
        assert!(
            !s.clause.contains("DROP"),
            "values never reach the SQL text"
        );
        assert_eq!(s.params, vec![SqlParam::Text("x'; DROP TABLE t".into())]);
        assert!(
            s.clause
                .contains("json_extract(properties, '$.\"n\"') IS NULL")
        );
    }

    #[test]
    fn refusals() {
        let e = sql("\"we'ird\" = 1", Dialect::Postgres).unwrap_err();
        assert_eq!(
            e.to_string(),
            "property name 'we'ird' cannot be used in SQL: only letters A-Z a-z, digits and _ : . - are allowed"
        );
        let e = sql("S_INTERSECTS(geometry, POINT(1 2))", Dialect::Sqlite).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spatial predicate S_INTERSECTS has no SQLite translation; evaluate it in Rust with AttributeFilter::matches"
        );
        assert!(sql("CASEI(name) = 'a'", Dialect::Sqlite).is_err());
        assert!(sql("ACCENTI(name) = 'a'", Dialect::Postgres).is_err());
        assert!(sql("a % 2 = 1", Dialect::Postgres).is_err());
        assert!(
            sql("CASEI(name) = 'a'", Dialect::Postgres)
                .unwrap()
                .clause
                .contains("lower(")
        );
    }

    #[test]
    fn postgis_predicates() {
        let s = sql("S_WITHIN(POINT(1 2), geometry)", Dialect::Postgres).unwrap();
        assert_eq!(s.clause, "ST_Within(ST_GeomFromText($1::text, 4326), geom)");
        assert_eq!(s.params, vec![SqlParam::Text("POINT(1 2)".into())]);
    }

    #[test]
    fn glob_escapes() {
        let p = LikePattern::compile("a*b?[c]%_\\%").unwrap();
        assert_eq!(glob_pattern(&p), "a[*]b[?][[]c]*?%");
    }
}
