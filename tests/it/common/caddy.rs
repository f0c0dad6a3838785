//! Caddy as a peer in front of tokengate: started on a Caddyfile, with its state under the
//! test's directory, and killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Caddy(Child);

impl Caddy {
    /// Runs `program` on `caddyfile` (written to `dir`), with `envs`; waits up to 15 s for it to
    /// listen on `port`, and panics with its log if it does not.
    pub fn start(program: &str, dir: &Path, caddyfile: &str, port: u16, envs: &[(&str, String)]) -> Caddy {
        let file = dir.join("Caddyfile");
        std::fs::write(&file, caddyfile).unwrap();
        let log = std::fs::File::create(dir.join("caddy.log")).unwrap();
        let child = Command::new(program)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let caddy = Caddy(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(dir.join("caddy.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "caddy did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        caddy
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
