//! Process lifecycle of the real binary: graceful exit on SIGTERM, and the
//! drain grace period bounding how long open connections keep it alive.

use std::time::Duration;

use crate::capture::client_and_server;
use crate::netns::{eventually, require_root_and, Host, READY_TIMEOUT};
use crate::sidecar::{Options, Sidecar, DRAIN_GRACE};

/// Scheduling slack for exit-time assertions on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(5);

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn the_proxy_exits_cleanly_on_sigterm() {
    require_root_and(&["curl"]);
    let pod = Host::new("pod");
    let mut proxy = Sidecar::start(&pod, "[]", Options::default());

    let (status, took) = proxy.terminate(SLACK);

    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        proxy.process().log()
    );
    assert!(
        took < DRAIN_GRACE,
        "an idle proxy must not wait out the grace period; took {took:?}"
    );
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn a_connection_open_at_sigterm_is_cut_after_the_drain_grace_period() {
    let mut pods = client_and_server();
    // An idle passthrough connection that never ends by itself; `exec`
    // keeps the socket open in the same PID, which the guard kills.
    let _idle = pods.client.spawn(
        "bash",
        &["-c", "exec 3<>/dev/tcp/198.18.0.2/8000 && exec sleep 60"],
    );
    eventually(
        "the server sees the proxied connection",
        READY_TIMEOUT,
        || {
            let out = pods
                .server
                .run("ss", &["-Htn", "state", "established", "( sport = :8000 )"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("198.18.0.1:") {
                Ok(())
            } else {
                Err(format!("ss shows: {text:?}"))
            }
        },
    );

    let (status, took) = pods.proxy.terminate(SLACK);

    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        pods.proxy.process().log()
    );
    assert!(
        took >= DRAIN_GRACE,
        "the open connection must hold the exit until the grace period ends; took {took:?}"
    );
}
