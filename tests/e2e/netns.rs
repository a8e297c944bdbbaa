//! The end-to-end harness: hosts are Linux network namespaces, joined by veth
//! pairs, running real processes (the `strait` binary, python3, curl, dig).
//!
//! It needs root, `ip` (iproute2), `iptables`, `setpriv` (util-linux), `ss`
//! and `kill` (procps); `.ci/run` installs them. It deliberately knows
//! nothing about strait: proxy-specific helpers live in `sidecar.rs`.
//!
//! Rules every scenario gets for free:
//! - A [`Host`] is a namespace named `st-<pid>-<n>` with loopback up and its
//!   own temp directory (mode 0755, readable by the proxy's uid). Its
//!   interfaces are created inside it (`eth0`, `eth1`, ...), never in the
//!   root namespace, so parallel runs cannot collide. Dropping the last
//!   handle kills what still runs inside by PID and deletes the namespace,
//!   which destroys its veths.
//! - Addresses must be in 198.18.0.0/15 (RFC 2544 benchmarking space):
//!   [`link`] and [`Host::route`] refuse anything else.
//! - Every command is bounded: [`Host::run`] kills by PID on timeout, and
//!   every wait goes through [`eventually`], which polls a real condition.
//! - A [`Process`] from [`Host::spawn`] logs to its own file, is killed by
//!   PID when dropped, and prints its log if the test is failing.
//!
//! Beware of capture: in a namespace with the sidecar's iptables rules, a
//! TCP connect to any non-loopback address is accepted by the proxy, so a
//! connect-based probe from there proves nothing. [`Host::wait_listening`]
//! asks `ss` on the host that owns the socket instead (and covers UDP).
//!
//! ```ignore
//! let (client, server) = (Host::new("client"), Host::new("server"));
//! link(&client, "198.18.0.1/30", &server, "198.18.0.2/30");
//! let _web = server.spawn("python3", &["-m", "http.server", "8000", "--bind", "198.18.0.2"]);
//! server.wait_listening(Proto::Tcp, "198.18.0.2:8000");
//! let out = client.run("curl", &["-sS", "http://198.18.0.2:8000/"]);
//! assert!(out.status.success(), "{}", out.describe());
//! ```

// Scenario files share this harness; not every scenario uses every helper.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for one command run with [`Host::run`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Default bound for a readiness wait.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval of [`eventually`].
const POLL: Duration = Duration::from_millis(50);

/// Fails the test at once, naming what is missing, unless it runs as root
/// with every tool in `tools` on `PATH`. Call it first in every scenario.
pub fn require_root_and(tools: &[&str]) {
    let uid = run_command(Command::new("id").arg("-u"), COMMAND_TIMEOUT);
    assert_eq!(
        uid.stdout_str().trim(),
        "0",
        "e2e tests need root (network namespaces, iptables); run them with .ci/run"
    );
    for tool in ["ip", "ss", "kill", "setpriv"].iter().chain(tools) {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "e2e tests need `{tool}` on PATH; .ci/run installs it"
        );
    }
}

/// Retries `probe` every 50 ms until it returns `Ok`, for at most `timeout`;
/// then fails the test with `what`, the number of attempts and the last error.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match probe() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!(
                    "{what}: still not true after {attempts} attempts in {timeout:?}; last: {last}"
                )
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Transport protocol, for [`Host::wait_listening`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A network namespace with its own temp directory. Cheap to clone; the
/// namespace is deleted when the last clone (including those held by
/// [`Process`]es running in it) is dropped.
#[derive(Debug, Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    label: String,
    dir: tempfile::TempDir,
    next_if: AtomicU32,
}

// === impl Host ===

impl Host {
    /// Creates the namespace `st-<pid>-<n>` with loopback up. `label` names
    /// it in messages and logs (`client`, `server`, ...).
    pub fn new(label: &str) -> Host {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "st-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A namespace left by an earlier process with the same pid (after a
        // SIGKILL) would make `add` fail; it is ours by name, so remove it.
        if Path::new("/run/netns").join(&name).exists() {
            ip(&["netns", "delete", &name]);
        }
        ip(&["netns", "add", &name]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-{label}-"))
            .tempdir()
            .expect("create the host's temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("make the host's temp dir readable to the proxy uid");
        let host = Host {
            inner: Arc::new(Inner {
                name,
                label: label.to_owned(),
                dir,
                next_if: AtomicU32::new(0),
            }),
        };
        host.run_ok("ip", &["link", "set", "lo", "up"]);
        host
    }

    /// The namespace name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// This host's temp directory (0755), deleted with the host.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// Writes `contents` to `dir()/rel` (creating parents), mode 0644, and
    /// returns the absolute path.
    pub fn write_file(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.dir().join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent directories");
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755))
                .expect("chmod parent directory");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
        path
    }

