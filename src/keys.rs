//! Signing keys: parsed once at load into the crypto backend's key types (aws-lc-rs), so that
//! signing never re-parses PEM/DER; their public halves as a JWK set; key rotation via `retired`.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::{Algorithm, FieldError, KeyConfig};
use crate::hsm::{HsmKey, Modules, Unavailable};
use crate::metrics::SignerFamilies;

/// A loaded signing key. Never printed: `Debug` shows only the id and algorithm.
pub struct SigningKey {
    pub id: String,
    /// The `kid` tokens name it by: the id, or a service account's `private_key_id`.
    pub kid: String,
    /// A service account's `client_email` (what `{{ key.client_email }}` says).
    pub client_email: Option<String>,
    pub algorithm: Algorithm,
    pub retired: bool,
    /// Short SHA-256 of the key material, so a rotated key never matches a cached token.
    pub fingerprint: String,
    /// The public JWK (asymmetric keys only).
    pub jwk: Option<serde_json::Value>,
    signer: Signer,
}

enum Signer {
    // Boxed: the keyed state of HS512 is ~400 bytes inline, the others are handles.
    Hmac(Box<HmacKey>),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ed(Ed25519KeyPair),
    /// In an HSM: signed by its PKCS#11 module, on the key's signer threads.
    Hsm(HsmKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {:?})", self.id, self.algorithm)
    }
}

/// An HMAC key, keyed once at load: signing copies the keyed state (a few hundred bytes) and
/// hashes the message, where aws-lc-rs's `hmac::sign` copied its ~1.2 KB context three times.
enum HmacKey {
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

impl HmacKey {
    /// HMAC takes a key of any length (a long one is hashed first); the error is the crate's.
    fn new(algorithm: Algorithm, secret: &[u8]) -> Result<Self, String> {
        let rejected = |e: hmac::digest::InvalidLength| format!("the HMAC secret was rejected: {e}");
        Ok(match algorithm {
            Algorithm::HS256 => Self::Sha256(Hmac::new_from_slice(secret).map_err(rejected)?),
            Algorithm::HS384 => Self::Sha384(Hmac::new_from_slice(secret).map_err(rejected)?),
            _ => Self::Sha512(Hmac::new_from_slice(secret).map_err(rejected)?),
        })
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        fn mac<M: Mac + Clone>(key: &M, message: &[u8]) -> Vec<u8> {
            let mut mac = key.clone();
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256(k) => mac(k, message),
            Self::Sha384(k) => mac(k, message),
            Self::Sha512(k) => mac(k, message),
        }
    }
}

/// Why a token was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Inside the crypto library (should not happen with a key that loaded).
    #[error("signing with key {0:?} failed")]
    Failed(String),
    /// An HSM key's signers cannot sign now (queue full, too slow, token gone): a 503.
    #[error("key {key:?} cannot sign now: {why}")]
    Unavailable { key: String, why: Unavailable },
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use crate::config::Algorithm as A;
        use jsonwebtoken::Algorithm as J;
        match self {
            A::HS256 => J::HS256,
            A::HS384 => J::HS384,
            A::HS512 => J::HS512,
            A::RS256 => J::RS256,
            A::RS384 => J::RS384,
            A::RS512 => J::RS512,
            A::PS256 => J::PS256,
            A::PS384 => J::PS384,
            A::PS512 => J::PS512,
            A::ES256 => J::ES256,
            A::ES384 => J::ES384,
            A::EdDSA => J::EdDSA,
        }
    }
}

impl SigningKey {
    /// Loads one key; the error names the field below `keys[i]` and what is wrong.
    pub fn load(cfg: &KeyConfig, modules: &Modules) -> Result<Self, (&'static str, String)> {
        let field = if cfg.algorithm.is_hmac() { "secret" } else { "private_key" };
        match &cfg.pkcs11 {
            Some(hsm) => Self::open_hsm(cfg, hsm, modules),
            None => Self::parse(cfg).map_err(|reason| (field, reason)),
        }
    }

