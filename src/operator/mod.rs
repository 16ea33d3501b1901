//! The operator commands that ask a running meshlet, not Redis (docs/operations.md, "CLI:
//! stat, tap, doctor"): `meshlet stat` (the per-destination table of `GET /v1/stats`),
//! `meshlet tap` (the live request lines of `GET /v1/tap`) and `meshlet doctor` (config,
//! listeners, Redis, this pod's registration, the app's health and the clock, one line
//! per check).
//!
//! What it owns: the commands' output and exit statuses, the terminal handling they share
//! (`term`: colour and redrawing only on a terminal, and only without `NO_COLOR`) and a
//! bounded HTTP/1.1 GET to a listener on this machine (`http`). It never touches the
//! request path; `main.rs` only parses arguments and calls [`stat::run`], [`tap::run`] and
//! [`doctor::run`], then [`exit_status`].

pub mod doctor;
mod http;
pub mod stat;
pub mod tap;
mod term;

use std::net::SocketAddr;
use std::process::ExitCode;

pub use http::HttpError;

/// The local API's address when `--api` is not given (`listen.api`'s default).
pub const DEFAULT_API: &str = "127.0.0.1:15000";

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The local API gave no usable answer.
    #[error("the local API at {addr}: {source} (is meshlet running? --api names its listen.api)")]
    Api {
        /// Where we asked.
        addr: SocketAddr,
        /// What went wrong.
        source: HttpError,
    },
    /// The local API answered something that is not the documented JSON.
    #[error("the local API at {addr} answered {path} with unexpected JSON: {why}")]
    Unexpected {
        /// Where we asked.
        addr: SocketAddr,
        /// The path asked for.
        path: &'static str,
        /// The parser's complaint.
        why: String,
    },
    /// The tap stream ended: the meshlet stopped or closed the connection.
    #[error("the tap stream from {0} ended (meshlet stopped?)")]
    StreamEnded(SocketAddr),
    /// Writing our own output failed (other than a closed pipe, which ends quietly).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// `meshlet doctor` found failing checks; they are printed already.
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),
}

/// The process exit status of an operator command's result: 0 on success, 1 when a check
/// failed or meshlet could not be asked (the reason printed to stderr as `meshlet: ...`).
/// Bad arguments never get here: clap rejects them with exit status 2.
pub fn exit_status(result: Result<(), OperatorError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Doctor printed each check and a summary already.
        Err(OperatorError::ChecksFailed(_)) => ExitCode::from(1),
        Err(e) => {
            eprintln!("meshlet: {e}");
            ExitCode::from(1)
        }
    }
}

/// Whether a write failed because the reader went away (`meshlet tap | head`): the command
/// then ends quietly with success, like other Unix filters.
fn reader_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}
