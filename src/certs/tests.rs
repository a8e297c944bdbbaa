//! The issued certificates as rustls/webpki and x509-parser see them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);
const ID: &str = "spiffe://cluster.local/ns/httpbin/sa/httpbin";

/// A root, the intermediate of `cluster-1`, and a workload it issued.
fn mesh() -> (Ca, Ca, Workload) {
    let root = root(3650 * DAY).unwrap();
    let inter = intermediate(&root, "cluster-1", 365 * DAY).unwrap();
    let leaf = workload(&inter, &inter.cert_pem, ID, DAY).unwrap();
    (root, inter, leaf)
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    parse_certs(pem, "test").unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(root: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ders(&root.cert_pem).remove(0)).unwrap();
    Arc::new(roots)
}

/// What a peer's client-certificate verifier says about `chain_pem`.
fn verify_as_client(root: &Ca, chain_pem: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(root), provider())
        .build()
        .unwrap();
    let chain = ders(chain_pem);
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

fn with_x509<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let der = ders(pem).remove(0);
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    f(&x509)
}

fn common_name(pem: &str) -> String {
    with_x509(pem, |x| {
        x.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
}

#[test]
fn a_workload_chain_verifies_as_a_client_certificate_against_the_root() {
    let (root, inter, leaf) = mesh();
    verify_as_client(&root, &leaf.chain_pem).unwrap();
    // The chain is the leaf then the intermediate, never the root.
    let chain = ders(&leaf.chain_pem);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], ders(&leaf.cert_pem)[0]);
    assert_eq!(chain[1], ders(&inter.cert_pem)[0]);
}

#[test]
fn a_workload_chain_is_accepted_for_server_auth_up_to_the_name_check() {
    // Mesh peers check the URI SAN themselves; webpki's DNS-name check is the
    // only step that must fail, which proves path building and serverAuth passed.
    let (root, _, leaf) = mesh();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&root), provider())
        .build()
        .unwrap();
    let chain = ders(&leaf.chain_pem);
    let name = ServerName::try_from("httpbin.httpbin").unwrap();
    let err = verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[test]
