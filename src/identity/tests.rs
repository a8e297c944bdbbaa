//! Test fixtures for the identity module: a CA hierarchy made with rcgen
//! (root, per-cluster intermediates, SPIFFE leaves), identity files in a
//! temporary directory, and TLS over real loopback sockets.
//!
//! The cases are in `tests/{load,handshake,rotate}.rs`.

#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::{IdentityError, IdentityMetrics, IdentityStore};
use crate::config::Identity;

mod handshake;
mod load;
mod rotate;

pub(super) const TD: &str = "cluster.local";

/// A CA able to sign: root or intermediate.
pub(super) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    /// This CA's chain up to, not including, the root (empty for a root).
    chain_pem: String,
}

/// A leaf, its chain and key.
pub(super) struct Leaf {
    pub cert: CertificateDer<'static>,
    /// The leaf then the intermediates.
    pub chain_pem: String,
    /// PKCS#8.
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

// === impl Ca ===

impl Ca {
    pub fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            chain_pem: String::new(),
        }
    }

    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem = cert.pem();
        Ca {
            chain_pem: format!("{pem}{}", self.chain_pem),
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `id`, valid from an hour ago for a day.
    pub fn leaf(&self, id: &str) -> Leaf {
        self.leaf_with(|p| {
            p.subject_alt_names = vec![uri(id)];
        })
    }

    /// A leaf whose params `edit` adjusts (validity, SANs).
    pub fn leaf_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "strait workload");
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(86400)).into();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            cert: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

pub(super) fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub(super) fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// Identity files in a temporary directory, and the config naming them.
pub(super) struct Files {
    pub dir: TempDir,
    pub config: Identity,
}

// === impl Files ===

impl Files {
    pub fn write(leaf: &Leaf, bundle: &[&Ca]) -> Files {
        let dir = TempDir::new().unwrap();
        let config = Identity {
            trust_domain: TD.to_owned(),
            cert_chain: dir.path().join("cert-chain.pem"),
            private_key: dir.path().join("key.pem"),
            trust_bundle: dir.path().join("root-cert.pem"),
        };
        let files = Files { dir, config };
        files.replace(&files.config.cert_chain, &leaf.chain_pem);
        files.replace(&files.config.private_key, &leaf.key_pem);
        let roots: String = bundle.iter().map(|ca| ca.pem.as_str()).collect();
        files.replace(&files.config.trust_bundle, &roots);
        files
    }

    /// Replaces chain and key, each atomically (as a rotation tool would).
    pub fn rotate(&self, leaf: &Leaf) {
        self.replace(&self.config.cert_chain, &leaf.chain_pem);
        self.replace(&self.config.private_key, &leaf.key_pem);
    }

    /// Writes `contents` to a temporary name, then renames it over `path`.
    pub fn replace(&self, path: &Path, contents: &str) {
        let tmp = self.dir.path().join("incoming.tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    pub fn load(&self) -> Result<Arc<IdentityStore>, IdentityError> {
        IdentityStore::load(&self.config, metrics())
    }
}

pub(super) fn metrics() -> IdentityMetrics {
    IdentityMetrics::register(&prometheus::Registry::new()).unwrap()
}

/// One mesh: a root, two clusters' intermediates, a workload in each.
pub(super) struct Mesh {
    pub root: Ca,
    pub cluster_a: Ca,
    pub cluster_b: Ca,
}

impl Mesh {
    pub fn new() -> Mesh {
        let root = Ca::root("test root");
        Mesh {
            cluster_a: root.intermediate("cluster-a intermediate"),
            cluster_b: root.intermediate("cluster-b intermediate"),
            root,
        }
    }

    /// A loaded identity `ns/sa` in cluster A.
    pub fn store_a(&self, ns: &str, sa: &str) -> (Files, Arc<IdentityStore>) {
        let files = Files::write(&self.cluster_a.leaf(&spiffe(ns, sa)), &[&self.root]);
        let store = files.load().unwrap();
        (files, store)
    }

    /// A loaded identity `ns/sa` in cluster B.
    pub fn store_b(&self, ns: &str, sa: &str) -> (Files, Arc<IdentityStore>) {
        let files = Files::write(&self.cluster_b.leaf(&spiffe(ns, sa)), &[&self.root]);
        let store = files.load().unwrap();
        (files, store)
    }
}

/// How long any one handshake or exchange in these tests may take.
pub(super) const LIMIT: Duration = Duration::from_secs(5);

/// A server that accepts one connection and hands back the TLS result.
pub(super) async fn serve_once(
    config: Arc<ServerConfig>,
) -> (
    SocketAddr,
    JoinHandle<io::Result<server::TlsStream<TcpStream>>>,
) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        TlsAcceptor::from(config).accept(tcp).await
    });
    (addr, task)
}

/// Connects over TCP then TLS, addressing the server by IP as the data path does.
pub(super) async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// The server side's handshake result, bounded in time.
pub(super) async fn server_result(
    task: JoinHandle<io::Result<server::TlsStream<TcpStream>>>,
) -> io::Result<server::TlsStream<TcpStream>> {
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("the server handshake ends in time")
        .unwrap()
}
