//! The one error type of this crate.

use thiserror::Error;

/// Everything that can be wrong with a filter a client sent.
///
/// All of these are the client's fault and are found when the filter is parsed; evaluation
/// never fails. Each message names the offending value so it can be shown to the client as is.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum FilterError {
    /// A bounding box did not have exactly four numbers.
    #[error("bbox must have 4 numbers [minx, miny, maxx, maxy]; got {0}")]
    BboxLength(usize),

    /// A latitude outside -90..90.
    #[error("{what} latitude {value} is outside -90..90")]
    LatitudeOutOfRange {
        /// Which input held it ("bbox", "circle centre", "polygon", ...).
        what: &'static str,
        /// The latitude.
        value: f64,
    },

    /// A longitude outside -180..180.
    #[error("{what} longitude {value} is outside -180..180")]
    LongitudeOutOfRange {
        /// Which input held it.
        what: &'static str,
        /// The longitude.
        value: f64,
    },

    /// A bounding box whose south edge is north of its north edge.
    #[error("bbox miny {miny} is greater than maxy {maxy}")]
    BboxInverted {
        /// South edge.
        miny: f64,
        /// North edge.
        maxy: f64,
    },

    /// A NaN or an infinity where a coordinate or distance was expected.
    #[error("{0} contains a number that is not finite")]
    NotFinite(&'static str),

    /// A circle radius that is negative or not finite.
    #[error("circle radius {0} m is invalid: it must be a finite number of metres, 0 or more")]
    InvalidRadius(f64),

    /// A GeoJSON or WKT geometry that is malformed (the message says how).
    #[error("invalid geometry: {0}")]
    InvalidGeometry(String),

    /// A geometry with more vertices than [`crate::Limits::max_vertices`].
    #[error("geometry has {count} vertices; at most {max} allowed")]
    TooManyVertices {
        /// Vertices found.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// A datetime or interval that does not parse.
    #[error("invalid datetime '{input}': {reason}")]
    InvalidDatetime {
        /// The text as received.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// CQL2 text that cql2 could not parse.
    #[error("CQL2 text does not parse: {0}")]
    Cql2Text(String),

    /// CQL2 JSON that cql2 could not parse.
    #[error("CQL2 JSON does not parse: {0}")]
    Cql2Json(String),

    /// A CQL2 operator this crate does not evaluate.
    #[error("unsupported CQL2 operator {0}")]
    UnsupportedOperator(String),

    /// A CQL2 construct that parses but cannot be evaluated (the message says which).
    #[error("unsupported CQL2 construct: {0}")]
    Unsupported(String),

    /// A filter with more nodes than [`crate::Limits::max_nodes`].
    #[error("filter has {nodes} nodes; at most {max} allowed")]
    TooManyNodes {
        /// Nodes counted (for text, a lower bound found before parsing).
        nodes: usize,
        /// The limit.
        max: usize,
    },

    /// A filter nested deeper than [`crate::Limits::max_depth`].
    #[error("filter is nested {depth} levels deep; at most {max} allowed")]
    TooDeep {
        /// Depth found (for text, a lower bound found before parsing).
        depth: usize,
        /// The limit.
        max: usize,
    },

    /// Filter text longer than [`crate::Limits::max_text_bytes`].
    #[error("filter text is {len} bytes; at most {max} allowed")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A property name that cannot be written into SQL.
    #[error(
        "property name '{0}' cannot be used in SQL: only letters A-Z a-z, digits and _ : . - are allowed"
    )]
    InvalidPropertyName(String),

    /// A part of a filter with no SQL translation in the chosen dialect.
    #[error(
        "{what} has no {dialect} translation; evaluate it in Rust with AttributeFilter::matches"
    )]
    NotSqlTranslatable {
        /// The construct.
        what: String,
        /// The dialect asked for.
        dialect: &'static str,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = FilterError> = std::result::Result<T, E>;
