//! TLS on the public listener: rustls with aws-lc-rs, TLS 1.2 and 1.3 only, ALPN h2 + http/1.1.
//! Built with the config, so a reload that finds new certificate files serves them to the next
//! connection; open connections keep the certificate they were made with.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

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
