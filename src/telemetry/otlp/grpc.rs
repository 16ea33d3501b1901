//! OTLP/gRPC transport (`protocol: grpc`): opentelemetry-otlp's tonic exporter, run on a
//! small tokio runtime of its own.
//!
//! Tonic needs a tokio runtime: its lazy channel spawns a connection worker when it is
//! built, and its timeouts and the exporter's retry backoff are tokio timers. Two ways were
//! open; this one is chosen for shutdown:
//!
//! - **Here: the SDK's thread-based batch processor (the one the HTTP transport uses)
//!   handing each export to a dedicated current-thread runtime on its own thread.** The
//!   request path only `try_send`s into the processor's bounded queue (4096; full = the span
//!   is dropped), exactly as with HTTP. At SIGTERM the sidecar has already stopped its
//!   workers when it flushes (`SpanExport::shutdown`, on a blocking thread): the flush runs
//!   on this runtime, which nothing else uses and which lives until the processor thread has
//!   exported its last batch and dropped the exporter. So the last spans go out after
//!   meshlet's workers have stopped, and no flush ever waits on a runtime that is itself
//!   blocked in the flush.
//! - Not: the SDK's async-runtime processor with `rt-tokio`, on meshlet's runtimes. It is
//!   behind an `experimental_*` feature, and meshlet runs only current-thread runtimes (the
//!   control plane's, and one per worker): its `shutdown` blocks the calling thread until
//!   the processor task answers, which deadlocks when that task lives on the same
//!   current-thread runtime, and a task on a worker runtime would stop with the worker
//!   before the final flush. Exports would also compete with requests on the workers.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::OtlpError;

/// The tonic span exporter, each export run on the `meshlet-otlp` thread's runtime.
pub(super) struct GrpcExporter {
    /// Shared with the export in flight (at most one: the processor awaits each export).
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    /// The dedicated runtime that drives tonic.
    runtime: Handle,
    /// Dropped with the exporter, after the processor's last export: that ends the runtime
    /// thread (and with it tonic's connection).
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for GrpcExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcExporter").finish_non_exhaustive()
    }
}

impl GrpcExporter {
    /// Starts the runtime thread and builds the exporter for `endpoint` (`http://host:port`)
    /// on it; spans carry `resource`.
    pub(super) fn new(endpoint: String, resource: &Resource) -> Result<GrpcExporter, OtlpError> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = mpsc::sync_channel(1);
        // The runtime is built and dropped on its own thread: dropping a runtime inside
        // meshlet's async start-up (if anything below failed) would panic.
        std::thread::Builder::new()
            .name("meshlet-otlp".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Spawned exports run while this waits; it returns when the exporter drops.
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| OtlpError(format!("cannot start the gRPC export thread: {e}")))?;
        // Waits for the thread's first step only (building a runtime), once at start-up.
        let runtime = handle_rx
            .recv()
            .map_err(|_| OtlpError("the gRPC export thread ended at start".into()))?
            .map_err(|e| OtlpError(format!("cannot build the gRPC export runtime: {e}")))?;
        let mut inner = {
            // Tonic's lazy channel spawns its connection worker onto the current runtime.
            let _on_export_runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| OtlpError(e.to_string()))?
        };
        // The provider hands the processor its resource too (see `set_resource` below);
        // setting it here first keeps `service.name` right whatever the order.
        inner.set_resource(resource);
        Ok(GrpcExporter {
            inner: Arc::new(inner),
            runtime,
            _stop: stop,
        })
    }
}

impl SpanExporter for GrpcExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        // The processor's thread polls the join handle (with its own `block_on`); the
        // export itself, tonic and its timers run on the dedicated runtime.
        match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "OTLP/gRPC export task: {e}"
            ))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Not shared at this point: the processor calls this on its own thread between
        // exports, and a finished export task has dropped its clone. Were it shared, the
        // resource set in `new` (the same one) stays.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
