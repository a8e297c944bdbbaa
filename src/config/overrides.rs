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
    ("STRAIT_MODE", "mode"),
];

pub(crate) fn apply(config: &mut Config, overrides: &dyn Overrides) {
    for (key, _) in KEYS {
        let Some(value) = overrides.get(key) else {
            continue;
        };
        if *key == "STRAIT_MODE" {
            match value.as_str() {
                "sidecar" => config.mode = super::Mode::Sidecar,
                "gateway" => config.mode = super::Mode::Gateway,
                // Left for validation to name: the file's value stays.
                _ => tracing::warn!(value, "STRAIT_MODE is not sidecar or gateway; ignored"),
            }
            continue;
        }
        let field = match *key {
            "STRAIT_CLUSTER" => &mut config.node.cluster,
            "STRAIT_NAMESPACE" => &mut config.node.namespace,
            "STRAIT_SERVICE_ACCOUNT" => &mut config.node.service_account,
            _ => &mut config.log.level,
        };
        *field = value;
    }
}

/// Other overrides with a fixed `STRAIT_MODE` (from `strait proxy --mode`).
#[derive(Debug, Clone)]
pub struct ModeOverride<O> {
    pub inner: O,
    pub mode: Option<&'static str>,
}

impl<O: Overrides> Overrides for ModeOverride<O> {
    fn get(&self, key: &str) -> Option<String> {
        match (key, self.mode) {
            ("STRAIT_MODE", Some(mode)) => Some(mode.to_owned()),
            _ => self.inner.get(key),
        }
    }
}
