//! Keys kept in an HSM, used through its PKCS#11 module (`keys[].pkcs11`): the private key
//! never enters tokengate's memory. Loading one finds the token, logs in, finds the key and
//! reads its public half (so `check` fails on a wrong PIN or label, naming the field); signing
//! queues the signature for the key's signer threads (`pool`).

use std::time::Duration;

use serde_json::Value;

use crate::config::{Algorithm, Pkcs11Config};
use crate::metrics::SignerMetrics;

mod module;
mod pool;
mod public;
mod session;

pub use module::Modules;
pub use pool::Unavailable;

/// An HSM key, opened and ready to sign.
pub struct HsmKey {
    pool: pool::Pool,
    timeout: Duration,
    pub jwk: Option<Value>,
    pub fingerprint: String,
}

impl HsmKey {
    /// Opens the key; the error names the field below `keys[i]` at fault and why.
    pub fn open(
        cfg: &Pkcs11Config,
        algorithm: Algorithm,
        kid: &str,
        modules: &Modules,
    ) -> Result<Self, (&'static str, String)> {
        let module = modules.get(&cfg.module).map_err(|e| ("pkcs11.module", e))?;
        let at = session::Location::new(module, cfg, algorithm);
        let opened = session::KeySession::open(&at).map_err(|e| (e.field(), e.reason().to_owned()))?;
        let public = public::read(&opened, &at, kid).map_err(|e| (e.field(), e.reason().to_owned()))?;
        let pool = pool::Pool::new(at, opened, cfg.sessions, cfg.queue);
        Ok(Self { pool, timeout: cfg.timeout.0, jwk: public.jwk, fingerprint: public.fingerprint })
    }

    /// Signs `message` (the JWS signing input) in the HSM.
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Unavailable> {
        self.pool.sign(message, self.timeout).await
    }

    /// False while the token cannot sign (`/readyz` says so).
    pub fn is_up(&self) -> bool {
        self.pool.is_up()
    }

    pub fn start_metrics(&self, metrics: SignerMetrics) {
        self.pool.start_metrics(metrics);
    }
}
