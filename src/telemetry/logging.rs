//! Structured logs with `tracing`: JSON for machines or pretty for people, filtered by
//! `RUST_LOG` (default `info`). Access lines use the target `meshlet::access`, so
//! `RUST_LOG=info,meshlet::access=off` silences them alone. Lines reach stderr through a
//! buffer written at least once a second (`log_buffer`); [`init`]'s guard writes the rest
//! when `main` returns. In JSON the access line skips the subscriber's formatter: it is
//! encoded straight into the buffer (`access::line`, the same bytes), once `tracing` says
//! its target is enabled.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use super::log_buffer::{self, Buffered};

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable, colored when on a terminal.
    Pretty,
}

/// Set once [`init`] installed the JSON subscriber: access lines are then encoded by
/// `access::line` rather than by the subscriber's generic JSON formatter.
static ACCESS_LINES_DIRECT: AtomicBool = AtomicBool::new(false);

/// Whether the access line is to be encoded directly (JSON, our subscriber installed). A
/// test's own subscriber keeps receiving access lines as events.
pub(crate) fn access_lines_direct() -> bool {
    ACCESS_LINES_DIRECT.load(Ordering::Relaxed)
}

/// Writes every buffered log line to stderr when dropped: `main` holds it, so each of its
/// return paths (a clean exit after SIGTERM included) loses no line.
#[must_use = "buffered log lines are written when this guard is dropped"]
#[derive(Debug)]
pub struct FlushOnDrop(());

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush();
    }
}

/// Writes every log line buffered so far to stderr before returning.
pub fn flush() {
    log_buffer::flush();
}

/// Installs the global subscriber, writing through the log buffer; a second call installs
/// nothing (tests start many sidecars). Keep the guard until the process is done logging.
pub fn init(format: LogFormat) -> FlushOnDrop {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    log_buffer::start();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Buffered);
    // The JSON configuration here is the one `access::line` reproduces (and its test).
    match format {
        LogFormat::Json => {
            let installed = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .try_init();
            if installed.is_ok() {
                ACCESS_LINES_DIRECT.store(true, Ordering::Relaxed);
            }
        }
        LogFormat::Pretty => {
            let _ = builder.compact().try_init();
        }
    }
    FlushOnDrop(())
}
