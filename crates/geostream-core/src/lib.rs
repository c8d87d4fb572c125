//! The geostream wire protocol: frames and their three encodings, methods and their
//! parameters, pushes, error codes and close codes.
//!
//! This crate has no sockets, no SQL and no async runtime, so the server, the Rust client and
//! the benchmark all share one definition of the protocol. `docs/PROTOCOL.md` is its prose.
#![warn(missing_docs)]

pub mod api;
pub mod bus;
pub mod codec;
pub mod error;
pub mod feature;
pub mod msgpack;
pub mod payload;
pub mod request;

pub use codec::{ClientFrame, Encoding, Id, Params, PushFrame, ServerFrame};
pub use error::{CloseCode, CloseReason, ErrorCode, RpcError};
pub use payload::{Payload, PayloadKind};
