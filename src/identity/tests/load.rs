//! Loading the identity files: what is accepted, and the precise error for
//! each way they can be wrong.

use std::time::{Duration, SystemTime};

use rustls::CertificateError;
use x509_parser::der_parser::parse_der;

use super::*;

fn load_err(files: &Files) -> IdentityError {
    match files.load() {
        Ok(store) => panic!("expected a load error, loaded {store:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_good_identity_loads() {
    let mesh = Mesh::new();
    let (files, store) = mesh.store_a("httpbin", "default");
    assert_eq!(store.id().to_string(), spiffe("httpbin", "default"));
    assert_eq!(store.trust_domain(), TD);
    assert_eq!(store.generation(), 0);
    assert!(store.ready().is_ok());
    let left = store.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(86000) && left <= Duration::from_secs(86400));
    let gauge = store.metrics().expiry_seconds();
    assert!((86000.0..=86400.0).contains(&gauge), "expiry gauge {gauge}");
    assert_eq!(store.client_config().alpn_protocols, vec![b"h2".to_vec()]);
    assert_eq!(store.server_config().alpn_protocols, vec![b"h2".to_vec()]);
    drop(files);
}

#[test]
fn ready_fails_once_the_certificate_has_expired() {
    let (_files, store) = Mesh::new().store_a("a", "b");
    let not_after = store.not_after();
    assert!(store.ready_at(not_after - Duration::from_secs(1)).is_ok());
    let err = store
        .ready_at(not_after + Duration::from_secs(1))
        .unwrap_err();
    assert!(err.starts_with("certificate expired at "), "{err}");
}

#[test]
fn a_sec1_key_loads() {
    let mesh = Mesh::new();
    let leaf = mesh.cluster_a.leaf(&spiffe("a", "b"));
    // PKCS#8 { version, algorithm, OCTET STRING { ECPrivateKey (SEC1) } }.
    let (_, pkcs8) = parse_der(&leaf.key_der).unwrap();
    let sec1 = pkcs8.as_sequence().unwrap()[2].as_slice().unwrap();
    let pem = pem_encode("EC PRIVATE KEY", sec1);
    let files = Files::write(&leaf, &[&mesh.root]);
    files.replace(&files.config.private_key, &pem);
    let store = files.load().unwrap();
    assert_eq!(store.id().to_string(), spiffe("a", "b"));
}

#[test]
fn a_missing_file_is_named() {
    let mesh = Mesh::new();
    let files = Files::write(&mesh.cluster_a.leaf(&spiffe("a", "b")), &[&mesh.root]);
    std::fs::remove_file(&files.config.trust_bundle).unwrap();
    let err = load_err(&files);
    assert!(matches!(err, IdentityError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}

#[test]
fn bad_pem_is_reported_with_the_file_name() {
    let mesh = Mesh::new();
    let files = Files::write(&mesh.cluster_a.leaf(&spiffe("a", "b")), &[&mesh.root]);
    let good_chain = std::fs::read_to_string(&files.config.cert_chain).unwrap();

    files.replace(
        &files.config.cert_chain,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let err = load_err(&files);
    assert!(matches!(err, IdentityError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains("cert-chain.pem"), "{err}");

    files.replace(&files.config.cert_chain, "no PEM here\n");
    let err = load_err(&files);
    assert!(
        matches!(
            err,
            IdentityError::Missing {
                what: "certificate",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cert-chain.pem"), "{err}");

    files.replace(&files.config.cert_chain, &good_chain);
    files.replace(&files.config.private_key, "-----BEGIN PRIVATE KEY-----\n");
    let err = load_err(&files);
    assert!(err.to_string().contains("key.pem"), "{err}");

    files.replace(
        &files.config.private_key,
        &mesh.cluster_a.leaf("spiffe://x/ns/a/sa/b").key_pem,
    );
    files.replace(&files.config.trust_bundle, "");
    let err = load_err(&files);
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let mesh = Mesh::new();
    let files = Files::write(&mesh.cluster_a.leaf(&spiffe("a", "b")), &[&mesh.root]);
    let other = mesh.cluster_a.leaf(&spiffe("a", "b"));
    files.replace(&files.config.private_key, &other.key_pem);
    let err = load_err(&files);
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("key.pem") && msg.contains("cert-chain.pem"),
        "{msg}"
    );
}

#[test]
fn a_chain_from_another_root_is_an_unknown_ca() {
    let mesh = Mesh::new();
    let other = Ca::root("another root").intermediate("another intermediate");
    let files = Files::write(&other.leaf(&spiffe("a", "b")), &[&mesh.root]);
    match load_err(&files) {
        IdentityError::Untrusted {
            source: rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            ..
        } => {}
        err => panic!("expected Untrusted(UnknownIssuer), got {err:?}"),
    }
}

#[test]
fn a_chain_without_its_intermediate_does_not_verify() {
    let mesh = Mesh::new();
    let leaf = mesh.cluster_a.leaf(&spiffe("a", "b"));
    let files = Files::write(&leaf, &[&mesh.root]);
    let leaf_only = pem_encode("CERTIFICATE", &leaf.cert);
    files.replace(&files.config.cert_chain, &leaf_only);
    let err = load_err(&files);
    assert!(matches!(err, IdentityError::Untrusted { .. }), "{err:?}");
}

#[test]
fn an_expired_leaf_is_refused() {
    let mesh = Mesh::new();
    let leaf = mesh.cluster_a.leaf_with(|p| {
        p.subject_alt_names = vec![uri(&spiffe("a", "b"))];
        p.not_before = (SystemTime::now() - Duration::from_secs(2 * 86400)).into();
        p.not_after = (SystemTime::now() - Duration::from_secs(86400)).into();
    });
    let err = load_err(&Files::write(&leaf, &[&mesh.root]));
    assert!(matches!(err, IdentityError::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[test]
fn a_leaf_without_a_spiffe_id_is_refused() {
    let mesh = Mesh::new();
    let leaf = mesh.cluster_a.leaf_with(|p| {
        p.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())];
    });
    match load_err(&Files::write(&leaf, &[&mesh.root])) {
        IdentityError::Leaf { source, .. } => {
            assert!(matches!(*source, IdentityError::NoSpiffeId), "{source:?}")
        }
        err => panic!("expected Leaf(NoSpiffeId), got {err:?}"),
    }
}

#[test]
fn a_leaf_of_another_trust_domain_is_refused() {
    let mesh = Mesh::new();
    let leaf = mesh.cluster_a.leaf("spiffe://other.domain/ns/a/sa/b");
    let err = load_err(&Files::write(&leaf, &[&mesh.root]));
    match &err {
        IdentityError::Leaf { source, .. } => assert!(
            matches!(**source, IdentityError::WrongTrustDomain { .. }),
            "{source:?}"
        ),
        err => panic!("expected Leaf(WrongTrustDomain), got {err:?}"),
    }
    assert!(err.to_string().contains("other.domain"), "{err}");
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
