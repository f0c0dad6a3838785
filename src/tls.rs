//! TLS, rustls with aws-lc-rs, TLS 1.2 and 1.3 only. On the public listener (ALPN h2 and
//! http/1.1), built with the config, so a reload that finds new certificate files serves them to
//! the next connection while open ones keep theirs. And as a client, for `https://` upstreams,
//! session endpoints and JWKS URLs: the system's roots plus an optional `ca_file`, SNI from the
//! URL's host.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{FieldError, HttpUrl};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no PEM certificate chain in {path}")]
    Cert {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no PEM private key in {path}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate and key do not make a TLS config")]
    Config(#[source] rustls::Error),
    #[error("no usable CA certificate in {path}")]
    Ca { path: String },
    #[error("{0:?} is not a host name TLS can check")]
    ServerName(String),
}

/// An acceptor and a digest of the material it was made from (to tell a rotation in logs).
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the certificate chain and key files, hex.
    pub digest: String,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

/// Builds the acceptor from PEM files.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<Tls, TlsError> {
    let (cert_pem, key_pem) = (read(cert_file)?, read(key_file)?);
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Cert { path: cert_file.display().to_string(), source })?;
    if certs.is_empty() {
        let source = rustls::pki_types::pem::Error::NoItemsFound;
        return Err(TlsError::Cert { path: cert_file.display().to_string(), source });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|source| TlsError::Key { path: key_file.display().to_string(), source })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&cert_pem);
    ctx.update(&key_pem);
    let digest = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), digest })
}

/// A TLS client for one `https://` host.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    /// The host and the digest of the CA file: two clients with the same are the same.
    pub identity: String,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

/// The system's trusted roots, read once per process (a changed system store needs a restart;
/// a changed `ca_file` only a reload).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system root certificate could not be read");
        }
        found.certs
    })
}

/// The hex SHA-256 of a CA file's content (empty without one, or when it cannot be read: the
/// build that reads it reports that): what makes a rotated CA a new client.
pub fn ca_digest(ca_file: Option<&Path>) -> String {
    ca_file.and_then(|f| std::fs::read(f).ok()).map(|bytes| hex_sha256(&bytes)).unwrap_or_default()
}

fn hex_sha256(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The system's roots and the certificates of `ca_file` as one PEM bundle (for clients that
/// take their trust as PEM, such as the Redis client); errors as `client_config`'s.
pub fn roots_pem(ca_file: &Path) -> Result<Vec<u8>, TlsError> {
    use base64::Engine;
    let extra = read(ca_file)?;
    let added = CertificateDer::pem_slice_iter(&extra).filter_map(Result::ok).count();
    if added == 0 {
        return Err(TlsError::Ca { path: ca_file.display().to_string() });
    }
    let mut pem = Vec::new();
    for cert in system_roots() {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem.extend_from_slice(&extra);
    Ok(pem)
}

/// A client for `host` (a name or an IP address, brackets allowed) trusting the system's roots
/// and, when given, the certificates in `ca_file`.
pub fn client(host: &str, ca_file: Option<&Path>) -> Result<TlsClient, TlsError> {
    let (mut config, ca_digest) = client_config(ca_file)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))?;
    Ok(TlsClient {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
        identity: format!("{bare}\u{0}{ca_digest}"),
    })
}

/// A TLS 1.2+ client config trusting the system's roots and the certificates in `ca_file`,
/// with the hex SHA-256 of that file (empty without one).
pub fn client_config(ca_file: Option<&Path>) -> Result<(rustls::ClientConfig, String), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(system_roots().iter().cloned());
    tracing::debug!(roots = added, "system roots");
    let mut ca_digest = String::new();
    if let Some(path) = ca_file {
        let pem = read(path)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::Ca { path: path.display().to_string() });
        }
        ca_digest = hex_sha256(&pem);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, ca_digest))
}

/// The TLS client for `url` when it is `https://` (None for `http://`); errors carry the key
/// path under `at` (`upstream`, `auth_hooks.session`).
pub fn client_for(url: &HttpUrl, ca_file: Option<&Path>, at: &str) -> Result<Option<TlsClient>, FieldError> {
    if !url.is_https() {
        return Ok(None);
    }
    client(url.host_name(), ca_file).map(Some).map_err(|e| {
        let key = if matches!(e, TlsError::ServerName(_)) { "url" } else { "ca_file" };
        FieldError::new(format!("{at}.{key}"), crate::logging::chain(&e))
    })
}
