//! Minting one token: the header is encoded once at load; per request the claims are rendered,
//! `iat`/`exp` (and `nbf`) set, and the signing input signed with a key parsed at load.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::config::{FieldError, TokenConfig};
use crate::error::Error;
use crate::keys::{KeyRing, SigningKey};
use crate::template::{Found, JsonText, Lookup, Scope, Source, Template};

/// A minted token and its lifetime (unix seconds).
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: Arc<str>,
    pub iat: u64,
    pub exp: u64,
}

/// What the ledger needs of a freshly minted token's claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Noted {
    pub jti: Option<String>,
    /// The asked-for claims that the token has, as text.
    pub claims: Vec<(String, String)>,
}

/// One entry of a route's `tokens:`.
#[derive(Debug)]
pub struct TokenSpec {
    pub name: String,
    pub key: Arc<SigningKey>,
    ttl: u64,
    iat_offset: i64,
    not_before: bool,
    /// `base64url(header JSON) + "."`, computed once.
    header_prefix: String,
    claims: JsonText,
    /// Every input the claims read, for the cache key.
    pub sources: Vec<Source>,
    /// The claims read a nonce (`uuid`, `now`): never reuse.
    pub fresh: bool,
    shape: String,
}

/// A request's values, and the signing key's own fields (`key.id`, `key.kid`,
/// `key.client_email`).
struct WithKey<'a> {
    key: &'a SigningKey,
    values: &'a dyn Lookup,
}

impl Lookup for WithKey<'_> {
    fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
        match source {
            Source::Key(field) => key_field(self.key, field).map(|v| Found::made(Value::String(v.to_owned()))),
            other => self.values.lookup(other),
        }
    }
}

/// `"name":value` of a numeric claim.
fn put_number(out: &mut Vec<u8>, name: &str, value: u64) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn key_field<'k>(key: &'k SigningKey, field: &str) -> Option<&'k str> {
    match field {
        "id" => Some(&key.id),
        "kid" => Some(&key.kid),
        "client_email" => key.client_email.as_deref(),
        _ => None,
    }
}

impl TokenSpec {
    pub fn build(name: &str, cfg: &TokenConfig, keys: &KeyRing, at: &str) -> Result<Self, FieldError> {
        let key = keys
            .get(&cfg.key)
            .cloned()
            .ok_or_else(|| FieldError::new(format!("{at}.key"), format!("no key with id {:?}", cfg.key)))?;
        // `iat`, `exp` (and with `not_before`, `nbf`) are the minter's: a template's are dropped.
        let claims = Template::compile(&Value::Object(cfg.claims.clone()), Scope::Claims, &format!("{at}.claims"))
            .map_err(|(path, reason)| FieldError::new(path, reason))?
            .without_fields(|k| k == "iat" || k == "exp" || (cfg.not_before && k == "nbf"));
        let mut header = Map::new();
        header.insert("alg".into(), Value::String(key.algorithm.name().into()));
        header.insert("typ".into(), Value::String("JWT".into()));
        if cfg.kid {
            header.insert("kid".into(), Value::String(key.kid.clone()));
        }
        for (k, v) in &cfg.header {
            if k == "alg" {
                return Err(FieldError::new(format!("{at}.header.alg"), "alg comes from the key"));
            }
            header.insert(k.clone(), v.clone());
        }
        let header_json = serde_json::to_vec(&header)
            .map_err(|e| FieldError::new(format!("{at}.header"), format!("cannot encode the header: {e}")))?;
        let header_prefix = format!("{}.", URL_SAFE_NO_PAD.encode(header_json));
        let shape = format!(
            "{name}\u{0}{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{}\u{1}",
            key.id,
            key.fingerprint,
            cfg.ttl.0.as_millis(),
            cfg.iat_offset,
            cfg.not_before,
            header_prefix,
            Value::Object(cfg.claims.clone()),
        );
        let mut sources = Vec::new();
        claims.sources(&mut sources);
        for source in &sources {
            if let Source::Key(field) = source {
                if key_field(&key, field).is_none() {
                    let why = format!("key.{field}: key {:?} has none (only service_account_file keys do)", key.id);
                    return Err(FieldError::new(format!("{at}.claims"), why));
                }
            }
        }
        let fresh = sources.iter().any(Source::is_fresh);
        Ok(Self {
            name: name.to_owned(),
            key,
            ttl: cfg.ttl.0.as_secs(),
            iat_offset: cfg.iat_offset.map(|o| o.seconds).unwrap_or(0),
            not_before: cfg.not_before,
            header_prefix,
            claims: JsonText::new(&claims),
            sources,
            fresh,
            shape,
        })
    }

    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Everything that makes this token what it is (claims, lifetime, header, key material),
    /// as text: a token cache is reused by a new config only when this is unchanged.
    pub fn shape(&self) -> &str {
        &self.shape
    }

