//! One logged-in session on the token that holds a key, and the key's handle in it: found by
//! label, checked against the configured algorithm, then used to sign. Sessions are closed
//! explicitly, and only in the module's epoch that opened them: after a restart their handle
//! numbers may belong to someone else's new session.

use std::sync::Arc;

use aws_lc_rs::digest;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::module::{describe, Module};
use crate::config::{Algorithm, Pkcs11Config};

/// Where a key is, and how to log in to its token.
pub struct Location {
    pub module: Arc<Module>,
    pub token_label: String,
    pub key_label: String,
    pub pin: AuthPin,
    pub algorithm: Algorithm,
}

impl Location {
    pub fn new(module: Arc<Module>, cfg: &Pkcs11Config, algorithm: Algorithm) -> Self {
        let pin = cfg.pin.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
        Self {
            module,
            token_label: cfg.token_label.clone(),
            key_label: cfg.key_label.clone(),
            pin: AuthPin::from(pin),
            algorithm,
        }
    }
}

/// Why a key could not be opened, by the `keys[i].pkcs11` field at fault.
#[derive(Debug)]
pub enum OpenError {
    Token(String),
    Pin(String),
    Key(String),
    Mechanism(String),
}

impl OpenError {
    /// The config key it belongs to, below `keys[i]`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Token(_) => "pkcs11.token_label",
            Self::Pin(_) => "pkcs11.pin",
            Self::Key(_) => "pkcs11.key_label",
            Self::Mechanism(_) => "algorithm",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Token(r) | Self::Pin(r) | Self::Key(r) | Self::Mechanism(r) => r,
        }
    }
}

/// A logged-in session and the key's handle in it.
pub struct KeySession {
    module: Arc<Module>,
    session: Option<Session>,
    pub key: ObjectHandle,
    slot: Slot,
    epoch: u64,
}

impl KeySession {
    /// Finds the token, logs in, finds the key and checks that the token can sign with it.
    pub fn open(at: &Location) -> Result<Self, OpenError> {
        let module = &at.module;
        let _call = module.call().ok_or_else(|| OpenError::Token("the module is closed".into()))?;
        let epoch = module.epoch();
        let slot = find_token(at)?;
        let mechanism = mechanism_type(at.algorithm);
        let mechanisms = module.ctx.get_mechanism_list(slot).map_err(|e| OpenError::Token(describe(&e)))?;
        if !mechanisms.contains(&mechanism) {
            return Err(OpenError::Mechanism(format!(
                "token {:?} has no {mechanism} mechanism, which {} needs",
                at.token_label,
                at.algorithm.name()
            )));
        }
        let session = module.ctx.open_ro_session_no_drop(slot).map_err(|e| OpenError::Token(describe(&e)))?;
        match login_and_find(&session, at) {
            Ok(key) => Ok(KeySession { module: module.clone(), session: Some(session), key, slot, epoch }),
            Err(e) => {
                // Same epoch, call lock held: the handle is still ours.
                let _ = session.close();
                Err(e)
            }
        }
    }

    /// Signs `message` (the JWS signing input): the raw JWS signature.
    pub fn sign(&self, algorithm: Algorithm, message: &[u8]) -> Result<Vec<u8>, CkError> {
        let session = self.session.as_ref().ok_or(CkError::Pkcs11(RvError::SessionClosed, sign_fn()))?;
        let closed = || CkError::Pkcs11(RvError::CryptokiNotInitialized, sign_fn());
        let _call = self.module.call().ok_or_else(closed)?;
        if self.module.epoch() != self.epoch {
            return Err(CkError::Pkcs11(RvError::SessionHandleInvalid, sign_fn()));
        }
        let pss = |hash_alg, mgf, s_len: u64| PkcsPssParams { hash_alg, mgf, s_len: s_len.into() };
        let ecdsa = |alg| session.sign(&Mechanism::Ecdsa, self.key, digest::digest(alg, message).as_ref());
        match algorithm {
            Algorithm::ES256 => ecdsa(&digest::SHA256),
            Algorithm::ES384 => ecdsa(&digest::SHA384),
            Algorithm::EdDSA => {
                session.sign(&Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), self.key, message)
            }
            Algorithm::RS256 => session.sign(&Mechanism::Sha256RsaPkcs, self.key, message),
            Algorithm::RS384 => session.sign(&Mechanism::Sha384RsaPkcs, self.key, message),
            Algorithm::RS512 => session.sign(&Mechanism::Sha512RsaPkcs, self.key, message),
            Algorithm::PS256 => session.sign(
                &Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32)),
                self.key,
                message,
            ),
            Algorithm::PS384 => session.sign(
                &Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48)),
                self.key,
                message,
            ),
            Algorithm::PS512 => session.sign(
                &Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64)),
                self.key,
                message,
            ),
            Algorithm::HS256 => session.sign(&Mechanism::Sha256Hmac, self.key, message),
            Algorithm::HS384 => session.sign(&Mechanism::Sha384Hmac, self.key, message),
            Algorithm::HS512 => session.sign(&Mechanism::Sha512Hmac, self.key, message),
        }
    }

    /// Whether the token still answers (`C_GetTokenInfo` on its slot): how an idle signer
    /// notices that it went away before a request does.
    pub fn probe(&self) -> bool {
        let Some(_call) = self.module.call() else { return false };
        self.module.epoch() == self.epoch && self.module.ctx.get_token_info(self.slot).is_ok()
    }

    /// The session, for reading the key's attributes right after `open`.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    pub fn module(&self) -> &Module {
        &self.module
    }
}

