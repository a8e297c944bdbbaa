#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

//! `strait certs` as an operator runs it: root, per-cluster intermediates and
//! workloads written to disk, checked with `openssl verify` (skipped when
//! openssl is not installed), and its refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ID_1: &str = "spiffe://cluster.local/ns/httpbin/sa/httpbin";
const ID_2: &str = "spiffe://cluster.local/ns/sleep/sa/sleep";

fn strait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap()
}

/// Runs `strait certs ARGS`, asserting success.
fn ok(args: &[&str]) -> String {
    let out = strait(args);
    assert!(
        out.status.success(),
        "strait certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `strait certs ARGS`, asserting exit 1, and returns stderr.
fn fails(args: &[&str]) -> String {
    let out = strait(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "strait certs {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A root in `base/root` and the intermediate of `cluster` in `base/CLUSTER`.
fn root_and_intermediate(base: &Path, cluster: &str) -> (PathBuf, PathBuf) {
    let root = base.join("root");
    if !root.join("root-cert.pem").exists() {
        ok(&["root", "--out", s(&root)]);
    }
    let ca = base.join(cluster);
    ok(&[
        "intermediate",
        "--cluster",
        cluster,
        "--root",
        s(&root),
        "--out",
        s(&ca),
    ]);
    (root, ca)
}

/// The PEM blocks of a file, each with its END line.
fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| format!("{}\n", b.trim()))
        .collect()
}

fn openssl_installed() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "openssl is not installed: skipping the openssl checks of the issued certificates"
        );
    }
    found
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

#[test]
fn a_root_per_cluster_intermediates_and_workloads_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let root = base.join("root");
    let stdout = ok(&["root", "--out", s(&root), "--validity", "30d"]);
    assert_eq!(
        stdout,
        format!(
            "wrote {}\nwrote {}\n",
            root.join("root-cert.pem").display(),
            root.join("root-key.pem").display()
        )
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(root.join("root-key.pem")), 0o600);
    }

    let mut issued = Vec::new();
    for (cluster, id) in [("cluster-1", ID_1), ("cluster-2", ID_2)] {
        let (_, ca) = root_and_intermediate(base, cluster);
        assert_eq!(
            read(ca.join("root-cert.pem")),
            read(root.join("root-cert.pem"))
        );
        let out = base.join(format!("{cluster}-workload"));
        let stdout = ok(&[
            "workload",
            "--spiffe-id",
            id,
            "--ca",
            s(&ca),
            "--out",
            s(&out),
            "--validity",
            "1h",
        ]);
        assert_eq!(stdout.lines().count(), 3, "{stdout}");
        for name in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
            assert!(stdout.contains(s(&out.join(name))), "{stdout}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The chain is the leaf then this cluster's intermediate; no root.
        let chain = pem_blocks(&read(out.join("cert-chain.pem")));
        assert_eq!(chain.len(), 2);
        assert_eq!(
            pem_blocks(&read(ca.join("ca-cert.pem"))),
            vec![chain[1].clone()]
        );
        std::fs::write(out.join("leaf.pem"), &chain[0]).unwrap();
        issued.push((ca, out, id));
    }

    if !openssl_installed() {
        return;
    }
    for (ca, out, id) in &issued {
        let leaf = out.join("leaf.pem");
        // The one root trusts every cluster's workloads, as server and as client.
        for purpose in ["sslserver", "sslclient"] {
            let text = openssl(&[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                s(&root.join("root-cert.pem")),
                "-untrusted",
                s(&ca.join("ca-cert.pem")),
                s(&leaf),
            ]);
            assert!(text.contains(": OK"), "{text}");
        }
        // The workload's own files are enough: the chain supplies the intermediate.
        let text = openssl(&[
            "verify",
            "-CAfile",
            s(&out.join("root-cert.pem")),
            "-untrusted",
            s(&out.join("cert-chain.pem")),
            s(&leaf),
        ]);
        assert!(text.contains(": OK"), "{text}");
        let text = openssl(&["x509", "-noout", "-ext", "subjectAltName", "-in", s(&leaf)]);
        assert!(text.contains(&format!("URI:{id}")), "{text}");
    }
    // Without the intermediate openssl cannot build a path.
    let (_, out, _) = &issued[0];
    let output = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(root.join("root-cert.pem"))
        .arg(out.join("leaf.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn an_intermediate_from_a_root_dir_with_another_roots_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, mixed) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("mixed"),
    );
    ok(&["root", "--out", s(&a)]);
    ok(&["root", "--out", s(&b)]);
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(a.join("root-cert.pem"), mixed.join("root-cert.pem")).unwrap();
    std::fs::copy(b.join("root-key.pem"), mixed.join("root-key.pem")).unwrap();
    let out = dir.path().join("out");
    let err = fails(&[
        "intermediate",
        "--cluster",
        "cluster-1",
        "--root",
        s(&mixed),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains(s(&mixed.join("root-key.pem"))), "{err}");
    assert!(!out.exists(), "nothing is written on failure");
}

#[test]
fn missing_input_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.path().join("out");
    let err = fails(&[
        "intermediate",
        "--cluster",
        "cluster-1",
        "--root",
        s(&empty),
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains(&format!(
            "cannot read {}",
            empty.join("root-cert.pem").display()
        )),
        "{err}"
    );
    let err = fails(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&empty),
        "--out",
        s(&out),
    ]);
    assert!(err.contains(s(&empty.join("ca-cert.pem"))), "{err}");
}