    /// A key kept in an HSM: its public half and fingerprint come from the token.
    fn open_hsm(
        cfg: &KeyConfig,
        hsm: &crate::config::Pkcs11Config,
        modules: &Modules,
    ) -> Result<Self, (&'static str, String)> {
        let key = HsmKey::open(hsm, cfg.algorithm, &cfg.id, modules)?;
        Ok(Self {
            id: cfg.id.clone(),
            kid: cfg.id.clone(),
            client_email: None,
            algorithm: cfg.algorithm,
            retired: cfg.retired,
            fingerprint: key.fingerprint.clone(),
            jwk: key.jwk.clone(),
            signer: Signer::Hsm(key),
        })
    }

    /// A key given as PEM, a secret or a service-account file.
    fn parse(cfg: &KeyConfig) -> Result<Self, String> {
        let account = cfg.service_account.as_ref().map(|json| ServiceAccount::parse(json.expose())).transpose()?;
        let from_base64 = match &cfg.private_key_base64 {
            Some(b64) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.expose().trim())
                    .ok()
                    .and_then(|pem| String::from_utf8(pem).ok())
                    .map(crate::config::Secret::new)
                    .ok_or("private_key_base64 is not a base64-encoded PEM key")?,
            ),
            None => None,
        };
        let with_pem;
        let cfg = match account.as_ref().map(|a| a.private_key.clone()).or(from_base64) {
            Some(pem) => {
                with_pem = KeyConfig { private_key: Some(pem), ..cfg.clone() };
                &with_pem
            }
            None => cfg,
        };
        let kid = account.as_ref().map_or_else(|| cfg.id.clone(), |a| a.private_key_id.clone());
        let (signer, material): (Signer, Vec<u8>) = if cfg.algorithm.is_hmac() {
            let bytes = match (&cfg.secret, &cfg.secret_base64) {
                (Some(s), _) => s.expose().as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b.expose().trim())
                    .map_err(|e| format!("secret_base64 is not valid base64: {e}"))?,
                (None, None) => return Err("an HMAC key needs secret or secret_base64".into()),
            };
            (Signer::Hmac(Box::new(HmacKey::new(cfg.algorithm, &bytes)?)), bytes)
        } else {
            let pem = cfg.private_key.as_ref().ok_or("needs private_key_file (a PEM private key)")?;
            let der = PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
                .map_err(|e| format!("not a PEM private key: {e}"))?;
            let bad =
                |e: aws_lc_rs::error::KeyRejected| format!("not a valid {} private key: {e}", cfg.algorithm.name());
            let signer = match cfg.algorithm {
                Algorithm::ES256 | Algorithm::ES384 => {
                    let alg = if cfg.algorithm == Algorithm::ES256 {
                        &sig::ECDSA_P256_SHA256_FIXED_SIGNING
                    } else {
                        &sig::ECDSA_P384_SHA384_FIXED_SIGNING
                    };
                    Signer::Ecdsa(EcdsaKeyPair::from_private_key_der(alg, der.secret_der()).map_err(bad)?)
                }
                Algorithm::EdDSA => {
                    Signer::Ed(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_der()).map_err(bad)?)
                }
                rsa => {
                    let pair = match &der {
                        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                        other => RsaKeyPair::from_pkcs8(other.secret_der()),
                    }
                    .map_err(bad)?;
                    let encoding: &'static dyn sig::RsaEncoding = match rsa {
                        Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                        Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                        Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                        Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                        Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                        _ => &sig::RSA_PSS_SHA512,
                    };
                    Signer::Rsa(pair, encoding)
                }
            };
            (signer, der.secret_der().to_vec())
        };
        let jwk = if cfg.algorithm.is_hmac() { None } else { Some(public_jwk(cfg, &kid)?) };
        let hash = digest::digest(&digest::SHA256, &material);
        let fingerprint = hash.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let client_email = account.map(|a| a.client_email);
        Ok(Self {
            id: cfg.id.clone(),
            kid,
            client_email,
            algorithm: cfg.algorithm,
            retired: cfg.retired,
            fingerprint,
            jwk,
            signer,
        })
    }

    /// Signs `message` (the JWS signing input) and returns the raw signature bytes. Only an
    /// HSM key waits (for its signer threads); the others sign here.
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let fail = |_| SignError::Failed(self.id.clone());
        match &self.signer {
            Signer::Hsm(k) => k.sign(message).await.map_err(|why| SignError::Unavailable { key: self.id.clone(), why }),
            Signer::Hmac(k) => Ok(k.sign(message)),
            Signer::Ecdsa(k) => Ok(k.sign(&SystemRandom::new(), message).map_err(fail)?.as_ref().to_vec()),
            Signer::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Signer::Rsa(k, encoding) => {
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(*encoding, &SystemRandom::new(), message, &mut out).map_err(fail)?;
                Ok(out)
            }
        }
    }
}

