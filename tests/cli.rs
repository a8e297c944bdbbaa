//! The `strait` binary's command line: `--check-config` output and exit
//! codes, and the commands that are not built yet.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

use std::process::Command;

fn strait() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strait"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_prints_every_problem_with_its_field_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "bad.yaml",
        r#"
runtime: { workerThreads: 0 }
mesh:
  - apiVersion: v1
    kind: Service
    metadata: { name: a, namespace: x }
    spec: { clusterIP: 127.1.0.1, ports: [{ port: 80 }] }
  - apiVersion: v1
    kind: Service
    metadata: { name: b, namespace: x }
    spec: { clusterIP: not-an-ip, ports: [{ port: 8080 }, { port: 70000 }] }
"#,
    );
    let out = strait()
        .arg("proxy")
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runtime.workerThreads: 0 is out of range"),
        "{err}"
    );
    // The semantic problems are only reported once the settings parse; fix them and look again.
    let path = write(
        &dir,
        "bad2.yaml",
        r#"
mesh:
  - apiVersion: v1
    kind: Service
    metadata: { name: b, namespace: x }
    spec: { clusterIP: not-an-ip, ports: [{ port: 8080 }, { port: 70000 }] }
"#,
    );
    let out = strait()
        .arg("proxy")
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mesh[0].spec.clusterIP: \"not-an-ip\" is not an IP address"),
        "{err}"
    );
    assert!(
        err.contains("mesh[0].spec.ports[1].port: 70000 is not a port"),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn check_config_accepts_a_valid_file_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "ok.yaml",
        r#"
mesh:
  - apiVersion: v1
    kind: Service
    metadata: { name: a, namespace: x }
    spec: { clusterIP: 127.1.0.1, ports: [{ port: 80 }] }
"#,
    );
    let out = strait()
        .arg("proxy")
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("ok: 1 service(s)"), "{stdout}");
}

#[test]
fn check_config_reports_an_unreadable_file() {
    let out = strait()
        .args(["proxy", "--check-config", "/nonexistent/strait.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/strait.yaml"));
}

#[test]
fn commands_not_built_yet_say_so_and_exit_2() {
    for cmd in ["control", "init", "inject", "webhook"] {
        let out = strait().arg(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "strait {cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not built yet"), "strait {cmd}: {err}");
    }
}

#[test]
fn gateway_mode_without_an_identity_is_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "gw.yaml", "listeners: { admin: \"127.0.0.1:0\" }\n");
    let out = strait()
        .args(["proxy", "--mode", "gateway", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("identity: gateway mode needs an identity"),
        "{err}"
    );
}

#[test]
fn proxy_without_a_config_is_a_usage_error() {
    let out = strait().arg("proxy").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn proxy_with_an_invalid_config_exits_1_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.yaml", "listeners: { admin: nonsense }\n");
    let out = strait()
        .arg("proxy")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners.admin"));
}

#[test]
fn check_config_loads_the_identity_files_as_the_proxy_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let run = |args: &[&str]| {
        let out = strait().arg("certs").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["root", "--out", &format!("{d}/root")]);
    run(&[
        "intermediate",
        "--cluster",
        "c1",
        "--root",
        &format!("{d}/root"),
        "--out",
        &format!("{d}/c1"),
    ]);
    let id = "spiffe://cluster.local/ns/a/sa/b";
    run(&[
        "workload",
        "--spiffe-id",
        id,
        "--ca",
        &format!("{d}/c1"),
        "--out",
        &format!("{d}/w"),
    ]);
    let config = |key: &str| {
        format!(
            "identity: {{ certChain: w/cert-chain.pem, privateKey: {key}, trustBundle: w/root-cert.pem }}\nmesh: []\n"
        )
    };
    let good = write(&dir, "good.yaml", &config("w/key.pem"));
    let out = strait()
        .args(["proxy", "--check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The intermediate's key does not belong to the workload certificate.
    let bad = write(&dir, "bad.yaml", &config("c1/ca-key.pem"));
    let out = strait()
        .args(["proxy", "--check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identity: "), "{err}");
    assert!(err.contains("ca-key.pem"), "names the file: {err}");
}
