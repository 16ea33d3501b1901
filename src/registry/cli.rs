//! `meshlet registry ...`: operator commands that read and edit the Redis registry directly
//! (no running meshlet needed), by the contract of docs/registry.md.

use std::time::Duration;

use super::schema::{self, Instance, Status};
use crate::config::{Protocol, ServiceName, StaticEndpoint};
use crate::control::keys::Keys;
use crate::control::redis;

pub use crate::control::cli::CliError;

/// Where the commands act.
pub struct Target {
    conn: redis::Conn,
    keys: Keys,
}

impl Target {
    /// Connects to the registry on `redis` under key `prefix`.
    pub async fn connect(redis: &redis::Target, prefix: &str) -> Result<Target, CliError> {
        Ok(Target {
            conn: redis.connect(redis::REDIS_IO_TIMEOUT).await?,
            keys: Keys::new(prefix),
        })
    }
}

/// What `registry register` writes.
pub struct NewInstance {
    /// Service name.
    pub service: String,
    /// `host:port` (or `h2://host:port`) others dial.
    pub address: String,
    /// Instance id (default: service-host-port).
    pub id: Option<String>,
    /// `http1` or `h2` (default: from the address).
    pub protocol: Option<String>,
    /// Version string.
    pub version: String,
    /// Time to live.
    pub ttl: Duration,
}

/// `registry list [--service S] [--all]`: services and their instances, one line each.
pub async fn list(target: &mut Target, service: Option<String>, all: bool) -> Result<(), CliError> {
    let mut names = match service {
        Some(s) => vec![s],
        None => schema::service_names(&mut target.conn, &target.keys).await?,
    };
    names.sort();
    let found = schema::read_services(&mut target.conn, &target.keys, &names, all).await?;
    let now = schema::now_ms();
    for (service, instances) in found {
        println!("{service}");
        for i in instances {
            let left = i.expires_at.map_or(0, |e| e.saturating_sub(now) / 1000);
            println!(
                "  {:<32} {:<22} {:<8} {:<5} expires in {left}s",
                i.id,
                i.authority(),
                i.status.as_str(),
                i.protocol.as_str()
            );
        }
    }
    Ok(())
}

/// `registry register ...`: registers an instance once; it expires after its ttl.
pub async fn register(target: &mut Target, new: NewInstance) -> Result<(), CliError> {
    let endpoint: StaticEndpoint = new.address.parse().map_err(CliError::Input)?;
    let protocol = match new.protocol.as_deref() {
        None => endpoint.protocol,
        Some("http1") => Protocol::Http1,
        Some("h2") => Protocol::H2,
        Some(other) => {
            return Err(CliError::Input(format!(
                "--protocol: expected http1 or h2, got `{other}`"
            )))
        }
    };
    ServiceName::parse(&new.service).map_err(CliError::Input)?;
    let now = schema::now_ms();
    let service = new.service;
    let id = match new.id {
        Some(id) if super::hygiene::valid_name(&id) => id,
        Some(id) => {
            return Err(CliError::Input(format!(
                "--id: invalid instance id `{id}`: use 1-128 of A-Z a-z 0-9 . _ - (watchers ignore other ids)"
            )))
        }
        // An IPv6 host's `:` is outside the id alphabet.
        None => format!("{service}-{}-{}", endpoint.host.replace(':', "-"), endpoint.port),
    };
    if !super::hygiene::valid_name(&id) {
        return Err(CliError::Input(format!(
            "the default id `{id}` is not 1-128 of A-Z a-z 0-9 . _ -: pass --id"
        )));
    }
    let instance = Instance {
        id: id.clone(),
        host: endpoint.host,
        port: endpoint.port,
        version: new.version,
        status: Status::Up,
        protocol,
        metadata: serde_json::json!({}),
        registered_at: now,
        last_heartbeat: now,
        expires_at: None,
    };
    schema::register(
        &mut target.conn,
        &target.keys,
        &service,
        &instance,
        new.ttl,
        true,
    )
    .await?;
    println!(
        "registered {service}/{id} at {} for {:?}",
        instance.authority(),
        new.ttl
    );
    Ok(())
}

/// `registry deregister --service S --id ID`.
pub async fn deregister(target: &mut Target, service: &str, id: &str) -> Result<(), CliError> {
    schema::deregister(&mut target.conn, &target.keys, service, id).await?;
    println!("deregistered {service}/{id}");
    Ok(())
}