#[test]
fn a_bad_spiffe_id_is_refused_naming_the_expected_form() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ca) = root_and_intermediate(dir.path(), "cluster-1");
    let out = dir.path().join("w");
    let err = fails(&[
        "workload",
        "--spiffe-id",
        "spiffe://x/bad",
        "--ca",
        s(&ca),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("spiffe://x/bad"), "{err}");
    assert!(
        err.contains("spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_ca_dir_whose_certificate_is_not_a_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ca) = root_and_intermediate(dir.path(), "cluster-1");
    let w = dir.path().join("w");
    ok(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&ca),
        "--out",
        s(&w),
    ]);
    // A directory shaped like a CA's, holding a workload's leaf and key.
    let fake = dir.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    let leaf = pem_blocks(&read(w.join("cert-chain.pem"))).remove(0);
    std::fs::write(fake.join("ca-cert.pem"), leaf).unwrap();
    std::fs::copy(w.join("key.pem"), fake.join("ca-key.pem")).unwrap();
    std::fs::copy(w.join("root-cert.pem"), fake.join("root-cert.pem")).unwrap();
    let err = fails(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&fake),
        "--out",
        s(&dir.path().join("w2")),
    ]);
    assert!(err.contains("is not a CA certificate"), "{err}");
    assert!(err.contains(s(&fake.join("ca-cert.pem"))), "{err}");
}

#[test]
fn a_ca_dir_with_a_foreign_trust_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ca) = root_and_intermediate(dir.path(), "cluster-1");
    let other = dir.path().join("other-root");
    ok(&["root", "--out", s(&other)]);
    std::fs::copy(other.join("root-cert.pem"), ca.join("root-cert.pem")).unwrap();
    let err = fails(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&ca),
        "--out",
        s(&dir.path().join("w")),
    ]);
    assert!(err.contains("does not verify against"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (root, ca) = root_and_intermediate(dir.path(), "cluster-1");
    let before = read(root.join("root-key.pem"));
    let err = fails(&["root", "--out", s(&root)]);
    assert!(err.contains("already exists"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(read(root.join("root-key.pem")), before);

    let err = fails(&[
        "intermediate",
        "--cluster",
        "cluster-1",
        "--root",
        s(&root),
        "--out",
        s(&ca),
    ]);
    assert!(err.contains(s(&ca.join("ca-cert.pem"))), "{err}");

    let w = dir.path().join("w");
    let args = [
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&ca),
        "--out",
        s(&w),
    ];
    ok(&args);
    let chain = read(w.join("cert-chain.pem"));
    let err = fails(&args);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(read(w.join("cert-chain.pem")), chain);
    // Rotation: --force replaces the files with a new certificate.
    ok(&[&args[..], &["--force"]].concat());
    assert_ne!(read(w.join("cert-chain.pem")), chain);
    let entries: Vec<_> = std::fs::read_dir(&w)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!entries.iter().any(|n| n.ends_with(".tmp")), "{entries:?}");
}

#[test]
fn secret_writes_a_kubernetes_secret_with_the_three_files() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ca) = root_and_intermediate(dir.path(), "cluster-1");
    let w = dir.path().join("w");
    let stdout = ok(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&ca),
        "--out",
        s(&w),
        "--secret",
        "httpbin-certs",
        "--secret-namespace",
        "httpbin",
    ]);
    assert!(stdout.contains(s(&w.join("secret.yaml"))), "{stdout}");
    let secret: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(w.join("secret.yaml"))).unwrap();
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["name"], "httpbin-certs");
    assert_eq!(secret["metadata"]["namespace"], "httpbin");
    let data = secret["stringData"].as_mapping().unwrap();
    assert_eq!(data.len(), 3);
    for key in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert_eq!(data[key].as_str().unwrap(), read(w.join(key)), "{key}");
    }

    // The namespace defaults to `default`; invalid names are refused.
    let w2 = dir.path().join("w2");
    ok(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&ca),
        "--out",
        s(&w2),
        "--secret",
        "c",
    ]);
    let secret: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(w2.join("secret.yaml"))).unwrap();
    assert_eq!(secret["metadata"]["namespace"], "default");
    let err = fails(&[
        "workload",
        "--spiffe-id",
        ID_1,
        "--ca",
        s(&ca),
        "--out",
        s(&dir.path().join("w3")),
        "--secret",
        "Bad_Name",
    ]);
    assert!(err.contains("invalid Secret name"), "{err}");
}