fn a_workload_from_another_root_is_an_unknown_issuer() {
    let (root, _, _) = mesh();
    let (_, _, stranger) = mesh();
    let err = verify_as_client(&root, &stranger.chain_pem).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn workloads_of_two_clusters_under_one_root_both_verify() {
    let (root, _, one) = mesh();
    let two_ca = intermediate(&root, "cluster-2", 365 * DAY).unwrap();
    let two = workload(&two_ca, &two_ca.cert_pem, ID, DAY).unwrap();
    verify_as_client(&root, &one.chain_pem).unwrap();
    verify_as_client(&root, &two.chain_pem).unwrap();
    verify_chain(&two.chain_pem, &root.cert_pem).unwrap();
    // A chain without its intermediate does not build a path.
    let err = verify_as_client(&root, &two.cert_pem).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn an_expired_workload_is_rejected_as_expired() {
    let (root, inter, _) = mesh();
    let now = SystemTime::now();
    let leaf =
        workload_with_validity(&inter, &inter.cert_pem, ID, now - 2 * DAY, now - DAY).unwrap();
    let err = verify_as_client(&root, &leaf.chain_pem).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
    let err = verify_chain(&leaf.chain_pem, &root.cert_pem).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn the_leaf_carries_the_spiffe_id_as_its_only_san_and_is_not_a_ca() {
    let (_, _, leaf) = mesh();
    with_x509(&leaf.cert_pem, |x| {
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "an empty subject needs a critical SAN");
        assert_eq!(san.value.general_names, vec![GeneralName::URI(ID)]);
        assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
        assert!(x.key_usage().unwrap().unwrap().value.digital_signature());
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(x.subject().iter().next().is_none(), "empty subject");
    });
}

#[test]
fn the_cas_are_named_constrained_and_can_sign() {
    let (root, inter, _) = mesh();
    assert_eq!(common_name(&root.cert_pem), "Strait Root CA");
    assert_eq!(
        common_name(&inter.cert_pem),
        "Strait Intermediate CA cluster-1"
    );
    with_x509(&root.cert_pem, |x| {
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint.is_none());
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
    });
    with_x509(&inter.cert_pem, |x| {
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
    });
}

#[test]
fn a_loaded_ca_signs_certificates_that_verify() {
    let (root, inter, _) = mesh();
    let root_again = Ca::load(&root.cert_pem, &root.key_pem).unwrap();
    assert_eq!(root_again.not_after(), root.not_after());
    let inter2 = intermediate(&root_again, "cluster-2", DAY).unwrap();
    let inter_again = Ca::load(&inter.cert_pem, &inter.key_pem).unwrap();
    for ca in [inter2, inter_again] {
        let leaf = workload(&ca, &ca.cert_pem, ID, DAY).unwrap();
        verify_as_client(&root, &leaf.chain_pem).unwrap();
    }
}

#[test]
fn loading_a_ca_with_another_cas_key_is_a_key_mismatch() {
    let (root, _, _) = mesh();
    let other = super::root(DAY).unwrap();
    let err = Ca::load(&root.cert_pem, &other.key_pem).unwrap_err();
    assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn loading_a_leaf_as_a_ca_is_refused() {
    let (_, _, leaf) = mesh();
    let err = Ca::load(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
    assert!(matches!(err, CertsError::NotACa { .. }), "{err:?}");
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn loading_garbage_names_the_input_that_is_not_pem() {
    let (root, _, _) = mesh();
    let err = Ca::load("not a certificate", &root.key_pem).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CA certificate: not a valid PEM certificate"),
        "{err}"
    );
    let err = Ca::load(&root.cert_pem, &root.cert_pem).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CA key: not a valid PEM private key"),
        "{err}"
    );
}

#[test]
fn an_invalid_spiffe_id_is_refused_before_signing() {
    let (_, inter, _) = mesh();
    for id in [
        "spiffe://x/bad",
        "spiffe://td/ns/a/sa/b/c",
        "spiffe:///ns/a/sa/b",
    ] {
        let err = workload(&inter, &inter.cert_pem, id, DAY).unwrap_err();
        assert!(matches!(err, CertsError::InvalidSpiffeId { .. }), "{err:?}");
    }
}

#[test]
fn a_chain_that_does_not_start_with_the_signing_ca_is_refused() {
    let (root, inter, _) = mesh();
    let err = workload(&inter, &root.cert_pem, ID, DAY).unwrap_err();
    assert!(matches!(err, CertsError::ChainMismatch), "{err:?}");
    // Signing with the root directly needs no chain.
    let leaf = workload(&root, "", ID, DAY).unwrap();
    assert_eq!(leaf.chain_pem, leaf.cert_pem);
    verify_as_client(&root, &leaf.chain_pem).unwrap();
}

#[test]
fn issued_certificates_never_outlive_their_issuer() {
    let root = root(Duration::from_secs(3600)).unwrap();
    let inter = intermediate(&root, "cluster-1", 365 * DAY).unwrap();
    assert_eq!(inter.not_after(), root.not_after());
    let leaf = workload(&inter, &inter.cert_pem, ID, 365 * DAY).unwrap();
    let leaf_expiry = with_x509(&leaf.cert_pem, |x| x.validity().not_after.timestamp());
    let root_expiry = with_x509(&root.cert_pem, |x| x.validity().not_after.timestamp());
    assert_eq!(leaf_expiry, root_expiry);
}

#[test]
fn an_expired_ca_issues_nothing() {
    let mut expired_root = super::root(DAY).unwrap();
    expired_root.not_after = SystemTime::now() - DAY;
    let err = intermediate(&expired_root, "cluster-1", DAY).unwrap_err();
    assert!(matches!(err, CertsError::CaExpired { .. }), "{err:?}");
    let err = workload(&expired_root, "", ID, DAY).unwrap_err();
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[test]
fn bad_names_and_validities_are_refused() {
    let (root, inter, _) = mesh();
    for cluster in ["", "Cluster", "a_b", "-x"] {
        let err = intermediate(&root, cluster, DAY).unwrap_err();
        assert!(matches!(err, CertsError::InvalidName { .. }), "{err:?}");
    }
    let err = super::root(Duration::ZERO).unwrap_err();
    assert!(matches!(err, CertsError::InvalidValidity(_)), "{err:?}");
    let err = super::root(Duration::from_secs(u64::MAX)).unwrap_err();
    assert!(matches!(err, CertsError::InvalidValidity(_)), "{err:?}");
    let err = super::root(10_000 * 365 * DAY).unwrap_err();
    assert!(err.to_string().contains("9999"), "{err}");
    let now = SystemTime::now();
    let err = workload_with_validity(&inter, &inter.cert_pem, ID, now, now - DAY).unwrap_err();
    assert!(matches!(err, CertsError::InvalidValidity(_)), "{err:?}");
}

#[test]
fn a_bundle_with_two_roots_trusts_workloads_of_either_during_rotation() {
    let (old_root, _, old_leaf) = mesh();
    let (new_root, _, new_leaf) = mesh();
    assert_ne!(
        with_x509(&old_root.cert_pem, |x| x.subject().to_string()),
        with_x509(&new_root.cert_pem, |x| x.subject().to_string()),
        "every root has its own name"
    );
    let bundle = format!("{}{}", old_root.cert_pem, new_root.cert_pem);
    verify_chain(&old_leaf.chain_pem, &bundle).unwrap();
    verify_chain(&new_leaf.chain_pem, &bundle).unwrap();
    let err = verify_chain(&old_leaf.chain_pem, &new_root.cert_pem).unwrap_err();
    assert!(matches!(err, CertsError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}