    /// A command that runs `program args` inside this namespace
    /// (`ip netns exec NAME program args`; `ip` execs, so the child's PID
    /// is the program's own). The test's own `STRAIT_*` variables are not
    /// passed on, so a developer's shell cannot change a scenario.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(), program]).args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STRAIT_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs to completion (at most [`COMMAND_TIMEOUT`]) and returns the
    /// output, whatever the exit status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run_command(&mut self.command(program, args), COMMAND_TIMEOUT)
    }

    /// Like [`Host::run`], but fails the test unless the command succeeds;
    /// returns stdout.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "[{}] {program} {args:?} failed: {}",
            self.label(),
            out.describe()
        );
        out.stdout_str()
    }

    /// Starts `program args` in the background inside this namespace, as root.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Process {
        Process::start(self, program, self.command(program, args))
    }

    /// Starts `program args` inside this namespace as `uid`/`gid` with no
    /// supplementary groups (how a sidecar runs, so iptables can tell its
    /// traffic from the app's with `-m owner --uid-owner`).
    pub fn spawn_as(&self, uid: u32, gid: u32, program: &str, args: &[&str]) -> Process {
        let reuid = format!("--reuid={uid}");
        let regid = format!("--regid={gid}");
        let mut all = vec![reuid.as_str(), regid.as_str(), "--clear-groups", program];
        all.extend_from_slice(args);
        Process::start(self, program, self.command("setpriv", &all))
    }

    /// `ip route add DST via VIA`; both must be in 198.18.0.0/15.
    pub fn route(&self, dst_cidr: &str, via: &str) {
        let (dst, _) = parse_cidr(dst_cidr);
        assert_test_net(dst);
        assert_test_net(via.parse().expect("gateway is an IPv4 address"));
        self.run_ok("ip", &["route", "add", dst_cidr, "via", via]);
    }

    /// `iptables RULE` in this namespace, the rule split on whitespace
    /// (`"-t nat -A OUTPUT -p tcp -j RETURN"`); fails the test if it fails.
    pub fn iptables(&self, rule: &str) {
        let args: Vec<&str> = rule.split_whitespace().collect();
        self.run_ok("iptables", &args);
    }

    /// Waits until a socket of `proto` listens on `addr` (or the wildcard
    /// address with the same port) in this namespace, according to `ss`.
    pub fn wait_listening(&self, proto: Proto, addr: &str) {
        let want: SocketAddr = addr.parse().expect("a socket address");
        let flags = match proto {
            Proto::Tcp => "-Hltn",
            Proto::Udp => "-Hlun",
        };
        let what = format!("[{}] {proto:?} listener on {want}", self.label());
        eventually(&what, READY_TIMEOUT, || {
            let out = self.run("ss", &[flags]);
            let text = out.stdout_str();
            if text.lines().any(|l| listens_on(l, want)) {
                Ok(())
            } else {
                Err(format!("ss shows:\n{text}"))
            }
        });
    }

    /// `curl -sS --max-time 10 --noproxy '*' ARGS... URL` from this host,
    /// as root (a CI `http_proxy` must not take the request elsewhere).
    pub fn curl(&self, url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["-sS", "--max-time", "10", "--noproxy", "*"];
        args.extend_from_slice(extra);
        args.push(url);
        self.run("curl", &args)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Anything still running inside was started by this test (directly
        // or as a grandchild): kill it by PID before deleting the namespace.
        let pids = run_command(
            Command::new("ip").args(["netns", "pids", &self.name]),
            COMMAND_TIMEOUT,
        );
        for pid in pids.stdout_str().split_whitespace() {
            let _ = run_command(Command::new("kill").args(["-KILL", pid]), COMMAND_TIMEOUT);
        }
        let out = run_command(
            Command::new("ip").args(["netns", "delete", &self.name]),
            COMMAND_TIMEOUT,
        );
        if !out.status.success() {
            eprintln!(
                "warning: cannot delete netns {}: {}",
                self.name,
                out.describe()
            );
        }
    }
}

/// Joins `a` and `b` with a veth pair created directly inside both
/// namespaces, assigns the addresses (CIDR, in 198.18.0.0/15) and brings
/// both ends up. Returns the interface names in `a` and in `b`.
pub fn link(a: &Host, a_cidr: &str, b: &Host, b_cidr: &str) -> (String, String) {
    for cidr in [a_cidr, b_cidr] {
        assert_test_net(parse_cidr(cidr).0);
    }
    let if_a = format!("eth{}", a.inner.next_if.fetch_add(1, Ordering::Relaxed));
    let if_b = format!("eth{}", b.inner.next_if.fetch_add(1, Ordering::Relaxed));
    ip(&[
        "link",
        "add",
        &if_a,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &if_b,
        "netns",
        b.name(),
    ]);
    for (host, ifname, cidr) in [(a, &if_a, a_cidr), (b, &if_b, b_cidr)] {
        host.run_ok("ip", &["addr", "add", cidr, "dev", ifname]);
        host.run_ok("ip", &["link", "set", ifname, "up"]);
    }
    (if_a, if_b)
}

