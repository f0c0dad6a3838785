//! The `jwt` hook: an IdP's bearer token, verified with a static key or the IdP's JWK set
//! (algorithms pinned; `exp` required, `nbf`, and `iss`/`aud` when configured).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::identity::{self, Identity, IdentitySource};
use super::{bearer_token, jwks, AuthError, AuthRequest, HookStores, JwksShape};
use crate::config::{AuthHookConfig, FieldError, HttpUrl};
use crate::proxy::pool::Pool;

/// Where a `jwt` hook's verification keys come from.
enum JwtKeys {
    Static(jsonwebtoken::DecodingKey),
    Jwks(Arc<jwks::JwksKeys>),
}

/// How bearer tokens are verified.
pub struct JwtHook {
    keys: JwtKeys,
    // Boxed: jsonwebtoken's Validation is large, and hooks are built once.
    validation: Box<jsonwebtoken::Validation>,
}

impl JwtHook {
    /// Builds the hook; a JWK set comes from `stores`, fetched through `pool_for`.
    pub fn build(
        name: &str,
        cfg: &AuthHookConfig,
        timeout: Duration,
        connect_timeout: Duration,
        stores: &HookStores<'_>,
        at: impl Fn(&str, String) -> FieldError,
        pool_for: impl Fn(&HttpUrl, &str) -> Result<Pool, FieldError>,
    ) -> Result<Self, FieldError> {
        let algs: Vec<jsonwebtoken::Algorithm> = cfg.algorithms.iter().map(|a| a.to_jsonwebtoken()).collect();
        let keys = match (&cfg.secret, &cfg.public_key_file, &cfg.jwks_url) {
            (Some(s), _, _) => JwtKeys::Static(jsonwebtoken::DecodingKey::from_secret(s.expose().as_bytes())),
            (None, Some(file), _) => {
                let pem = std::fs::read(file).map_err(|e| at("public_key_file", format!("cannot read: {e}")))?;
                let family = algs.first().map(|a| a.family());
                use jsonwebtoken::AlgorithmFamily as F;
                match family {
                    Some(F::Ec) => jsonwebtoken::DecodingKey::from_ec_pem(&pem),
                    Some(F::Ed) => jsonwebtoken::DecodingKey::from_ed_pem(&pem),
                    _ => jsonwebtoken::DecodingKey::from_rsa_pem(&pem),
                }
                .map(JwtKeys::Static)
                .map_err(|e| at("public_key_file", format!("not a PEM public key: {e}")))?
            }
            (None, None, Some(url)) => {
                let pool = pool_for(url, "jwks_url")?;
                let ca = cfg.ca_file.as_ref().map(|f| crate::config::digest(b"", std::slice::from_ref(f)));
                let shape = JwksShape { hook: name.to_owned(), url: url.to_string(), timeout, connect_timeout, ca };
                let make = || Arc::new(jwks::JwksKeys::new(url.clone(), pool, timeout));
                JwtKeys::Jwks(stores.jwks.take(shape, make))
            }
            (None, None, None) => {
                return Err(at("jwks_url", "give exactly one of jwks_url, public_key_file, secret".into()))
            }
        };
        let mut validation =
            jsonwebtoken::Validation::new(algs.first().copied().unwrap_or(jsonwebtoken::Algorithm::RS256));
        validation.algorithms = algs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self { keys, validation: Box::new(validation) })
    }

    /// Lets in a caller whose bearer token verifies; identity from its claims.
    pub async fn authenticate(
        &self,
        name: &str,
        mapping: &[(String, IdentitySource)],
        req: &AuthRequest<'_>,
    ) -> Result<Arc<Identity>, AuthError> {
        let bearer = req
            .headers
            .get(&http::header::AUTHORIZATION)
            .and_then(bearer_token)
            .and_then(|t| std::str::from_utf8(t).ok());
        let Some(token) = bearer else { return Err(AuthError::Denied) };
        if has_crit(token) {
            tracing::debug!(hook = %name, "bearer token refused: it names critical extensions (RFC 7515 §4.1.11)");
            return Err(AuthError::Denied);
        }
        let fetched;
        let key = match &self.keys {
            JwtKeys::Static(k) => k,
            JwtKeys::Jwks(set) => {
                let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) else {
                    return Err(AuthError::Denied);
                };
                fetched = match set.key(&kid, req.traceparent.as_ref()).await {
                    Ok(Some(k)) => k,
                    Ok(None) => return Err(AuthError::Denied),
                    Err(cause) => return Err(AuthError::Unavailable(cause)),
                };
                &*fetched
            }
        };
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &self.validation) {
            Ok(data) => {
                identity::extract(mapping, Some(&Value::Object(data.claims)), req.body, req.headers).map(Arc::new)
            }
            Err(e) => {
                tracing::debug!(hook = %name, reason = %e, "bearer token refused");
                Err(AuthError::Denied)
            }
        }
    }
}

/// True when the token's protected header has a `crit` parameter (RFC 7515 §4.1.11). The hook
/// understands no extension, so any `crit`, even empty or malformed, makes the token invalid. An
/// unreadable header is left to the verification that follows, which refuses it.
fn has_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else { return false };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else { return false };
    serde_json::from_slice::<serde_json::Map<String, Value>>(&json).is_ok_and(|h| h.contains_key("crit"))
}
