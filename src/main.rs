//! The `tokengate` command line (SPEC §1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokengate::config;
use tokengate::logging::{self, LogFormat};

mod allocator;

// glibc malloc showed up at ~4% of forwarding CPU; mimalloc's thread-local free lists are cheaper.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

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
    /// Print a ready, commented config for a vendor (`--list` for all of them).
    Init {
        /// A profile name (see --list).
        vendor: Option<String>,
        /// List the profiles, one line each, with the environment variables they read.
        #[arg(long)]
        list: bool,
    },
}

/// `tokengate init`: a profile's config on stdout, or the list of them.
fn init(vendor: Option<&str>, list: bool) -> ExitCode {
    use tokengate::profiles::{find, PROFILES};
    match (vendor, list) {
        (None, true) => {
            for p in PROFILES {
                let env = p.required_env().join(", ");
                println!("{:<18} {}  [env: {}]", p.name, p.summary, if env.is_empty() { "none" } else { &env });
            }
            ExitCode::SUCCESS
        }
        (Some(name), false) => match find(name) {
            Some(p) => {
                print!("{}", p.text);
                ExitCode::SUCCESS
            }
            None => usage(&format!("no profile named {name:?}; `tokengate init --list` lists them")),
        },
        _ => usage("init takes a profile name, or --list"),
    }
}

fn main() -> ExitCode {
    without_huge_pages();
    let cli = Cli::parse();
    let code = command(&cli);
    // HSM modules last: no signature is wanted any more, and none may run during exit.
    tokengate::hsm::Modules::process().close();
    code
}

fn command(cli: &Cli) -> ExitCode {
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Check => {
            let Some(path) = &cli.config else {
                return usage("check needs --config FILE (or TOKENGATE_CONFIG)");
            };
            match tokengate::gateway::load(path) {
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
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            let overrides = config::Overrides { workers: cli.workers, default_workers: cores };
            with_runtime(cli, async move {
                // Before anything else: SIGHUP's default action would end the process.
                let signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
                let app = tokengate::App::bind(loaded, overrides).await.map_err(|e| tokengate::logging::chain(&e))?;
                let app = app.with_memory_trim(trim_memory);
                tracing::info!(
                    listen = %app.public_addr(),
                    admin = %app.admin_addr(),
                    hash = app.state().gateway.load().hash(),
                    "tokengate listening"
                );
                tokio::spawn(signals.dispatch(app.shutdown_token(), app.reload_handle()));
                app.run().await;
                Ok(())
            })
        }
        Command::Keygen { alg, out } => keygen(alg, out.as_deref()),
        Command::Init { vendor, list } => init(vendor.as_deref(), *list),
        Command::Jwks => {
            let Some(path) = &cli.config else { return usage("jwks needs --config FILE (or TOKENGATE_CONFIG)") };
            match tokengate::gateway::load(path) {
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
            let gateway = match tokengate::gateway::load(path) {
                Ok(g) => g,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return usage(&format!("cannot start the runtime: {e}")),
            };
            match runtime.block_on(tokengate::token::preview(&gateway.routes, route, user_id, sets)) {
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
            with_runtime(cli, async {
                let signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
                let stop = tokio_util::sync::CancellationToken::new();
                tokio::spawn(signals.dispatch(stop.clone(), None));
                tokengate::demo::run(stop).await
            })
        }
    }
}

/// Transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` says otherwise.
/// mimalloc is built without its request for them (the `no_thp` feature: no `MADV_HUGEPAGE`
/// on its arenas); this covers kernels set to `always`, which give them unasked. A sidecar's
/// heap is small: with them, its RSS moves in 2 MiB steps, a huge page stays whole while one
/// block on it lives (closed connections gave little back), and an idle process starts
/// ~3.5 MiB larger. Debian's nginx, the baseline, runs on glibc's malloc, which asks for none.
fn without_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes nothing but the
    // process's huge-page flag; a kernel without it returns an error, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Returns the memory mimalloc holds for the calling thread to the OS (freed pages it would
/// otherwise keep, counted in RSS, until this thread allocated again).
fn trim_memory() {
    // SAFETY: `mi_collect` takes no pointer and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
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

/// The signals `run` answers: SIGTERM and SIGINT shut down, SIGHUP reloads.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Cancels `stop` on SIGTERM or SIGINT; asks `reload` for a reload on each SIGHUP.
    async fn dispatch(
        mut self,
        stop: tokio_util::sync::CancellationToken,
        reload: Option<tokengate::reload::ReloadHandle>,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break tracing::info!("SIGTERM received"),
                _ = self.int.recv() => break tracing::info!("SIGINT received"),
                _ = self.hup.recv() => match &reload {
                    Some(r) => {
                        tracing::info!("SIGHUP received: reloading");
                        r.request();
                    }
                    None => tracing::warn!("SIGHUP received, but there is no config file to reload"),
                },
            }
        }
        stop.cancel();
    }
}
