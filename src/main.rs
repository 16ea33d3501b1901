//! The `meshlet` command line: parses arguments and calls the library (`Sidecar`, the
//! registry and events CLIs, the operator commands). No logic of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meshlet::config::{Dur, LoadedConfig};
use meshlet::control::redis::Target as RedisTarget;
use meshlet::operator;
use meshlet::sidecar::Sidecar;
use meshlet::telemetry::logging::{self, LogFormat};

mod allocator;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// meshlet: a small sidecar proxy for service-to-service calls.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format (default: json for `run`, pretty otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(ConfigArg),
    /// Validate a config file; on error print file:line:column, the field and what was expected.
    /// Risky but valid settings print `warning: <field>: <why>` (exit 0; 2 with --strict).
    Check(CheckArgs),
    /// Run the embedded demo: meshlet on the static registry plus a demo upstream.
    /// Then: curl -x http://127.0.0.1:15001 http://demo/
    Demo,
    /// Inspect or edit the Redis registry.
    Registry {
        #[command(flatten)]
        target: RegistryTarget,
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Publish, tail and replay events on Redis Streams (docs/events.md).
    Events {
        #[command(flatten)]
        target: RegistryTarget,
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Per-destination traffic of the running meshlet (GET /v1/stats): rps, success, p50/p99,
    /// breaker, endpoints. Redraws every second on a terminal; prints once when piped.
    Stat(StatArgs),
    /// Print each request the running meshlet answers, live (GET /v1/tap), until Ctrl-C.
    Tap(TapArgs),
    /// Check this pod's meshlet: config, listeners, Redis, registration, app health, clock.
    /// Exit 0 when no check failed, 1 when one did.
    Doctor(DoctorArgs),
}

#[derive(Args)]
struct ApiArg {
    /// The running meshlet's local API (listen.api), ip:port.
    #[arg(long, default_value = meshlet::operator::DEFAULT_API)]
    api: SocketAddr,
}

#[derive(Args)]
struct StatArgs {
    #[command(flatten)]
    api: ApiArg,
    /// Print once and exit, even on a terminal.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct TapArgs {
    #[command(flatten)]
    api: ApiArg,
    /// Only requests to or from this destination.
    #[arg(long)]
    service: Option<String>,
    /// At most this many lines per second (the meshlet's default: 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(meshlet::operator::tap::MAX_RATE)))]
    rate: Option<u32>,
}

#[derive(Args)]
struct DoctorArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The local API to ask (default: the config's listen.api), ip:port.
    #[arg(long)]
    api: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum EventsAction {
    /// Publish one event; prints {"event_id","stream_id","duplicate"}.
    Publish {
        /// Event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// The payload: one JSON document.
        json: String,
        /// Event id (default: a UUIDv7); a repeat inside the dedupe window is stored once.
        #[arg(long)]
        id: Option<String>,
        /// Event version.
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// Source recorded with the event (default: the config's service.name, else "cli").
        #[arg(long)]
        source: Option<String>,
    },
    /// Print events of TYPE as they are published (takes nothing from subscribers).
    Tail {
        /// Event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// Start after this stream id (0 = from the oldest); default: new events only.
        #[arg(long)]
        from: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Inspect or replay dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters of TYPE, oldest first.
    List {
        /// Event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// Only entries after this DLQ id.
        #[arg(long)]
        after: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Re-publish dead letters of TYPE to its stream (all, or the --id ones), keeping event ids.
    Replay {
        /// Event type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// DLQ ids to replay (repeatable); default: all.
        #[arg(long = "id")]
        ids: Vec<String>,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Config file.
    #[arg(long, short, env = "MESHLET_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Treat warnings as errors (exit non-zero when there is any).
    #[arg(long)]
    strict: bool,
}

#[derive(Args)]
struct RegistryTarget {
    /// Take registry.redis and registry.prefix from this config file.
    #[arg(long, short, env = "MESHLET_CONFIG")]
    config: Option<PathBuf>,
    /// Redis URL (overrides the config's).
    #[arg(long)]
    redis: Option<String>,
    /// Key prefix (overrides the config's).
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(Subcommand)]
enum RegistryAction {
    /// List services and their instances.
    List {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Include expired members too.
        #[arg(long)]
        all: bool,
    },
    /// Register an instance once (it expires after --ttl unless refreshed).
    Register {
        /// Service name.
        #[arg(long)]
        service: String,
        /// host:port others dial.
        #[arg(long)]
        address: String,
        /// Instance id (default: service-host-port).
        #[arg(long)]
        id: Option<String>,
        /// http1 or h2 (default: from an `h2://` address, else http1).
        #[arg(long)]
        protocol: Option<String>,
        /// Version string.
        #[arg(long, default_value = "")]
        version: String,
        /// Time to live.
        #[arg(long, default_value = "30s")]
        ttl: Dur,
    },
    /// Remove an instance.
    Deregister {
        /// Service name.
        #[arg(long)]
        service: String,
        /// Instance id.
        #[arg(long)]
        id: String,
    },
}

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    let default_format = match cli.command {
        Command::Run(_) => LogFormat::Json,
        _ => LogFormat::Pretty,
    };
    // Dropped on every return below: writes out the buffered log lines.
    let _logs = logging::init(cli.log_format.unwrap_or(default_format));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshlet: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Check(arg) => check(&arg.config.config, arg.strict),
        Command::Run(arg) => runtime.block_on(run(&arg.config)),
        Command::Demo => runtime.block_on(demo()),
        Command::Registry { target, action } => runtime.block_on(registry(target, action)),
        Command::Events { target, action } => runtime.block_on(events(target, action)),
        Command::Stat(a) => {
            let done = runtime.block_on(operator::stat::run(a.api.api, a.once));
            return operator::exit_status(done);
        }
        Command::Tap(a) => {
            let done =
                runtime.block_on(operator::tap::run(a.api.api, a.service.as_deref(), a.rate));
            return operator::exit_status(done);
        }
        Command::Doctor(a) => {
            let done = runtime.block_on(operator::doctor::run(&a.config.config, a.api));
            return operator::exit_status(done);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            logging::flush(); // the log lines first, then the reason
            eprintln!("meshlet: {message}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &Path, strict: bool) -> Result<(), String> {
    let loaded = LoadedConfig::from_file(path).map_err(|e| e.to_string())?;
    let warnings = loaded.warnings();
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if strict && !warnings.is_empty() {
        return Err(format!(
            "{}: {} warning(s), and --strict makes them errors",
            path.display(),
            warnings.len()
        ));
    }
    println!(
        "{}: ok (service {}, {} configured services, {} routes, hash {})",
        path.display(),
        loaded.config.service.name,
        loaded.config.services.len(),
        loaded.config.routes.len(),
        loaded.hash
    );
    Ok(())
}

async fn run(path: &Path) -> Result<(), String> {
    let loaded = LoadedConfig::from_file(path).map_err(|e| e.to_string())?;
    for warning in loaded.warnings() {
        tracing::warn!(field = %warning.field, "config: {}", warning.message);
    }
    let sidecar = Sidecar::start(loaded).await.map_err(|e| e.to_string())?;
    meshlet::control::signalled().await;
    sidecar.shutdown().await;
    Ok(())
}

async fn demo() -> Result<(), String> {
    let upstream_addr = meshlet::demo::DEMO_UPSTREAM
        .parse()
        .map_err(|e| format!("demo upstream address: {e}"))?;
    let upstream = tokio::spawn(meshlet::demo::serve_upstream(upstream_addr));
    let loaded = LoadedConfig::from_text(meshlet::demo::DEMO_CONFIG, "<embedded config/demo.yaml>")
        .map_err(|e| e.to_string())?;
    let sidecar = Sidecar::start(loaded).await.map_err(|e| e.to_string())?;
    let a = sidecar.addresses;
    println!(
        "\nmeshlet demo is up. Try:\n  curl -x http://{0} http://demo/hello\n  curl http://{0}/demo/hello      # path-prefix route\n  curl http://{1}/metrics\n  curl http://{2}/v1/registry\nCtrl-C to stop.\n",
        a.outbound, a.telemetry, a.api
    );
    tokio::select! {
        () = meshlet::control::signalled() => {}
        r = upstream => {
            let reason = match r {
                Ok(Err(e)) => e.to_string(),
                _ => "stopped".to_owned(),
            };
            sidecar.shutdown().await;
            return Err(format!("demo upstream on {upstream_addr}: {reason}"));
        }
    }
    sidecar.shutdown().await;
    Ok(())
}

async fn registry(target: RegistryTarget, action: RegistryAction) -> Result<(), String> {
    use meshlet::registry::cli::{self, NewInstance};
    let (redis, prefix) = registry_target(&target)?;
    let mut target = cli::Target::connect(&redis, &prefix)
        .await
        .map_err(|e| match e {
            cli::CliError::Redis(e) => format!("cannot reach redis: {e}"),
            other => other.to_string(),
        })?;
    let result = match action {
        RegistryAction::List { service, all } => cli::list(&mut target, service, all).await,
        RegistryAction::Register {
            service,
            address,
            id,
            protocol,
            version,
            ttl,
        } => {
            let new = NewInstance {
                service,
                address,
                id,
                protocol,
                version,
                ttl: ttl.get(),
            };
            cli::register(&mut target, new).await
        }
        RegistryAction::Deregister { service, id } => {
            cli::deregister(&mut target, &service, &id).await
        }
    };
    result.map_err(|e| e.to_string())
}

async fn events(target: RegistryTarget, action: EventsAction) -> Result<(), String> {
    use meshlet::events::cli;
    if let Some(done) = amqp_events(&target, &action).await {
        return done;
    }
    let (redis, prefix) = registry_target(&target)?;
    let config = match &target.config {
        Some(path) => Some(LoadedConfig::from_file(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let events = config.as_ref().map(|c| &c.config.events);
    let target = cli::Target {
        redis,
        keys: meshlet::control::keys::Keys::new(&prefix),
        retention: events.map_or(Duration::from_secs(24 * 3600), |e| e.retention.get()),
        dedupe_window: events.map_or(Duration::from_secs(24 * 3600), |e| e.dedupe_window.get()),
    };
    let result = match action {
        EventsAction::Publish {
            event_type,
            json,
            id,
            version,
            source,
        } => {
            let source = source
                .or_else(|| config.as_ref().map(|c| c.config.service.name.to_string()))
                .unwrap_or_else(|| "cli".to_owned());
            cli::publish(&target, &event_type, &json, id, version, &source).await
        }
        EventsAction::Tail {
            event_type,
            from,
            count,
        } => cli::tail(&target, &event_type, from.as_deref(), count).await,
        EventsAction::Dlq {
            action:
                DlqAction::List {
                    event_type,
                    after,
                    count,
                },
        } => cli::dlq_list(&target, &event_type, after.as_deref(), count).await,
        EventsAction::Dlq {
            action: DlqAction::Replay { event_type, ids },
        } => cli::dlq_replay(&target, &event_type, &ids).await,
    };
    result.map_err(|e| e.to_string())
}

/// `events.broker: amqp` in the config (and no `--redis`): the commands act on RabbitMQ as
/// the config's service (docs/events.md, "RabbitMQ"). `None`: they act on Redis.
async fn amqp_events(target: &RegistryTarget, action: &EventsAction) -> Option<Result<(), String>> {
    use meshlet::events::amqp::cli;
    if target.redis.is_some() {
        return None;
    }
    let loaded = match LoadedConfig::from_file(target.config.as_ref()?) {
        Ok(loaded) => loaded,
        Err(e) => return Some(Err(e.to_string())),
    };
    let amqp = match cli::AmqpTarget::of(&loaded.config) {
        Ok(Some(amqp)) => amqp,
        Ok(None) => return None,
        Err(e) => return Some(Err(e.to_string())),
    };
    let result = match action {
        EventsAction::Publish {
            event_type,
            json,
            id,
            version,
            source,
        } => {
            let source = source
                .clone()
                .unwrap_or_else(|| loaded.config.service.name.to_string());
            cli::publish(&amqp, event_type, json, id.clone(), *version, &source).await
        }
        EventsAction::Tail { .. } => {
            return Some(Err(
                "tail reads Redis Streams without taking anything; a RabbitMQ queue cannot be read that way".to_owned(),
            ))
        }
        EventsAction::Dlq {
            action:
                DlqAction::List {
                    event_type,
                    after,
                    count,
                },
        } => cli::dlq_list(&amqp, event_type, after.as_deref(), *count).await,
        EventsAction::Dlq {
            action: DlqAction::Replay { event_type, ids },
        } => cli::dlq_replay(&amqp, event_type, ids).await,
    };
    Some(result.map_err(|e| e.to_string()))
}

/// The Redis of `--redis URL`, else of the config's `registry` (one server, Sentinel or
/// Cluster), and the key prefix.
fn registry_target(target: &RegistryTarget) -> Result<(RedisTarget, String), String> {
    let loaded = match &target.config {
        Some(path) if target.redis.is_none() || target.prefix.is_none() => {
            Some(LoadedConfig::from_file(path).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let from_config = loaded.as_ref().map(|l| &l.config.registry);
    let redis = match (&target.redis, from_config.and_then(|r| r.store())) {
        (Some(url), _) => RedisTarget::server(url).map_err(|e| format!("--redis: {e}"))?,
        (None, Some(store)) => RedisTarget::new(store).map_err(|e| format!("registry: {e}"))?,
        (None, None) => {
            return Err(
                "no Redis: pass --redis URL or a --config with registry.redis, \
                 registry.sentinel or registry.cluster"
                    .into(),
            )
        }
    };
    let prefix = target
        .prefix
        .clone()
        .or_else(|| from_config.map(|r| r.prefix.to_string()))
        .unwrap_or_else(|| "mesh".to_owned());
    Ok((redis, prefix))
}