/// The public JWK of an asymmetric key, via jsonwebtoken's JWK support.
fn public_jwk(cfg: &KeyConfig, kid: &str) -> Result<serde_json::Value, String> {
    let pem = cfg.private_key.as_ref().map(|p| p.expose().as_bytes()).unwrap_or_default();
    let key = match cfg.algorithm {
        Algorithm::ES256 | Algorithm::ES384 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem),
    }
    .map_err(|e| format!("cannot derive the public key: {e}"))?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, cfg.algorithm.to_jsonwebtoken())
        .map_err(|e| format!("cannot derive the public key: {e}"))?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    serde_json::to_value(&jwk).map_err(|e| e.to_string())
}

/// The fields of a Google service-account key file that signing needs.
struct ServiceAccount {
    private_key: crate::config::Secret,
    private_key_id: String,
    client_email: String,
}

impl ServiceAccount {
    fn parse(json: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|_| "service_account_file is not JSON (expected the key file Google issues)".to_owned())?;
        let field = |name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("service_account_file has no {name:?}"))
        };
        if v.get("type").and_then(serde_json::Value::as_str) != Some("service_account") {
            return Err("service_account_file is not a service-account key (\"type\": \"service_account\")".into());
        }
        Ok(Self {
            private_key: crate::config::Secret::new(field("private_key")?),
            private_key_id: field("private_key_id")?,
            client_email: field("client_email")?,
        })
    }
}

/// Every configured key by id.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: HashMap<String, Arc<SigningKey>>,
    order: Vec<Arc<SigningKey>>,
}

