//! The `strait` binary: the CLI edge. Parses arguments, loads and validates
//! config, initialises tracing, builds the runtime, runs, and maps the
//! outcome to an exit code (0 ok, 1 failed, 2 usage or not built yet).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // the CLI edge is where output is printed

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use strait::config::{self, EnvOverrides, LogFormat, ModeOverride};
use strait::identity::{IdentityMetrics, IdentityStore};
use strait::{demo, discovery, App};

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "A data-plane sidecar for multi-cluster Kubernetes service meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-pod proxy (or validate its config with --check-config).
    Proxy(ProxyArgs),
    /// Run the control plane (not built yet).
    Control(NotBuilt),
    /// Install the pod's iptables rules (not built yet).
    Init(NotBuilt),
    /// Add the sidecar to Kubernetes manifests (not built yet).
    Inject(NotBuilt),
    /// Run the mutating admission webhook (not built yet).
    Webhook(NotBuilt),
    /// Create a shared root CA, per-cluster intermediates and workload certificates.
    Certs(strait::certs::CertsArgs),
    /// Run a self-contained demo on loopback and show where requests go.
    Demo,
}

#[derive(Args)]
struct ProxyArgs {
    /// The config file (YAML); watched and hot-reloaded.
    #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
    config: Option<PathBuf>,
    /// Validate FILE, print every problem with its field path, and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// `sidecar` or `gateway`; overrides the config file's `mode` (default `sidecar`).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sidecar,
    Gateway,
}

#[derive(Args)]
struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(args) => proxy(args),
        Command::Demo => run_demo(),
        Command::Control(_) => not_built("control", "the control stream (architecture §8)"),
        Command::Init(_) => not_built(
            "init",
            "sidecar injection (architecture §2: init, inject, webhook)",
        ),
        Command::Inject(_) => not_built(
            "inject",
            "sidecar injection (architecture §2: init, inject, webhook)",
        ),
        Command::Webhook(_) => not_built(
            "webhook",
            "sidecar injection (architecture §2: init, inject, webhook)",
        ),
        Command::Certs(args) => strait::certs::run(&args),
    }
}

fn not_built(command: &str, area: &str) -> ExitCode {
    eprintln!("strait {command}: not built yet; it arrives with {area}");
    ExitCode::from(2)
}

fn proxy(args: ProxyArgs) -> ExitCode {
    if let Some(path) = args.check_config {
        return check_config(&path);
    }
    let Some(path) = args.config else {
        eprintln!("strait proxy: --config FILE is required");
        return ExitCode::from(2);
    };
    let overrides = ModeOverride {
        inner: EnvOverrides,
        mode: args.mode.map(|m| match m {
            Mode::Sidecar => "sidecar",
            Mode::Gateway => "gateway",
        }),
    };
    let loaded = match config::load_file(&path, &overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("strait proxy: {e}");
            return ExitCode::from(1);
        }
    };
    init_tracing(loaded.config.log.format, &loaded.config.log.level);
    let runtime = match build_runtime(loaded.config.runtime.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the runtime");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let bound = App::new(loaded)
            .with_overrides(Arc::new(overrides))
            .bind()
            .await?;
        bound.run(strait::shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "strait proxy failed");
            eprintln!("strait proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let problems = match config::load_file(path, &EnvOverrides) {
        Err(e) => e.problems(),
        Ok(loaded) => match discovery::translate(&loaded.config, &loaded.manifests) {
            Err(problems) => problems,
            Ok(snapshot) => {
                // The identity files are checked as the proxy would load them.
                if let Some(problem) = identity_problem(&loaded.config) {
                    return print_problems(path, &[problem]);
                }
                let endpoints: usize = snapshot
                    .services
                    .values()
                    .flat_map(|s| &s.ports)
                    .flat_map(|p| &p.clusters)
                    .map(|c| c.endpoints.len())
                    .sum();
                println!(
                    "{}: ok: {} service(s), {} endpoint(s), {} cluster(s), local cluster {}",
                    path.display(),
                    snapshot.services.len(),
                    endpoints,
                    snapshot.clusters.len(),
                    snapshot.local_cluster,
                );
                return ExitCode::SUCCESS;
            }
        },
    };
    print_problems(path, &problems)
}

fn print_problems(path: &std::path::Path, problems: &[config::Problem]) -> ExitCode {
    let mut err = std::io::stderr().lock();
    for p in problems {
        let _ = writeln!(err, "{}: {p}", path.display());
    }
    let _ = writeln!(err, "{} problem(s)", problems.len());
    ExitCode::from(1)
}

/// Why the configured identity files would not load, if they would not.
fn identity_problem(config: &config::Config) -> Option<config::Problem> {
    let identity = config.identity.as_ref()?;
    let metrics = IdentityMetrics::register(&prometheus::Registry::new()).ok()?;
    IdentityStore::load(identity, metrics)
        .err()
        .map(|e| config::Problem::new("identity", e.to_string()))
}

fn run_demo() -> ExitCode {
    init_tracing(LogFormat::Text, "warn");
    let runtime = match build_runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait demo: cannot build the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(demo::run(&mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
