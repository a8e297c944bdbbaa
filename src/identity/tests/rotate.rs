//! Rotation: a reload swaps the certificate for new handshakes only, a bad
//! rotation keeps the old identity serving, and the watcher reloads on its
//! own (plain file replacement and Kubernetes' symlink swap).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::identity::peer_id;

/// An echo server handshaking each connection with the store's *current* config.
async fn echo_server(store: Arc<IdentityStore>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = TlsAcceptor::from(store.server_config());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (mut rd, mut wr) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

/// Connects and returns the stream and the server's leaf.
async fn dial(
    addr: SocketAddr,
    client: &IdentityStore,
) -> (client::TlsStream<TcpStream>, CertificateDer<'static>) {
    let tls = tokio::time::timeout(LIMIT, connect(addr, client.client_config()))
        .await
        .unwrap()
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, leaf)
}

async fn echo(tls: &mut client::TlsStream<TcpStream>, msg: &[u8]) {
    tls.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(LIMIT, tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_keeps_established_connections() {
    let mesh = Mesh::new();
    let (files, a) = mesh.store_a("frontend", "web");
    let (_fb, b) = mesh.store_b("backend", "api");
    let addr = echo_server(Arc::clone(&a)).await;

    let (mut before, old_leaf) = dial(addr, &b).await;
    echo(&mut before, b"before").await;

    let renewed = mesh.cluster_a.leaf(&spiffe("frontend", "web"));
    files.rotate(&renewed);
    a.reload().unwrap();
    assert_eq!(a.generation(), 1);
    assert_eq!(a.metrics().reloads_applied.get(), 1);
    assert_eq!(a.id().to_string(), spiffe("frontend", "web"));

    let (mut after, new_leaf) = dial(addr, &b).await;
    assert_eq!(new_leaf, renewed.cert);
    assert_ne!(new_leaf, old_leaf);
    assert_eq!(peer_id(after.get_ref().1).unwrap(), a.id());
    echo(&mut after, b"after").await;

    // The connection made before the reload still works.
    echo(&mut before, b"still here").await;

    // Our client side presents the new certificate too.
    let (addr, task) = serve_once(b.server_config()).await;
    let _client = connect(addr, a.client_config()).await.unwrap();
    let server = server_result(task).await.unwrap();
    assert_eq!(
        server.get_ref().1.peer_certificates().unwrap()[0],
        renewed.cert
    );

    // Unchanged files: nothing to apply.
    a.reload().unwrap();
    assert_eq!(a.generation(), 1);
    assert_eq!(a.metrics().reloads_applied.get(), 1);
}

#[tokio::test]
async fn a_broken_rotation_is_rejected_and_the_old_identity_keeps_serving() {
    let mesh = Mesh::new();
    let (files, a) = mesh.store_a("frontend", "web");
    let (_fb, b) = mesh.store_b("backend", "api");
    let addr = echo_server(Arc::clone(&a)).await;
    let (_, serving) = dial(addr, &b).await;
    let good_chain = std::fs::read_to_string(&files.config.cert_chain).unwrap();

    // Garbage in the chain.
    files.replace(
        &files.config.cert_chain,
        "-----BEGIN CERTIFICATE-----\n!!\n",
    );
    assert!(a.reload().is_err());
    // A new certificate without its key.
    files.replace(
        &files.config.cert_chain,
        &mesh.cluster_a.leaf(&spiffe("frontend", "web")).chain_pem,
    );
    assert!(matches!(a.reload(), Err(IdentityError::KeyMismatch { .. })));
    // A certificate from a root outside the bundle.
    let stranger = Ca::root("another root")
        .intermediate("x")
        .leaf(&spiffe("frontend", "web"));
    files.rotate(&stranger);
    assert!(matches!(a.reload(), Err(IdentityError::Untrusted { .. })));

    assert_eq!(a.generation(), 0);
    assert_eq!(a.metrics().reloads_rejected.get(), 3);
    assert_eq!(a.metrics().reloads_applied.get(), 0);
    let (mut tls, leaf) = dial(addr, &b).await;
    assert_eq!(leaf, serving);
    echo(&mut tls, b"old identity").await;
    assert!(a.ready().is_ok());

    // Fixed files apply.
    files.replace(&files.config.cert_chain, &good_chain);
    files.rotate(&mesh.cluster_a.leaf(&spiffe("frontend", "web")));
    a.reload().unwrap();
    assert_eq!(a.generation(), 1);
}

/// Waits for the next generation, or fails after a few seconds.
async fn next_generation(rx: &mut tokio::sync::watch::Receiver<u64>) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the watcher reloads within 10s")
        .unwrap();
    *rx.borrow_and_update()
}

#[tokio::test]
async fn the_watcher_reloads_replaced_files_and_stops_when_cancelled() {
    let mesh = Mesh::new();
    let (files, a) = mesh.store_a("frontend", "web");
    let mut generations = a.subscribe();
    let stop = CancellationToken::new();
    let watcher = a.watch(stop.clone());

    let renewed = mesh.cluster_a.leaf(&spiffe("frontend", "web"));
    // Files are replaced one by one; the debounce makes this one reload.
    files.rotate(&renewed);
    assert_eq!(next_generation(&mut generations).await, 1);
    let (_fb, b) = mesh.store_b("backend", "api");
    let addr = echo_server(Arc::clone(&a)).await;
    assert_eq!(dial(addr, &b).await.1, renewed.cert);

    stop.cancel();
    tokio::time::timeout(LIMIT, watcher)
        .await
        .expect("the watcher stops when cancelled")
        .unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn the_watcher_sees_a_kubernetes_secret_symlink_swap() {
    use std::os::unix::fs::symlink;

    let mesh = Mesh::new();
    let dir = TempDir::new().unwrap();
    let names = ["cert-chain.pem", "key.pem", "root-cert.pem"];
    // The kubelet's layout: NAME -> ..data/NAME, ..data -> ..VERSION.
    let write_version = |version: &str, leaf: &Leaf| {
        let v = dir.path().join(version);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join(names[0]), &leaf.chain_pem).unwrap();
        std::fs::write(v.join(names[1]), &leaf.key_pem).unwrap();
        std::fs::write(v.join(names[2]), &mesh.root.pem).unwrap();
    };
    write_version("..v1", &mesh.cluster_a.leaf(&spiffe("frontend", "web")));
    symlink("..v1", dir.path().join("..data")).unwrap();
    for name in names {
        symlink(Path::new("..data").join(name), dir.path().join(name)).unwrap();
    }
    let config = Identity {
        trust_domain: TD.to_owned(),
        cert_chain: dir.path().join(names[0]),
        private_key: dir.path().join(names[1]),
        trust_bundle: dir.path().join(names[2]),
    };
    let store = IdentityStore::load(&config, metrics()).unwrap();
    let mut generations = store.subscribe();
    let stop = CancellationToken::new();
    let _watcher = store.watch(stop.clone());

    let renewed = mesh.cluster_a.leaf(&spiffe("frontend", "web"));
    write_version("..v2", &renewed);
    symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();

    assert_eq!(next_generation(&mut generations).await, 1);
    let (_fb, b) = mesh.store_b("backend", "api");
    let addr = echo_server(Arc::clone(&store)).await;
    assert_eq!(dial(addr, &b).await.1, renewed.cert);
    stop.cancel();
}