/// A background process inside a [`Host`]. Killed by PID (SIGKILL) on drop
/// unless it already exited; its combined stdout and stderr go to a log
/// file that is printed if the test is failing.
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    log: tempfile::NamedTempFile,
    status: Option<ExitStatus>,
    // Keeps the namespace alive until the process is gone.
    _host: Host,
}

// === impl Process ===

impl Process {
    fn start(host: &Host, program: &str, mut cmd: Command) -> Process {
        let log = tempfile::Builder::new()
            .prefix(&format!("{}-{}-", host.name(), host.label()))
            .suffix(".log")
            .tempfile()
            .expect("create a log file");
        let out = log.reopen().expect("open the log for stdout");
        let err = out.try_clone().expect("open the log for stderr");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Process {
            child,
            label: format!("{}/{}", host.label(), base_name(program)),
            log,
            status: None,
            _host: host.clone(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`, ...) to this process by PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let out = run_command(
            Command::new("kill").args(["-s", signal, &pid]),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "kill -s {signal} {pid} ({}): {}",
            self.label,
            out.describe()
        );
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit; fails the test otherwise.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} (pid {}) exits", self.label, self.pid());
        eventually(&what, timeout, || {
            self.try_status().ok_or_else(|| "still running".to_owned())
        })
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Fails the test, with the log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!(
                "{} exited early with {status}; log:\n{}",
                self.label,
                self.log()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "----- log of {} (pid {}) -----\n{}----- end of log -----",
                self.label,
                self.pid(),
                self.log()
            );
        }
    }
}

/// Small conveniences for reading a finished command.
pub trait OutputExt {
    fn stdout_str(&self) -> String;
    /// Exit status, stdout and stderr, for assertion messages.
    fn describe(&self) -> String;
}

impl OutputExt for Output {
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

fn base_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// Runs `ip ARGS` in the root namespace; fails the test if it fails.
fn ip(args: &[&str]) {
    let out = run_command(Command::new("ip").args(args), COMMAND_TIMEOUT);
    assert!(out.status.success(), "ip {args:?}: {}", out.describe());
}

/// Runs a command to completion with a deadline. On timeout the child is
/// killed by PID and the test fails. Output is read on helper threads so a
/// chatty command cannot block on a full pipe.
fn run_command(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    // A grandchild that kept the pipe open must not hang the test either.
    let rest = Duration::from_secs(2);
    Output {
        status,
        stdout: stdout.recv_timeout(rest).unwrap_or_default(),
        stderr: stderr.recv_timeout(rest).unwrap_or_default(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn parse_cidr(cidr: &str) -> (Ipv4Addr, u8) {
    let (addr, len) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("{cidr:?} is not ADDR/LEN"));
    let addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{cidr:?}: bad IPv4 address: {e}"));
    let len = len
        .parse()
        .unwrap_or_else(|e| panic!("{cidr:?}: bad prefix length: {e}"));
    (addr, len)
}

/// The tests may only use 198.18.0.0/15 (never a real network).
fn assert_test_net(addr: Ipv4Addr) {
    let [a, b, ..] = addr.octets();
    assert!(
        a == 198 && (b == 18 || b == 19),
        "{addr} is outside 198.18.0.0/15, the only range e2e tests may use"
    );
}

/// Whether one line of `ss -Hl[tu]n` output is a socket listening on `want`
/// (exactly, or on the wildcard address with the same port).
fn listens_on(line: &str, want: SocketAddr) -> bool {
    let Some(local) = line.split_whitespace().nth(3) else {
        return false;
    };
    let Some((host, port)) = local.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(want.port()) {
        return false;
    }
    // `198.18.0.2`, `127.0.0.53%lo`, `[::1]`, `*`, `0.0.0.0`, `[::]`.
    let host = host.split('%').next().unwrap_or(host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip == want.ip() || ip.is_unspecified(),
        Err(_) => host == "*",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_lines_are_matched_by_address_or_wildcard() {
        let want: SocketAddr = "198.18.0.2:8000".parse().unwrap();
        assert!(listens_on("LISTEN 0 5 198.18.0.2:8000 0.0.0.0:*", want));
        assert!(listens_on("LISTEN 0 5 0.0.0.0:8000 0.0.0.0:*", want));
        assert!(listens_on("LISTEN 0 5 *:8000 *:*", want));
        assert!(listens_on("LISTEN 0 5 [::]:8000 [::]:*", want));
        assert!(!listens_on("LISTEN 0 5 198.18.0.1:8000 0.0.0.0:*", want));
        assert!(!listens_on("LISTEN 0 5 198.18.0.2:80 0.0.0.0:*", want));
        let dns: SocketAddr = "127.0.0.1:15053".parse().unwrap();
        assert!(listens_on("UNCONN 0 0 127.0.0.1%lo:15053 0.0.0.0:*", dns));
    }

    #[test]
    fn only_the_benchmarking_range_is_allowed() {
        assert_test_net("198.18.0.1".parse().unwrap());
        assert_test_net("198.19.255.254".parse().unwrap());
        assert!(std::panic::catch_unwind(|| assert_test_net("10.0.0.1".parse().unwrap())).is_err());
    }
}
