//! Overrides of config values from the environment (the Kubernetes downward
//! API sets these in an injected pod). Behind a trait so tests pass a map and
//! never touch the process environment.

use std::collections::HashMap;

use super::Config;

/// A source of `STRAIT_*` override values.
pub trait Overrides {
    fn get(&self, key: &str) -> Option<String>;
}

/// Reads overrides from the process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvOverrides;

impl Overrides for EnvOverrides {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

/// Overrides from a fixed map; for tests and embedding.
#[derive(Debug, Clone, Default)]
pub struct MapOverrides(pub HashMap<String, String>);

impl Overrides for MapOverrides {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// The keys Strait reads, and the field each one sets.
pub(crate) const KEYS: &[(&str, &str)] = &[
    ("STRAIT_CLUSTER", "node.cluster"),
    ("STRAIT_NAMESPACE", "node.namespace"),
    ("STRAIT_SERVICE_ACCOUNT", "node.serviceAccount"),
    ("STRAIT_LOG", "log.level"),
];

pub(crate) fn apply(config: &mut Config, overrides: &dyn Overrides) {
    for (key, _) in KEYS {
        let Some(value) = overrides.get(key) else {
            continue;
        };
        let field = match *key {
            "STRAIT_CLUSTER" => &mut config.node.cluster,
            "STRAIT_NAMESPACE" => &mut config.node.namespace,
            "STRAIT_SERVICE_ACCOUNT" => &mut config.node.service_account,
            _ => &mut config.log.level,
        };
        *field = value;
    }
}
