//! Structured logs with `tracing`: JSON for machines or pretty for people, filtered by
//! `RUST_LOG` (default `info`). Access lines use the target `meshlet::access`, so
//! `RUST_LOG=info,meshlet::access=off` silences them alone.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable, colored when on a terminal.
    Pretty,
}

/// Installs the global subscriber; a second call is a no-op (tests start many sidecars).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
