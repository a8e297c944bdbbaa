//! Settings of cross-cluster balancing, health checking and retries
//! (`balance:` in the config file). All reloadable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problem;

/// Health, failover and retry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Balance {
    /// A FailOver service returns to its local cluster only after the local
    /// cluster has stayed healthy this long. Default `5s`.
    #[serde(default = "default_hold_down", with = "humantime_serde")]
    pub fail_back_hold_down: Duration,
    /// How often endpoints of services whose policy spans clusters
    /// (ActiveActive, FailOver) get an active TCP probe. Default `1s`.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// A probe that has not connected within this time fails. Default `500ms`.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Retries of failed requests.
    #[serde(default)]
    pub retries: Retries,
}

/// When and how often a failed request is tried again (on another endpoint,
/// and another cluster where the policy allows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Attempts per request, the first included; `1` disables retries. Default `3`.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Retries may add at most this percentage to the request rate. Default `20`.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: f32,
    /// Retries always allowed per second, whatever the ratio. Default `10`.
    #[serde(default = "default_budget_min")]
    pub budget_min_per_second: u32,
    /// Request bodies up to this size (with a known length) are kept so an
    /// idempotent request can be sent again. Bytes. Default `65536`.
    #[serde(default = "default_replay")]
    pub max_replay_bytes: usize,
}

fn default_hold_down() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_attempts() -> u32 {
    3
}
fn default_budget_percent() -> f32 {
    20.0
}
fn default_budget_min() -> u32 {
    10
}
fn default_replay() -> usize {
    64 * 1024
}

impl Default for Balance {
    fn default() -> Self {
        Self {
            fail_back_hold_down: default_hold_down(),
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            retries: Retries::default(),
        }
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            budget_percent: default_budget_percent(),
            budget_min_per_second: default_budget_min(),
            max_replay_bytes: default_replay(),
        }
    }
}

impl Balance {
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.probe_interval < Duration::from_millis(100) {
            problems.push(Problem::new(
                "balance.probeInterval",
                "must be at least 100ms",
            ));
        }
        if self.probe_timeout.is_zero() || self.probe_timeout > self.probe_interval {
            problems.push(Problem::new(
                "balance.probeTimeout",
                "must be greater than 0 and at most balance.probeInterval",
            ));
        }
        let r = &self.retries;
        if r.max_attempts == 0 || r.max_attempts > 10 {
            problems.push(Problem::new(
                "balance.retries.maxAttempts",
                format!("{} is out of range (1..=10)", r.max_attempts),
            ));
        }
        if !(0.0..=1000.0).contains(&r.budget_percent) {
            problems.push(Problem::new(
                "balance.retries.budgetPercent",
                format!("{} is out of range (0..=1000)", r.budget_percent),
            ));
        }
        if r.budget_min_per_second > 1_000_000 {
            problems.push(Problem::new(
                "balance.retries.budgetMinPerSecond",
                format!("{} is too large (at most 1000000)", r.budget_min_per_second),
            ));
        }
        if r.max_replay_bytes > 16 * 1024 * 1024 {
            problems.push(Problem::new(
                "balance.retries.maxReplayBytes",
                format!("{} is too large (at most 16 MiB)", r.max_replay_bytes),
            ));
        }
    }
}