impl Drop for KeySession {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        let Some(_call) = self.module.call() else { return };
        if self.module.epoch() == self.epoch {
            // Closing can only fail on a session the module already forgot.
            let _ = session.close();
        }
    }
}

fn sign_fn() -> cryptoki::context::Function {
    cryptoki::context::Function::Sign
}

fn login_and_find(session: &Session, at: &Location) -> Result<ObjectHandle, OpenError> {
    match session.login(UserType::User, Some(&at.pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(
            rv @ (RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange | RvError::PinLocked),
            _,
        )) => {
            return Err(OpenError::Pin(format!("token {:?} refused the PIN ({rv:?})", at.token_label)));
        }
        Err(e) => return Err(OpenError::Token(format!("cannot log in: {}", describe(&e)))),
    }
    find_key(session, at)
}

/// The slot whose token has the configured label.
fn find_token(at: &Location) -> Result<Slot, OpenError> {
    let ctx = &at.module.ctx;
    let slots = ctx.get_slots_with_token().map_err(|e| OpenError::Token(describe(&e)))?;
    let mut seen = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(|e| OpenError::Token(describe(&e)))?;
        let label = info.label().trim_end();
        if label == at.token_label {
            return Ok(slot);
        }
        seen.push(format!("{label:?}"));
    }
    let seen = if seen.is_empty() { "none".to_owned() } else { seen.join(", ") };
    Err(OpenError::Token(format!("no token labelled {:?} (the module has: {seen})", at.token_label)))
}

/// The key object: a private key, or a secret key for HMAC; exactly one with that label, of
/// the type the algorithm needs.
fn find_key(session: &Session, at: &Location) -> Result<ObjectHandle, OpenError> {
    let (class, what) = if at.algorithm.is_hmac() {
        (ObjectClass::SECRET_KEY, "secret key")
    } else {
        (ObjectClass::PRIVATE_KEY, "private key")
    };
    let template = [Attribute::Class(class), Attribute::Label(at.key_label.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(|e| OpenError::Key(describe(&e)))?;
    let key = match found.as_slice() {
        [key] => *key,
        [] => {
            return Err(OpenError::Key(format!("no {what} labelled {:?} on token {:?}", at.key_label, at.token_label)))
        }
        more => {
            return Err(OpenError::Key(format!(
                "{} {what}s are labelled {:?}: the label must name one",
                more.len(),
                at.key_label
            )))
        }
    };
    let kind = session
        .get_attributes(key, &[AttributeType::KeyType])
        .map_err(|e| OpenError::Key(describe(&e)))?
        .into_iter()
        .find_map(|a| if let Attribute::KeyType(k) = a { Some(k) } else { None });
    let fits = match (at.algorithm, kind) {
        (_, None) => false,
        (Algorithm::ES256 | Algorithm::ES384, Some(k)) => k == KeyType::EC,
        (Algorithm::EdDSA, Some(k)) => k == KeyType::EC_EDWARDS,
        (a, Some(k)) if a.is_hmac() => {
            [KeyType::GENERIC_SECRET, KeyType::SHA256_HMAC, KeyType::SHA384_HMAC, KeyType::SHA512_HMAC].contains(&k)
        }
        (_, Some(k)) => k == KeyType::RSA,
    };
    if !fits {
        let kind = kind.map_or_else(|| "unknown".to_owned(), |k| k.to_string());
        return Err(OpenError::Key(format!(
            "key {:?} is a {kind} key, which cannot sign {}",
            at.key_label,
            at.algorithm.name()
        )));
    }
    Ok(key)
}

/// The mechanism the token must offer for `algorithm`.
fn mechanism_type(algorithm: Algorithm) -> MechanismType {
    match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => MechanismType::ECDSA,
        Algorithm::EdDSA => MechanismType::EDDSA,
        Algorithm::RS256 => MechanismType::SHA256_RSA_PKCS,
        Algorithm::RS384 => MechanismType::SHA384_RSA_PKCS,
        Algorithm::RS512 => MechanismType::SHA512_RSA_PKCS,
        Algorithm::PS256 => MechanismType::SHA256_RSA_PKCS_PSS,
        Algorithm::PS384 => MechanismType::SHA384_RSA_PKCS_PSS,
        Algorithm::PS512 => MechanismType::SHA512_RSA_PKCS_PSS,
        Algorithm::HS256 => MechanismType::SHA256_HMAC,
        Algorithm::HS384 => MechanismType::SHA384_HMAC,
        Algorithm::HS512 => MechanismType::SHA512_HMAC,
    }
}