    /// Renders the claims and signs them.
    pub async fn mint(&self, values: &(dyn Lookup + Sync), now: u64) -> Result<Minted, Error> {
        self.mint_noting(values, now, None).await.map(|(minted, _)| minted)
    }

    /// Like `mint`; with `note`, also returns the token's `jti` and the values of the claims
    /// named in `note` (for the ledger).
    pub async fn mint_noting(
        &self,
        values: &(dyn Lookup + Sync),
        now: u64,
        note: Option<&[String]>,
    ) -> Result<(Minted, Option<Noted>), Error> {
        let (mut token, iat, exp, noted) = self.signing_input(values, now, note)?;
        let signature = self.key.sign(token.as_bytes()).await?;
        token.push('.');
        base64_simd::URL_SAFE_NO_PAD.encode_append(signature, &mut token);
        Ok((Minted { token: token.into(), iat, exp }, noted))
    }

    /// The JWS signing input (`header.payload`), `iat`, `exp`, and what `note` asks for.
    fn signing_input(
        &self,
        values: &dyn Lookup,
        now: u64,
        note: Option<&[String]>,
    ) -> Result<(String, u64, u64, Option<Noted>), Error> {
        let values = WithKey { key: &self.key, values };
        // The claims written as JSON text at once (no tree), then the times.
        let mut payload = Vec::with_capacity(256);
        self.claims.write(&values, &mut payload).map_err(|m| Error::InvalidRequest(m.to_string()))?;
        let iat = now.saturating_add_signed(self.iat_offset);
        let exp = iat + self.ttl;
        payload.pop(); // the object's closing brace
        if payload.len() > 1 {
            payload.push(b',');
        }
        put_number(&mut payload, "iat", iat);
        payload.push(b',');
        put_number(&mut payload, "exp", exp);
        if self.not_before {
            payload.push(b',');
            put_number(&mut payload, "nbf", iat);
        }
        payload.push(b'}');
        // The ledger's view of the claims, read back from what is signed.
        let noted = note.map(|names| {
            let claims: Map<String, Value> = serde_json::from_slice(&payload).unwrap_or_default();
            Noted {
                jti: claims.get("jti").map(crate::ledger::claim_text),
                claims: names
                    .iter()
                    .filter_map(|n| claims.get(n).map(|v| (n.clone(), crate::ledger::claim_text(v))))
                    .collect(),
            }
        });
        let mut token = String::with_capacity(self.header_prefix.len() + payload.len() * 4 / 3 + 400);
        token.push_str(&self.header_prefix);
        base64_simd::URL_SAFE_NO_PAD.encode_append(&payload, &mut token);
        Ok((token, iat, exp, noted))
    }