impl KeyRing {
    /// Loads every key; errors carry the key path (`keys[2].private_key`).
    pub fn load(cfgs: &[KeyConfig], modules: &Modules) -> Result<Self, Vec<FieldError>> {
        let mut ring = KeyRing::default();
        let mut errors = Vec::new();
        for (i, cfg) in cfgs.iter().enumerate() {
            match SigningKey::load(cfg, modules) {
                Ok(key) => {
                    let key = Arc::new(key);
                    ring.keys.insert(key.id.clone(), key.clone());
                    ring.order.push(key);
                }
                Err((field, reason)) => errors.push(FieldError::new(format!("keys[{i}].{field}"), reason)),
            }
        }
        if errors.is_empty() {
            Ok(ring)
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<SigningKey>> {
        self.keys.get(id)
    }

    /// Gives each HSM key its metrics, once the config is in service.
    pub fn start(&self, metrics: &SignerFamilies) {
        for key in &self.order {
            if let Signer::Hsm(hsm) = &key.signer {
                hsm.start_metrics(metrics.for_key(&key.id));
            }
        }
    }

    /// The first signing (unretired) HSM key whose token cannot sign now, for `/readyz`.
    pub fn unavailable(&self) -> Option<&str> {
        self.order
            .iter()
            .find(|k| !k.retired && matches!(&k.signer, Signer::Hsm(hsm) if !hsm.is_up()))
            .map(|k| k.id.as_str())
    }

    /// The JWK set: public keys of every asymmetric key, retired ones included.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.order.iter().filter_map(|k| k.jwk.clone()).collect();
        serde_json::json!({ "keys": keys })
    }
}

/// A fresh private key as PEM (PKCS#8), for `tokengate keygen`.
pub fn generate_pem(algorithm: Algorithm) -> Result<String, String> {
    let rng = SystemRandom::new();
    let der: Vec<u8> = match algorithm {
        Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?
            .as_ref()
            .to_vec(),
        Algorithm::ES384 => EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?
            .as_ref()
            .to_vec(),
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(|e| e.to_string())?.as_ref().to_vec(),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            use aws_lc_rs::encoding::AsDer;
            let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|e| e.to_string())?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair.as_der().map_err(|e| e.to_string())?;
            der.as_ref().to_vec()
        }
        hmac => return Err(format!("{} keys are secrets, not key pairs: use a random string", hmac.name())),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    /// File keys sign without waiting: their future is ready at once.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("a file key never waits")
    }

    fn key(alg: Algorithm, pem: Option<String>, secret: Option<&str>) -> KeyConfig {
        KeyConfig {
            id: "k".into(),
            algorithm: alg,
            secret: secret.map(Secret::new),
            secret_base64: None,
            private_key: pem.map(Secret::new),
            private_key_base64: None,
            service_account: None,
            pkcs11: None,
            retired: false,
        }
    }

    #[test]
    fn generated_keys_load_sign_and_export_jwks() {
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256] {
            let k = SigningKey::parse(&key(alg, Some(generate_pem(alg).unwrap()), None)).unwrap();
            assert!(!block_on(k.sign(b"msg")).unwrap().is_empty());
            let jwk = k.jwk.unwrap();
            assert_eq!(jwk["kid"], "k");
            assert_eq!(jwk["alg"], alg.name());
        }
    }

    /// Checked against aws-lc-rs's HMAC: for each algorithm, short and long secrets (longer than
    /// a block: hashed first) and messages, and a key signing twice gives the same MAC (its
    /// keyed state is copied per message, never updated).
    #[test]
    fn hmac_secret_is_utf8_text_never_hex() {
        use aws_lc_rs::hmac as reference;
        let k = SigningKey::parse(&key(Algorithm::HS256, None, Some("deadbeef"))).unwrap();
        let expected = reference::sign(&reference::Key::new(reference::HMAC_SHA256, b"deadbeef"), b"m");
        assert_eq!(block_on(k.sign(b"m")).unwrap(), expected.as_ref());
        let long_secret = "s".repeat(200);
        let long_message = vec![b'x'; 1000];
        for (alg, reference_alg) in [
            (Algorithm::HS256, reference::HMAC_SHA256),
            (Algorithm::HS384, reference::HMAC_SHA384),
            (Algorithm::HS512, reference::HMAC_SHA512),
        ] {
            for secret in ["deadbeef", long_secret.as_str()] {
                let k = SigningKey::parse(&key(alg, None, Some(secret))).unwrap();
                let reference_key = reference::Key::new(reference_alg, secret.as_bytes());
                for message in [&b""[..], b"m", &long_message] {
                    let expected = reference::sign(&reference_key, message);
                    assert_eq!(block_on(k.sign(message)).unwrap(), expected.as_ref(), "{alg:?}");
                    assert_eq!(block_on(k.sign(message)).unwrap(), expected.as_ref(), "{alg:?}, again");
                }
            }
        }
    }

    #[test]
    fn wrong_curve_is_rejected() {
        let p384 = generate_pem(Algorithm::ES384).unwrap();
        let err = SigningKey::parse(&key(Algorithm::ES256, Some(p384), None)).unwrap_err();
        assert!(err.contains("not a valid ES256 private key"), "{err}");
    }

    #[test]
    fn a_service_account_file_gives_the_key_its_kid_and_email() {
        let pem = generate_pem(Algorithm::RS256).unwrap();
        let json = serde_json::json!({
            "type": "service_account", "private_key_id": "kid-9", "private_key": pem,
            "client_email": "svc@p.iam.gserviceaccount.com",
        });
        let mut cfg = key(Algorithm::RS256, None, None);
        cfg.service_account = Some(Secret::new(json.to_string()));
        let k = SigningKey::parse(&cfg).unwrap();
        assert_eq!((k.id.as_str(), k.kid.as_str()), ("k", "kid-9"));
        assert_eq!(k.client_email.as_deref(), Some("svc@p.iam.gserviceaccount.com"));
        assert_eq!(k.jwk.as_ref().unwrap()["kid"], "kid-9", "the JWK names the same kid");
        for (bad, says) in [
            ("not json".to_owned(), "is not JSON"),
            (serde_json::json!({"type": "authorized_user"}).to_string(), "not a service-account key"),
            (serde_json::json!({"type": "service_account", "private_key": "x"}).to_string(), "no \"private_key_id\""),
        ] {
            cfg.service_account = Some(Secret::new(bad));
            let err = SigningKey::parse(&cfg).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
