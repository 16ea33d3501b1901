//! Static registry entries from `registry.static`: the embedded default when no Redis is
//! configured, and extra endpoints beside Redis otherwise. They never expire.

use std::collections::BTreeMap;

use super::schema::{Instance, Status};
use crate::config::RegistryConfig;

/// The config's static entries as instances with ids `static:host:port`.
pub fn static_instances(registry: &RegistryConfig) -> BTreeMap<String, Vec<Instance>> {
    registry
        .static_endpoints
        .iter()
        .map(|(service, endpoints)| {
            let instances = endpoints
                .iter()
                .map(|e| {
                    let e = &e.0;
                    Instance {
                        id: format!("static:{}:{}", e.host, e.port),
                        host: e.host.clone(),
                        port: e.port,
                        version: String::new(),
                        status: Status::Up,
                        protocol: e.protocol,
                        metadata: serde_json::Value::Object(Default::default()),
                        registered_at: 0,
                        last_heartbeat: 0,
                        expires_at: None,
                    }
                })
                .collect();
            (service.clone(), instances)
        })
        .collect()
}