    /// The cache key of this token for one request, or None when it must be fresh.
    /// It names the route, the token, the key (id and fingerprint), the caller and every input.
    pub fn cache_key(&self, route: &str, user_id: &str, values: &dyn Lookup) -> Option<String> {
        if self.fresh {
            return None;
        }
        let inputs: Vec<Value> =
            self.sources.iter().map(|s| values.lookup(s).map_or(Value::Null, Found::into_value)).collect();
        Some(format!(
            "{route}\u{0}{}\u{0}{}\u{0}{}\u{0}{user_id}\u{0}{}",
            self.name,
            self.key.id,
            self.key.fingerprint,
            Value::Array(inputs)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, KeyConfig, Secret};
    use futures_util::FutureExt;

    struct Ctx;
    impl Lookup for Ctx {
        fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
            match source {
                Source::User(f) if f == "id" => Some(Found::made(Value::String("u1".into()))),
                _ => None,
            }
        }
    }

    fn spec(secret: &str, claims: Value) -> TokenSpec {
        try_spec(secret, claims).unwrap()
    }

    fn try_spec(secret: &str, claims: Value) -> Result<TokenSpec, FieldError> {
        let key = KeyConfig {
            id: "k".into(),
            algorithm: Algorithm::HS256,
            secret: Some(Secret::new(secret)),
            secret_base64: None,
            private_key: None,
            private_key_base64: None,
            service_account: None,
            pkcs11: None,
            retired: false,
        };
        let ring = KeyRing::load(&[key], &crate::hsm::Modules::default()).unwrap();
        let cfg: TokenConfig =
            serde_json::from_value(serde_json::json!({"key": "k", "ttl": "1h", "claims": claims})).unwrap();
        TokenSpec::build("t", &cfg, &ring, "test")
    }

    #[test]
    fn claims_read_the_signing_keys_own_fields() {
        let minted = spec("s", serde_json::json!({"k": "{{ key.id }}/{{ key.kid }}"}))
            .mint(&Ctx, 1000)
            .now_or_never()
            .unwrap()
            .unwrap();
        let payload = minted.token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["k"], "k/k");
        let err = try_spec("s", serde_json::json!({"iss": "{{ key.client_email }}"})).unwrap_err();
        assert!(err.reason.contains("only service_account_file keys"), "{err:?}");
    }

    fn payload(minted: &Minted) -> Value {
        let payload = minted.token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn the_times_are_the_minters_whatever_the_claims_say() {
        let mint = |claims| spec("s", claims).mint(&Ctx, 1000).now_or_never().unwrap().unwrap();
        let claims = payload(&mint(serde_json::json!({"iat": 1, "sub": "{{ user.id }}", "exp": "x", "nbf": 5})));
        assert_eq!(claims, serde_json::json!({"sub": "u1", "nbf": 5, "iat": 1000, "exp": 4600}));
        assert_eq!(payload(&mint(serde_json::json!({}))), serde_json::json!({"iat": 1000, "exp": 4600}));
    }

    #[test]
    fn a_rotated_key_never_matches_a_cached_token() {
        let claims = serde_json::json!({"sub": "{{ user.id }}"});
        let old = spec("old-secret", claims.clone()).cache_key("r", "u1", &Ctx).unwrap();
        let new = spec("new-secret", claims).cache_key("r", "u1", &Ctx).unwrap();
        assert_ne!(old, new, "same key id, new material");
        assert!(!old.contains("old-secret"), "the key holds a fingerprint, never the secret");
    }

    #[test]
    fn nonces_are_never_cached_and_inputs_are_in_the_key() {
        assert!(spec("s", serde_json::json!({"jti": "{{ uuid }}"})).cache_key("r", "u1", &Ctx).is_none());
        assert!(spec("s", serde_json::json!({"t": "{{ now }}"})).cache_key("r", "u1", &Ctx).is_none());
        let k1 = spec("s", serde_json::json!({"sub": "{{ user.id }}"})).cache_key("r", "u1", &Ctx).unwrap();
        let k2 = spec("s", serde_json::json!({"sub": "{{ user.id }}"})).cache_key("r", "u2", &Ctx).unwrap();
        assert_ne!(k1, k2);
    }
}
