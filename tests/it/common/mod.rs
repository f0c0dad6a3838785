//! Test helpers: a fake backend, tokengate in-process or as the real binary, and clients.
#![allow(dead_code)]

pub mod backend;
#[cfg(feature = "services")]
pub mod caddy;
pub mod client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokengate::state::State;
use tokio_util::sync::CancellationToken;

/// tokengate running in this process on 127.0.0.1:0.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stop: CancellationToken,
    pub state: Arc<State>,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// The config used by every in-process test: loopback listeners, the given upstream, and
/// `extra` YAML appended (top-level keys).
pub fn config_yaml(upstream: &str, extra: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream:\n  url: {upstream}\n{extra}\n")
}

/// Starts tokengate in front of `upstream` with `extra` YAML.
pub async fn spawn_app(upstream: &str, extra: &str) -> TestApp {
    spawn_app_yaml(&config_yaml(upstream, extra)).await
}

pub async fn spawn_app_yaml(yaml: &str) -> TestApp {
    let loaded = tokengate::config::load_str(yaml, "test.yaml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let app = tokengate::App::bind(loaded, tokengate::config::Overrides::default()).await.expect("bind");
    let (addr, admin, stop, state) = (app.public_addr(), app.admin_addr(), app.shutdown_token(), app.state());
    let task = tokio::spawn(app.run());
    TestApp { addr, admin, stop, state, task }
}

/// A port on loopback with nothing listening, never one this process handed out before (the
/// kernel may give a just-closed port again, and two listeners of one test must differ).
pub fn closed_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// A fresh directory under the target dir, removed and recreated.
pub fn temp_dir(name: &str) -> PathBuf {
    // Unique per call: tests run in parallel, and two sharing a directory would read each
    // other's files (a certificate one wrote, a key the other did).
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn binary_yaml(addr: SocketAddr, admin: SocketAddr, upstream: &str, extra: &str) -> String {
    format!("listen: {addr}\nadmin_listen: {admin}\nupstream:\n  url: {upstream}\n{extra}\n")
}

/// The real `tokengate` binary, running with a config file.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stderr: PathBuf,
    /// The config file it runs.
    pub config: PathBuf,
    /// Its own directory (logs; the shipped files' SQLite ledger, `ledger.db`).
    pub dir: PathBuf,
}

impl Binary {
    /// Writes `yaml` (with `listen`/`admin_listen` on free ports) and starts `tokengate run`.
    pub async fn start(name: &str, upstream: &str, extra: &str, args: &[&str]) -> Binary {
        Self::start_with(name, upstream, extra, args, &[]).await
    }

    /// Like `start`, with environment variables for the process.
    pub async fn start_with(name: &str, upstream: &str, extra: &str, args: &[&str], envs: &[(&str, &str)]) -> Binary {
        let dir = temp_dir(name);
        let (addr, admin) = (closed_port(), closed_port());
        let config = dir.join("tokengate.yaml");
        std::fs::write(&config, binary_yaml(addr, admin, upstream, extra)).unwrap();
        Self::spawn(&dir, &config, addr, admin, args, envs).await
    }

    /// The config text `start` writes, for this binary's ports.
    pub fn yaml(&self, upstream: &str, extra: &str) -> String {
        binary_yaml(self.addr, self.admin, upstream, extra)
    }

    /// Reloads counted so far: (success, failure).
    pub async fn reloads(&self) -> (u64, u64) {
        let metrics = client::get(self.admin, "/metrics", &[]).await.expect("metrics").text();
        let count = |result: &str| {
            let prefix = format!("tokengate_config_reloads_total{{result=\"{result}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0)
        };
        (count("success"), count("failure"))
    }

    /// Waits (up to `within`) until the reload counts reach `want`; panics with the logs if not.
    pub async fn wait_reloads(&self, want: (u64, u64), within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.reloads().await;
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline && got.0 <= want.0 && got.1 <= want.1,
                "reloads {got:?}, wanted {want:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrites the config file (in place) and sends SIGHUP; waits for the reload to count.
    pub async fn reload_with(&self, yaml: &str) {
        let before = self.reloads().await;
        std::fs::write(&self.config, yaml).unwrap();
        self.signal("HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while self.reloads().await == before {
            assert!(std::time::Instant::now() < deadline, "no reload; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Starts `tokengate run` with a shipped config file; listen/admin/upstream come from the
    /// `TOKENGATE_*` variables the shipped files read, plus `envs`.
    pub async fn start_file(name: &str, file: &str, backend: &str, envs: &[(&str, &str)]) -> Binary {
        let dir = temp_dir(name);
        let (addr, admin) = (closed_port(), closed_port());
        let (listen, admin_listen, session) = (addr.to_string(), admin.to_string(), format!("{backend}/api/me"));
        let ledger = dir.join("ledger.db").display().to_string();
        let mut all = vec![
            ("TOKENGATE_LEDGER", ledger.as_str()),
            ("TOKENGATE_LISTEN", listen.as_str()),
            ("TOKENGATE_ADMIN_LISTEN", admin_listen.as_str()),
            ("TOKENGATE_UPSTREAM", backend),
            ("TOKENGATE_SESSION_URL", session.as_str()),
        ];
        all.extend_from_slice(envs);
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        Self::spawn(&dir, &config, addr, admin, &[], &all).await
    }

    /// Starts `tokengate run --config CONFIG` on the given ports; logs go to `dir`.
    pub async fn spawn(
        dir: &Path,
        config: &Path,
        addr: SocketAddr,
        admin: SocketAddr,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Binary {
        let stderr = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn tokengate");
        let bin = Binary { child, addr, admin, stderr, config: config.to_path_buf(), dir: dir.to_path_buf() };
        bin.wait_ready().await;
        bin
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.admin).await.is_err() {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            if let Ok(r) = client::get(self.admin, "/readyz", &[]).await {
                if r.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tokengate did not become ready; stderr:\n{}", self.logs());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A field of /proc/PID/status, in kB for the memory ones.
    pub fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis the `services` tests share: `TOKENGATE_TEST_REDIS_URL`, else the local server
/// every session and CI run has (the same default as `.ci/run`).
#[cfg(feature = "services")]
pub fn test_redis_url() -> String {
    std::env::var("TOKENGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The PostgreSQL the `services` tests share: `TOKENGATE_TEST_POSTGRES_URL`, else the local
/// server (the same default as `.ci/run`).
#[cfg(feature = "services")]
pub fn test_postgres_url() -> String {
    std::env::var("TOKENGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}
