//! TLS to PostgreSQL with libpq's `sslmode` meanings: `disable` is plain text; `prefer` (the
//! default) and `require` encrypt without checking who answers, as libpq does; `verify-full`
//! checks the server's certificate chain and name against the system roots and `ca_file`.
//! Handshake signatures are checked in every mode.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The URL with `sslmode=verify-full` spelled as tokio-postgres knows it (`require`), and
/// whether the certificate must be verified. `verify-ca` is refused: it would check the chain
/// and not the name, which rustls does not offer.
pub fn split_sslmode(url: &str) -> Result<(String, bool), String> {
    if url.contains("sslmode=verify-ca") {
        return Err("sslmode=verify-ca is not supported: use sslmode=verify-full (chain and host name)".into());
    }
    match url.contains("sslmode=verify-full") {
        true => Ok((url.replacen("sslmode=verify-full", "sslmode=require", 1), true)),
        false => Ok((url.to_owned(), false)),
    }
}

/// The client config for a PostgreSQL connection.
pub fn client_config(verify: bool, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, crate::tls::TlsError> {
    if verify {
        return crate::tls::client_config(ca_file).map(|(config, _)| config);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(crate::tls::TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth())
}

/// libpq's `sslmode=require`: any certificate, but a handshake signed by its key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_is_require_plus_verification() {
        assert_eq!(
            split_sslmode("postgres://h/db?sslmode=verify-full").unwrap(),
            ("postgres://h/db?sslmode=require".into(), true)
        );
        assert!(!split_sslmode("postgres://h/db").unwrap().1);
        assert!(split_sslmode("postgres://h/db?sslmode=verify-ca").is_err());
    }
}
