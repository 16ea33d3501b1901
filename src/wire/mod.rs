//! The HTTP vocabulary every listener shares, below the data plane: meshlet's own small
//! answers ([`answer`]: bodies held in memory, JSON, the error answer of docs/errors.md) and
//! the gRPC wire details ([`grpc`]). The proxy, the local API, events and the hub all speak
//! it; none of them needs another's module to answer a request.

pub mod answer;
pub mod grpc;

pub use answer::{error_response, AnswerBody};
