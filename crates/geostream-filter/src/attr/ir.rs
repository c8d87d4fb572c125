//! The compiled form of a CQL2 expression: what `eval.rs` walks on the hot path and
//! `sql.rs` translates. Literals are already parsed (numbers, timestamps, geometries, LIKE
//! patterns), so evaluation only reads.

use geo::{Geometry, Rect};

use super::fold::Fold;
use super::like::LikePattern;

/// SQL's three truth values. A filter admits a feature only when it is `True`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    False,
    True,
    Unknown,
}

impl Truth {
    pub(crate) fn from_bool(b: bool) -> Self {
        if b { Truth::True } else { Truth::False }
    }

    pub(crate) fn not(self) -> Self {
        match self {
            Truth::False => Truth::True,
            Truth::True => Truth::False,
            Truth::Unknown => Truth::Unknown,
        }
    }

    pub(crate) fn and(self, other: Self) -> Self {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::True, Truth::True) => Truth::True,
            _ => Truth::Unknown,
        }
    }

    pub(crate) fn or(self, other: Self) -> Self {
        match (self, other) {
            (Truth::True, _) | (_, Truth::True) => Truth::True,
            (Truth::False, Truth::False) => Truth::False,
            _ => Truth::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    pub(crate) fn test(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => o == Equal,
            CmpOp::Ne => o != Equal,
            CmpOp::Lt => o == Less,
            CmpOp::Le => o != Greater,
            CmpOp::Gt => o == Greater,
            CmpOp::Ge => o != Less,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    IntDiv,
}

/// A value-producing expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// A feature property, looked up by its exact name (dots are not paths).
    Prop(Box<str>),
    Null,
    Num(f64),
    Str(Box<str>),
    Bool(bool),
    /// An instant from `TIMESTAMP()` or `DATE()` (its midnight), in ms since the epoch.
    Time(i64),
    Arith(ArithOp, Box<Operand>, Box<Operand>),
    /// CASEI / ACCENTI applied to a string operand that is not a literal (literals are
    /// folded at compile time).
    Fold(Fold, Box<Operand>),
}

/// One end of an `INTERVAL(..)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimeBound {
    Open,
    At(i64),
    Prop(Box<str>),
}

/// An operand of a temporal relation: a closed span of milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimeOperand {
    Fixed {
        start: i64,
        end: i64,
    },
    /// A property holding an instant (or a date, which spans its day).
    Prop(Box<str>),
    Interval(TimeBound, TimeBound),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemporalOp {
    Before,
    After,
    Meets,
    MetBy,
    Overlaps,
    OverlappedBy,
    Starts,
    StartedBy,
    During,
    Contains,
    Finishes,
    FinishedBy,
    Equals,
    Disjoint,
    Intersects,
}

impl TemporalOp {
    pub(crate) fn from_name(op: &str) -> Option<Self> {
        use TemporalOp::*;
        Some(match op {
            "t_before" => Before,
            "t_after" => After,
            "t_meets" => Meets,
            "t_metBy" => MetBy,
            "t_overlaps" => Overlaps,
            "t_overlappedBy" => OverlappedBy,
            "t_starts" => Starts,
            "t_startedBy" => StartedBy,
            "t_during" => During,
            "t_contains" => Contains,
            "t_finishes" => Finishes,
            "t_finishedBy" => FinishedBy,
            "t_equals" => Equals,
            "t_disjoint" => Disjoint,
            "t_intersects" => Intersects,
            _ => return None,
        })
    }

    /// The base relation and whether the operands are swapped: the six inverse relations
    /// are their counterparts read the other way (`a T_AFTER b` is `b T_BEFORE a`).
    pub(crate) fn base(self) -> (Rel, bool) {
        use TemporalOp::*;
        match self {
            Before => (Rel::Before, false),
            After => (Rel::Before, true),
            Meets => (Rel::Meets, false),
            MetBy => (Rel::Meets, true),
            Overlaps => (Rel::Overlaps, false),
            OverlappedBy => (Rel::Overlaps, true),
            Starts => (Rel::Starts, false),
            StartedBy => (Rel::Starts, true),
            During => (Rel::During, false),
            Contains => (Rel::During, true),
            Finishes => (Rel::Finishes, false),
            FinishedBy => (Rel::Finishes, true),
            Equals => (Rel::Equals, false),
            Disjoint => (Rel::Disjoint, false),
            Intersects => (Rel::Intersects, false),
        }
    }
}

/// The nine temporal relations the fifteen operators reduce to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rel {
    Before,
    Meets,
    Overlaps,
    Starts,
    During,
    Finishes,
    Equals,
    Disjoint,
    Intersects,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpatialOp {
    Intersects,
    Disjoint,
    Contains,
    Within,
    Equals,
    Touches,
    Overlaps,
    Crosses,
}

impl SpatialOp {
    pub(crate) fn from_name(op: &str) -> Option<Self> {
        use SpatialOp::*;
        Some(match op {
            "s_intersects" => Intersects,
            "s_disjoint" => Disjoint,
            "s_contains" => Contains,
            "s_within" => Within,
            "s_equals" => Equals,
            "s_touches" => Touches,
            "s_overlaps" => Overlaps,
            "s_crosses" => Crosses,
            _ => return None,
        })
    }

    pub(crate) fn postgis(self) -> &'static str {
        use SpatialOp::*;
        match self {
            Intersects => "ST_Intersects",
            Disjoint => "ST_Disjoint",
            Contains => "ST_Contains",
            Within => "ST_Within",
            Equals => "ST_Equals",
            Touches => "ST_Touches",
            Overlaps => "ST_Overlaps",
            Crosses => "ST_Crosses",
        }
    }
}

/// A geometry literal of a spatial predicate, with its bounding box for a cheap pre-test.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpatialLiteral {
    pub(crate) geom: Geometry<f64>,
    pub(crate) rect: Option<Rect<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pred {
    Const(Truth),
    And(Box<[Pred]>),
    Or(Box<[Pred]>),
    Not(Box<Pred>),
    Cmp(CmpOp, Operand, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Box<[Operand]>),
    Like(Operand, LikePattern),
    IsNull(Operand),
    /// A boolean operand used as a condition (`flag AND ...`).
    Truthy(Operand),
    Temporal(TemporalOp, TimeOperand, TimeOperand),
    /// A spatial relation between the feature geometry and a literal; `feature_first`
    /// records the operand order, which matters for CONTAINS / WITHIN.
    Spatial {
        op: SpatialOp,
        literal: Box<SpatialLiteral>,
        feature_first: bool,
    },
}
