//! The `strait` binary as a pod's sidecar inside a [`Host`]: its config
//! file, the pod's iptables capture rules, readiness, and metrics.
//!
//! The capture rules follow Istio's model: the proxy runs as uid
//! [`PROXY_UID`], and every other TCP connection leaving the pod, except to
//! loopback, is redirected to the outbound listener. They are written with
//! `iptables` here; when `strait init` is built, a scenario should install
//! them with it instead and this helper should check they match.
//! Unit-level behaviour belongs in `tests/*.rs` on 127.0.0.1, not here.

// Scenario files share this harness; not every scenario uses every helper.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::netns::{eventually, Host, OutputExt, Process, READY_TIMEOUT};

/// The uid and gid the sidecar runs as (Istio's 1337).
pub const PROXY_UID: u32 = 1337;
/// Admin listener inside the pod (loopback, so never captured).
pub const ADMIN: &str = "127.0.0.1:15000";
/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Drain grace period written into every config.
pub const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// Installs the pod's outbound capture in `host`'s nat table:
///
/// ```text
/// -N STRAIT_OUTPUT
/// -A OUTPUT -p tcp -j STRAIT_OUTPUT
/// -A STRAIT_OUTPUT -m owner --uid-owner 1337 -j RETURN   # the proxy's own upstream connections
/// -A STRAIT_OUTPUT -d 127.0.0.1/32 -j RETURN             # loopback (admin calls, the app's own ports)
/// -A STRAIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
/// ```
pub fn install_capture(host: &Host) {
    host.iptables("-t nat -N STRAIT_OUTPUT");
    host.iptables("-t nat -A OUTPUT -p tcp -j STRAIT_OUTPUT");
    host.iptables(&format!(
        "-t nat -A STRAIT_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN"
    ));
    host.iptables("-t nat -A STRAIT_OUTPUT -d 127.0.0.1/32 -j RETURN");
    host.iptables(&format!(
        "-t nat -A STRAIT_OUTPUT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"
    ));
}

/// Options for [`Sidecar::start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Run as [`PROXY_UID`] (required when capture is installed, or the
    /// proxy's own upstream connections would be redirected back to it).
    pub as_proxy_uid: bool,
    /// Extra top-level YAML appended to the config (`outbound: {...}`,
    /// `dns: {...}`); it must not repeat the keys [`Sidecar::start`] writes
    /// (`node`, `listeners`, `runtime`, `log`, `mesh`).
    pub extra_yaml: String,
    /// The `node:` mapping's contents. Default `cluster: cluster-1`.
    pub node: String,
    /// Extra `listeners:` entries (`mesh: ...`, `inbound: ...`), comma-led.
    pub extra_listeners: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            as_proxy_uid: true,
            extra_yaml: String::new(),
            node: "cluster: cluster-1".to_owned(),
            extra_listeners: String::new(),
        }
    }
}

/// A running `strait proxy` inside a host, ready when returned.
#[derive(Debug)]
pub struct Sidecar {
    host: Host,
    process: Process,
    config: PathBuf,
}

// === impl Sidecar ===

impl Sidecar {
    /// Writes a config whose `mesh:` list is `mesh_yaml` (a YAML sequence,
    /// not indented), starts the binary, and waits for `/ready`.
    pub fn start(host: &Host, mesh_yaml: &str, opts: Options) -> Sidecar {
        let config = format!(
            "node: {{ {} }}\n\
             listeners: {{ admin: \"{ADMIN}\", outbound: \"127.0.0.1:{OUTBOUND_PORT}\", serviceVips: false{} }}\n\
             runtime: {{ drainGracePeriod: {}s }}\n\
             log: {{ format: json, level: \"info,strait=debug\", accessLog: true }}\n\
             {}\n\
             mesh:\n{}",
            opts.node,
            opts.extra_listeners,
            DRAIN_GRACE.as_secs(),
            opts.extra_yaml,
            indent(mesh_yaml),
        );
        let config = host.write_file("strait/strait.yaml", &config);
        let bin = proxy_binary(host);
        let bin = bin.to_str().expect("utf-8 path");
        let cfg = config.to_str().expect("utf-8 path");
        let args = ["proxy", "--config", cfg];
        let mut process = if opts.as_proxy_uid {
            host.spawn_as(PROXY_UID, PROXY_UID, bin, &args)
        } else {
            host.spawn(bin, &args)
        };
        let what = format!("[{}] strait /ready", host.label());
        eventually(&what, READY_TIMEOUT, || {
            process.assert_running();
            let out = host.curl(&format!("http://{ADMIN}/ready"), &["-f", "--max-time", "1"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(out.describe())
            }
        });
        Sidecar {
            host: host.clone(),
            process,
            config,
        }
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// The config file (in the host's temp dir), for reload scenarios.
    pub fn config_path(&self) -> &PathBuf {
        &self.config
    }

    /// GET `path` on the admin listener; fails the test unless it answers 2xx.
    pub fn admin_get(&self, path: &str) -> String {
        let out = self
            .host
            .curl(&format!("http://{ADMIN}{path}"), &["-f", "--max-time", "5"]);
        assert!(out.status.success(), "GET {path}: {}", out.describe());
        out.stdout_str()
    }

    /// Sum of the samples of `name` whose labels include every `labels`
    /// pair (0 when there are none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_samples(&self.admin_get("/metrics"), name, labels)
    }

    /// SIGTERM by PID, then waits for the exit (at most the drain grace
    /// period plus `slack`) and returns the status and how long it took.
    pub fn terminate(&mut self, slack: Duration) -> (ExitStatus, Duration) {
        let start = std::time::Instant::now();
        self.process.signal("TERM");
        let status = self.process.wait_exit(DRAIN_GRACE + slack);
        (status, start.elapsed())
    }
}

/// The `strait` binary, copied into the host's temp dir with mode 0755: the
/// build directory may sit under a home directory the proxy uid cannot enter
/// (a CI clone in /root, mode 0700).
fn proxy_binary(host: &Host) -> PathBuf {
    let dst = host.dir().join("strait/strait");
    if !dst.exists() {
        fs::copy(env!("CARGO_BIN_EXE_strait"), &dst).expect("copy the strait binary");
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).expect("chmod the binary");
    }
    dst
}

fn indent(yaml: &str) -> String {
    yaml.lines().map(|l| format!("  {l}\n")).collect()
}

/// Parses Prometheus text: sums `name{...}` samples carrying every label pair.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has_all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            has_all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_matching_labels() {
        let text = "# HELP x y\n\
            strait_requests_total{code=\"200\",service=\"httpbin\"} 2\n\
            strait_requests_total{code=\"502\",service=\"httpbin\"} 1\n\
            strait_requests_total{code=\"200\",service=\"other\"} 7\n\
            strait_up 1\n";
        assert_eq!(
            sum_samples(text, "strait_requests_total", &[("service", "httpbin")]),
            3.0
        );
        assert_eq!(
            sum_samples(
                text,
                "strait_requests_total",
                &[("service", "httpbin"), ("code", "200")]
            ),
            2.0
        );
        assert_eq!(sum_samples(text, "strait_up", &[]), 1.0);
        assert_eq!(sum_samples(text, "strait_missing", &[]), 0.0);
    }
}
