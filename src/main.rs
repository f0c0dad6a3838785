//! The `tokengate` command line (SPEC §1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokengate::config;
use tokengate::logging::{self, LogFormat};

// glibc malloc showed up at ~4% of forwarding CPU; mimalloc's thread-local free lists are cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an unusable config on `run` (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "tokengate", version, about = "Reverse-proxy sidecar that mints signed JWTs for third-party SDKs")]
struct Cli {
    /// The YAML config file.
    #[arg(long, global = true, env = "TOKENGATE_CONFIG")]
    config: Option<PathBuf>,
    /// `json`: one object per line; `text`: for humans.
    #[arg(long, global = true, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// A RUST_LOG-style filter, e.g. `info` or `tokengate=debug,hyper=warn`.
    #[arg(long, global = true, env = "TOKENGATE_LOG", default_value = "info")]
    log_level: String,
    /// Runtime worker threads (overrides `workers:`); default: all cores.
    #[arg(long, global = true)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config: exit 0, or 1 with every error (file, key path, reason).
    Check,
    /// Print the JSON Schema of the config file.
    Schema,
    /// Run a bundled sample backend with tokengate in front, on loopback.
    Demo,
    /// Print what a token route would answer for a fake identity (debugging).
    Mint {
        #[arg(long)]
        route: String,
        #[arg(long)]
        user_id: String,
        /// Template inputs: `user.name=Alice`, `body.nonce=abc`, `path.phone=1555`, `query.x=1`, `header.x-y=z`.
        #[arg(long = "set", value_name = "SOURCE=VALUE")]
        sets: Vec<String>,
    },
    /// Print a new private key (PEM, PKCS#8).
    Keygen {
        #[arg(long, value_parser = ["ES256", "ES384", "RS256", "PS256", "EdDSA"])]
        alg: String,
        /// Write to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public JWK set of the config's keys.
    Jwks,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Check => {
            let Some(path) = &cli.config else {
                return usage("check needs --config FILE (or TOKENGATE_CONFIG)");
            };
            match tokengate::app::load(path) {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run => {
            let Some(path) = &cli.config else {
                return usage("run needs --config FILE (or TOKENGATE_CONFIG)");
            };
            let loaded = match config::load_file(path) {
                Ok(loaded) => loaded,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            let mut loaded = loaded;
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            loaded.config.workers = Some(cli.workers.or(loaded.config.workers).unwrap_or(cores).max(1));
            with_runtime(&cli, async move {
                let app = tokengate::App::bind(loaded).await.map_err(|e| tokengate::error::chain(&e))?;
                tracing::info!(listen = %app.public_addr(), admin = %app.admin_addr(), "tokengate listening");
                let stop = app.shutdown_token();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    stop.cancel();
                });
                app.run().await;
                Ok(())
            })
        }
        Command::Keygen { alg, out } => keygen(alg, out.as_deref()),
        Command::Jwks => {
            let Some(path) = &cli.config else { return usage("jwks needs --config FILE (or TOKENGATE_CONFIG)") };
            match tokengate::app::load(path) {
                Ok(gateway) => {
                    println!("{}", String::from_utf8_lossy(&gateway.jwks));
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Mint { route, user_id, sets } => {
            let Some(path) = &cli.config else { return usage("mint needs --config FILE (or TOKENGATE_CONFIG)") };
            let gateway = match tokengate::app::load(path) {
                Ok(g) => g,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            match runtime.block_on(tokengate::token::preview(&gateway, route, user_id, sets)) {
                Ok((status, body)) => {
                    println!("{body}");
                    if status.is_success() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => usage(&e),
            }
        }
        Command::Demo => {
            if std::env::var_os("TOKENGATE_SECRET").is_none() {
                // Still single-threaded: no other thread reads the environment yet.
                std::env::set_var("TOKENGATE_SECRET", uuid::Uuid::new_v4().simple().to_string());
            }
            with_runtime(&cli, async {
                let stop = tokio_util::sync::CancellationToken::new();
                let s = stop.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    s.cancel();
                });
                tokengate::demo::run(stop).await
            })
        }
    }
}

fn keygen(alg: &str, out: Option<&std::path::Path>) -> ExitCode {
    let alg: config::Algorithm = match serde_json::from_value(serde_json::Value::String(alg.to_owned())) {
        Ok(a) => a,
        Err(_) => return usage(&format!("unknown algorithm {alg}")),
    };
    let pem = match tokengate::keys::generate_pem(alg) {
        Ok(pem) => pem,
        Err(e) => return usage(&e),
    };
    match out {
        None => print!("{pem}"),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(pem.as_bytes()));
            if let Err(e) = written {
                eprintln!("tokengate: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("tokengate: {msg}");
    ExitCode::from(2)
}

/// Installs logging, builds the main thread's runtime and runs `main`. The main thread is one
/// worker; `App` starts the others (one current-thread runtime each, nginx's model).
fn with_runtime(cli: &Cli, main: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        return usage(&e);
    }
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokengate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tokengate failed");
            eprintln!("tokengate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
