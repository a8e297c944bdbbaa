//! `strait certs`: the root, per-cluster intermediates and workload
//! certificates as files (and optionally a Kubernetes Secret). Parsing
//! arguments and moving bytes between files and [`super`]'s API; no
//! certificate logic lives here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::files::{self, Mode, Output};
use super::verify::verify_chain_named;
use super::{Ca, CertsError};

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT_CHAIN: &str = "cert-chain.pem";
const KEY: &str = "key.pem";
const SECRET: &str = "secret.yaml";

/// Create the shared root CA, per-cluster intermediates and workload certificates.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertsCommand {
    /// Create the root CA shared by every cluster: root-cert.pem, root-key.pem.
    Root(RootArgs),
    /// Create a cluster's intermediate CA: ca-cert.pem, ca-key.pem, root-cert.pem.
    Intermediate(IntermediateArgs),
    /// Issue a workload certificate: cert-chain.pem, key.pem, root-cert.pem.
    Workload(WorkloadArgs),
}

#[derive(clap::Args, Debug)]
struct RootArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long the root is valid, e.g. 3650d.
    #[arg(long, value_name = "DURATION", default_value = "3650d", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct IntermediateArgs {
    /// The cluster's name (a DNS label), as in the proxy's node.cluster.
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// Directory holding root-cert.pem and root-key.pem.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long the intermediate is valid (capped at the root's expiry), e.g. 365d.
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct WorkloadArgs {
    /// spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// Directory holding ca-cert.pem, ca-key.pem and root-cert.pem (an intermediate's --out).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long the certificate is valid (capped at the CA's expiry), e.g. 24h.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    /// Also write secret.yaml: a Kubernetes Secret of this name holding the three files.
    #[arg(long, value_name = "NAME")]
    secret: Option<String>,
    /// The Secret's namespace.
    #[arg(
        long,
        value_name = "NS",
        default_value = "default",
        requires = "secret"
    )]
    secret_namespace: String,
}

/// Runs `strait certs`: 0 when every file was written, 1 (with `error: ...`
/// on stderr) otherwise.
pub fn run(args: &CertsArgs) -> ExitCode {
    let result = match &args.command {
        CertsCommand::Root(a) => root(a),
        CertsCommand::Intermediate(a) => intermediate(a),
        CertsCommand::Workload(a) => workload(a),
    };
    match result {
        Ok(paths) => {
            let mut out = std::io::stdout().lock();
            for path in paths {
                let _ = writeln!(out, "wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            ExitCode::from(1)
        }
    }
}

fn root(args: &RootArgs) -> Result<Vec<PathBuf>, CertsError> {
    files::refuse_overwrite(&args.out, &[ROOT_CERT, ROOT_KEY], args.force)?;
    let ca = super::root(args.validity)?;
    let mut out = Output::new(&args.out);
    out.add(ROOT_CERT, ca.cert_pem, Mode::Public);
    out.add(ROOT_KEY, ca.key_pem, Mode::Private);
    out.write(args.force)
}

fn intermediate(args: &IntermediateArgs) -> Result<Vec<PathBuf>, CertsError> {
    files::refuse_overwrite(&args.out, &[CA_CERT, CA_KEY, ROOT_CERT], args.force)?;
    let (root_cert, root_cert_name) = files::read(&args.root, ROOT_CERT)?;
    let (root_key, root_key_name) = files::read(&args.root, ROOT_KEY)?;
    let root = Ca::load_named(&root_cert, &root_cert_name, &root_key, &root_key_name)?;
    let ca = super::intermediate(&root, &args.cluster, args.validity)?;
    let mut out = Output::new(&args.out);
    out.add(CA_CERT, ca.cert_pem, Mode::Public);
    out.add(CA_KEY, ca.key_pem, Mode::Private);
    out.add(ROOT_CERT, root_cert, Mode::Public);
    out.write(args.force)
}

fn workload(args: &WorkloadArgs) -> Result<Vec<PathBuf>, CertsError> {
    // Cheap argument checks first, so a typo fails before any file is read.
    super::parse_spiffe_id(&args.spiffe_id)?;
    if let Some(name) = &args.secret {
        check_secret_names(name, &args.secret_namespace)?;
    }
    let mut names = vec![CERT_CHAIN, KEY, ROOT_CERT];
    if args.secret.is_some() {
        names.push(SECRET);
    }
    files::refuse_overwrite(&args.out, &names, args.force)?;

    let (ca_cert, ca_cert_name) = files::read(&args.ca, CA_CERT)?;
    let (ca_key, ca_key_name) = files::read(&args.ca, CA_KEY)?;
    let (bundle, bundle_name) = files::read(&args.ca, ROOT_CERT)?;
    let ca = Ca::load_named(&ca_cert, &ca_cert_name, &ca_key, &ca_key_name)?;
    let issued = super::workload(&ca, &ca_cert, &args.spiffe_id, args.validity)?;
    // Catch a CA directory whose intermediate is not signed by its
    // root-cert.pem now, not at the first handshake.
    verify_chain_named(
        &issued.chain_pem,
        &format!("the chain issued by {ca_cert_name}"),
        &bundle,
        &bundle_name,
    )?;

    let secret = match &args.secret {
        Some(name) => Some(secret_yaml(
            name,
            &args.secret_namespace,
            &issued.chain_pem,
            &issued.key_pem,
            &bundle,
        )?),
        None => None,
    };
    let mut out = Output::new(&args.out);
    out.add(CERT_CHAIN, issued.chain_pem, Mode::Public);
    out.add(KEY, issued.key_pem, Mode::Private);
    out.add(ROOT_CERT, bundle, Mode::Public);
    if let Some(secret) = secret {
        out.add(SECRET, secret, Mode::Private);
    }
    out.write(args.force)
}

fn check_secret_names(name: &str, namespace: &str) -> Result<(), CertsError> {
    if !is_dns_subdomain(name) {
        return Err(CertsError::InvalidName {
            what: "Secret name",
            value: name.to_string(),
            rule: "must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)",
        });
    }
    if !crate::config::is_dns_label(namespace) {
        return Err(CertsError::InvalidName {
            what: "Secret namespace",
            value: namespace.to_string(),
            rule: "must be a DNS label (lowercase letters, digits and '-', at most 63 characters)",
        });
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(crate::config::is_dns_label)
}

/// A `v1` `Secret` of type `Opaque`; `stringData` keeps the PEM readable
/// and spares base64.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Secret<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    #[serde(rename = "type")]
    type_: &'static str,
    string_data: BTreeMap<&'static str, &'a str>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

fn secret_yaml(
    name: &str,
    namespace: &str,
    chain: &str,
    key: &str,
    bundle: &str,
) -> Result<String, CertsError> {
    let secret = Secret {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata { name, namespace },
        type_: "Opaque",
        string_data: BTreeMap::from([(CERT_CHAIN, chain), (KEY, key), (ROOT_CERT, bundle)]),
    };
    serde_yaml_ng::to_string(&secret).map_err(CertsError::Secret)
}
