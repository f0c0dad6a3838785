//! The `api_key` hook: the key in a configured header, compared in constant time against every
//! configured key; identity from the request.

use std::sync::Arc;

use http::header::HeaderName;

use super::identity::{self, Identity, IdentitySource};
use super::{AuthError, AuthRequest};
use crate::config::{AuthHookConfig, FieldError, Secret};

/// The header a key comes in and the keys that open.
pub struct ApiKeyHook {
    header: HeaderName,
    keys: Vec<Secret>,
}

impl ApiKeyHook {
    pub fn build(cfg: &AuthHookConfig, at: impl Fn(&str, String) -> FieldError) -> Result<Self, FieldError> {
        let header = cfg
            .header
            .as_ref()
            .map(|h| h.0.clone())
            .ok_or_else(|| at("header", "missing required key for type api_key".into()))?;
        Ok(Self { header, keys: cfg.keys.clone() })
    }

    /// Lets in a caller whose key matches one configured.
    pub fn authenticate(
        &self,
        mapping: &[(String, IdentitySource)],
        req: &AuthRequest<'_>,
    ) -> Result<Arc<Identity>, AuthError> {
        let presented = req.headers.get(&self.header).unwrap_or_default();
        // Every key is compared, so timing does not tell which one nearly matched.
        let ok = self.keys.iter().fold(false, |acc, k| acc | k.matches(presented));
        if ok {
            identity::extract(mapping, None, req.body, req.headers).map(Arc::new)
        } else {
            Err(AuthError::Denied)
        }
    }
}
