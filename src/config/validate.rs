//! Semantic checks run once at load: references between sections, required keys per type,
//! values the runtime would otherwise have to re-check. Each error names its key path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use base64::Engine;

use indexmap::IndexMap;

use super::{AuthHookType, Config, FieldError, LedgerType, RouteLedgerConfig, SharedStateType, TokenConfig};

/// hyper refuses a smaller read buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

pub(super) fn validate(c: &Config) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |path: String, reason: String| errs.push(FieldError::new(path, reason));

    let upstream = c.upstream.url.uri();
    if !matches!(upstream.path(), "" | "/") || upstream.query().is_some() {
        err(
            "upstream.url".into(),
            format!(
                "URL {:?} must not have a path or query: requests are forwarded with their own",
                c.upstream.url.to_string()
            ),
        );
    }
    if c.listen == c.admin_listen && c.listen.port() != 0 {
        err("admin_listen".into(), "must differ from listen: admin endpoints never share the public port".into());
    }
    if c.workers == Some(0) {
        err("workers".into(), "must be at least 1".into());
    }
    if let Some(p) = &c.jwks_path {
        if !p.starts_with('/') {
            err("jwks_path".into(), format!("must start with '/': {p:?}"));
        }
    }
    if c.limits.max_header_bytes.0 < MIN_HEADER_BYTES {
        err("limits.max_header_bytes".into(), "must be at least 8KiB".into());
    }
    for (key, d) in [
        ("limits.header_read_timeout", c.limits.header_read_timeout),
        ("limits.idle_timeout", c.limits.idle_timeout),
        ("limits.request_body_timeout", c.limits.request_body_timeout),
    ] {
        if d.0.is_zero() {
            err(key.into(), "must be longer than 0".into());
        }
    }
    if c.limits.max_connections == 0 {
        err("limits.max_connections".into(), "must be at least 1".into());
    }

    let mut key_ids = HashSet::new();
    for (i, k) in c.keys.iter().enumerate() {
        let at = |key: &str| format!("keys[{i}].{key}");
        if !key_ids.insert(k.id.as_str()) {
            err(at("id"), format!("duplicate key id {:?}", k.id));
        }
        let pem = [&k.private_key, &k.private_key_base64, &k.service_account].iter().filter(|m| m.is_some()).count();
        let material = [k.secret.is_some(), k.secret_base64.is_some(), pem > 0, k.pkcs11.is_some()];
        if material.iter().filter(|m| **m).count() != 1 {
            err(
                at("id"),
                "give exactly one of secret, secret_base64, private_key(_file), service_account_file, pkcs11".into(),
            );
        } else if let Some(hsm) = &k.pkcs11 {
            pkcs11(hsm, &|key| at(&format!("pkcs11.{key}")), &mut err);
        } else if k.algorithm.is_hmac() && pem > 0 {
            err(at("private_key"), format!("{:?} is an HMAC algorithm: use secret or secret_base64", k.algorithm));
        } else if pem > 1 {
            err(
                at("private_key"),
                "give one of private_key(_file), private_key_base64(_file), service_account_file".into(),
            );
        } else if k.service_account.is_some() && !matches!(k.algorithm, super::Algorithm::RS256) {
            err(at("algorithm"), "a Google service-account key signs RS256".into());
        } else if !k.algorithm.is_hmac() && pem == 0 {
            err(at("algorithm"), format!("{:?} needs private_key_file (a PEM private key)", k.algorithm));
        }
        if let Some(b64) = &k.secret_base64 {
            if base64::engine::general_purpose::STANDARD.decode(b64.expose().trim()).is_err() {
                err(at("secret_base64"), "not valid base64".into());
            }
        }
        if matches!(&k.secret, Some(s) if s.is_empty()) {
            err(at("secret"), "is empty".into());
        }
    }

    for (name, h) in &c.auth_hooks {
        let at = |key: &str| format!("auth_hooks.{name}.{key}");
        match h.kind {
            AuthHookType::Http => {
                if h.url.is_none() {
                    err(at("url"), "missing required key for type http".into());
                }
            }
            AuthHookType::ApiKey => {
                if h.header.is_none() {
                    err(at("header"), "missing required key for type api_key".into());
                }
                if h.keys.is_empty() || h.keys.iter().any(|k| k.is_empty()) {
                    err(at("keys"), "needs at least one non-empty key".into());
                }
            }
            AuthHookType::Jwt => {
                let sources = [h.jwks_url.is_some(), h.public_key_file.is_some(), h.secret.is_some()];
                if sources.iter().filter(|s| **s).count() != 1 {
                    err(at("jwks_url"), "give exactly one of jwks_url, public_key_file, secret".into());
                }
                if h.algorithms.is_empty() {
                    err(at("algorithms"), "list the accepted algorithms".into());
                }
            }
            AuthHookType::None => {}
        }
        for (field, source) in &h.identity {
            let ok = source.strip_prefix("body:").is_some_and(|p| p.is_empty() || p.starts_with('/'))
                || source.strip_prefix("header:").is_some_and(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok())
                || source.strip_prefix("claim:").is_some_and(|n| !n.is_empty());
            if !ok {
                err(
                    at(&format!("identity.{field}")),
                    format!("expected body:/pointer, header:name or claim:name, got {source:?}"),
                );
            }
        }
    }

    for (name, l) in &c.rate_limits {
        let at = |key: &str| format!("rate_limits.{name}.{key}");
        let key_ok = matches!(l.key.as_str(), "client_ip" | "user" | "route" | "global")
            || l.key.strip_prefix("user.").is_some_and(|field| !field.is_empty())
            || l.key.strip_prefix("header:").is_some_and(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok());
        if !key_ok {
            err(
                at("key"),
                format!("expected client_ip, user, user.<field>, route, global or header:NAME, got {:?}", l.key),
            );
        }
        if l.rate == 0 {
            err(at("rate"), "must be at least 1".into());
        }
        if l.per.0.is_zero() {
            err(at("per"), "must be longer than 0".into());
        }
        if l.burst == Some(0) {
            err(at("burst"), "must be at least 1".into());
        }
    }
    for (i, name) in c.proxy_rate_limits.iter().enumerate() {
        if !c.rate_limits.contains_key(name) {
            err(format!("proxy_rate_limits[{i}]"), format!("no rate limit named {name:?}"));
        } else if c.rate_limits[name].key == "user" {
            err(
                format!("proxy_rate_limits[{i}]"),
                "forwarded traffic has no user: a user-keyed limit cannot apply".into(),
            );
        }
    }

    let mut route_names = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = |key: &str| format!("routes[{i}].{key}");
        if !route_names.insert(r.name.as_str()) {
            err(at("name"), format!("duplicate route name {:?}", r.name));
        }
        if r.name == "proxy" {
            err(at("name"), "\"proxy\" is reserved for forwarded traffic in metrics".into());
        }
        if !r.path.starts_with('/') {
            err(at("path"), format!("must start with '/': {:?}", r.path));
        }
        if !c.auth_hooks.contains_key(&r.auth) {
            err(at("auth"), format!("no auth hook named {:?}", r.auth));
        }
        for (j, l) in r.rate_limits.iter().enumerate() {
            if !c.rate_limits.contains_key(l) {
                err(at(&format!("rate_limits[{j}]")), format!("no rate limit named {l:?}"));
            }
        }
        if r.tokens.is_empty() {
            err(at("tokens"), "a token route mints at least one token".into());
        }
        check_tokens(c, &r.tokens, &at, &mut err);
        if !(100..=599).contains(&r.response.status) {
            err(at("response.status"), format!("invalid status {}", r.response.status));
        }
        check_recorded(c, r.ledger.as_ref(), &r.tokens, &at, &mut err);
    }

    let mut paths: HashSet<&str> = c.routes.iter().map(|r| r.path.as_str()).chain(c.jwks_path.as_deref()).collect();
    for (i, f) in c.forward_auth.iter().enumerate() {
        let at = |key: &str| format!("forward_auth[{i}].{key}");
        if !route_names.insert(f.name.as_str()) {
            err(at("name"), format!("duplicate name {:?} (token routes and forward-auth entries share names)", f.name));
        }
        if matches!(f.name.as_str(), "proxy" | "jwks") {
            err(at("name"), format!("{:?} is reserved for other traffic in metrics", f.name));
        }
        let exact = f.path.strip_suffix("/*").unwrap_or(&f.path);
        if !f.path.starts_with('/') || exact.contains(['{', '}', '?', '#', '*']) || exact.is_empty() {
            err(at("path"), format!("must be an exact path starting with '/', or a prefix ending in /*: {:?}", f.path));
        } else if !paths.insert(f.path.as_str()) {
            err(at("path"), format!("{:?} is already served by a token route, the JWK set or another entry", f.path));
        }
        if !c.auth_hooks.contains_key(&f.auth) {
            err(at("auth"), format!("no auth hook named {:?}", f.auth));
        }
        for (j, l) in f.rate_limits.iter().enumerate() {
            if !c.rate_limits.contains_key(l) {
                err(at(&format!("rate_limits[{j}]")), format!("no rate limit named {l:?}"));
            }
        }
        for name in f.response_headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(at(&format!("response_headers.{name}")), "not a header name".into());
            }
        }
        check_tokens(c, &f.tokens, &at, &mut err);
        check_recorded(c, f.ledger.as_ref(), &f.tokens, &at, &mut err);
    }

    if let Some(l) = &c.ledger {
        match l.kind {
            LedgerType::Sqlite if l.path.is_none() => {
                err("ledger.path".into(), "missing required key for type sqlite".into())
            }
            LedgerType::Sqlite if l.url.is_some() || l.ca_file.is_some() => {
                let key = if l.url.is_some() { "ledger.url" } else { "ledger.ca_file" };
                err(key.into(), "is for type postgres; type sqlite takes `path`".into())
            }
            LedgerType::Postgres if l.path.is_some() => {
                err("ledger.path".into(), "is for type sqlite; type postgres takes `url`".into())
            }
            // The URL itself is checked where the ledger is built (`Ledger::new`).
            LedgerType::Postgres if l.url.is_none() => {
                err("ledger.url".into(), "missing required key for type postgres".into())
            }
            LedgerType::Postgres => {}
            LedgerType::Sqlite => {}
        }
        if !(1..=1_000_000).contains(&l.queue_size) {
            err("ledger.queue_size".into(), format!("must be 1 to 1000000, not {}", l.queue_size));
        }
        if l.commit_timeout.0.is_zero() {
            err("ledger.commit_timeout".into(), "must be above zero".into());
        }
        if l.retention.is_some_and(|r| r.0.is_zero()) {
            err("ledger.retention".into(), "must be above zero (leave it out to keep every record)".into());
        }
    }
    if let Some(st) = &c.shared_state {
        match st.kind {
            // The URLs themselves are checked where the client is built (`Shared::new`).
            SharedStateType::Redis if st.url.is_none() => {
                err("shared_state.url".into(), "missing required key for type redis".into())
            }
            SharedStateType::RedisCluster if st.urls.is_empty() => {
                err("shared_state.urls".into(), "missing required key for type redis_cluster".into())
            }
            SharedStateType::Redis | SharedStateType::RedisCluster => {}
        }
        if st.kind == SharedStateType::Redis && !st.urls.is_empty() {
            err("shared_state.urls".into(), "is for type redis_cluster; type redis takes `url`".into());
        }
        if st.kind == SharedStateType::RedisCluster && st.url.is_some() {
            err("shared_state.url".into(), "is for type redis; type redis_cluster takes `urls`".into());
        }
        if st.secret.expose().len() < 16 {
            err(
                "shared_state.secret".into(),
                "must be at least 16 bytes (it keys the HMACs of what Redis holds)".into(),
            );
        }
        if st.timeout.0.is_zero() || st.timeout.0 > std::time::Duration::from_secs(10) {
            err("shared_state.timeout".into(), "must be above zero and at most 10s".into());
        }
    }
    errs
}

/// Files the config refers to besides itself (paths already resolved), watched for reload.
pub(super) fn referenced_files(c: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(tls) = &c.tls {
        files.push(tls.cert_file.clone());
        files.push(tls.key_file.clone());
    }
    files.extend(c.auth_hooks.values().filter_map(|h| h.public_key_file.clone()));
    files.extend(c.upstream.ca_file.clone());
    files.extend(c.auth_hooks.values().filter_map(|h| h.ca_file.clone()));
    files.extend(c.ledger.as_ref().and_then(|l| l.ca_file.clone()));
    files.extend(c.shared_state.as_ref().and_then(|s| s.ca_file.clone()));
    files.extend(c.tracing.as_ref().and_then(|t| t.ca_file.clone()));
    files
}

/// Makes every relative file path in `c` relative to `base` (the config file's directory), so
/// nothing later depends on the working directory.
pub(super) fn resolve_paths(c: &mut Config, base: &Path) {
    if let Some(tls) = &mut c.tls {
        tls.cert_file = base.join(&tls.cert_file);
        tls.key_file = base.join(&tls.key_file);
    }
    for hook in c.auth_hooks.values_mut() {
        for file in [&mut hook.public_key_file, &mut hook.ca_file].into_iter().flatten() {
            *file = base.join(&*file);
        }
    }
    if let Some(file) = &mut c.upstream.ca_file {
        *file = base.join(&*file);
    }
    if let Some(file) = c.shared_state.as_mut().and_then(|s| s.ca_file.as_mut()) {
        *file = base.join(&*file);
    }
    if let Some(file) = c.tracing.as_mut().and_then(|t| t.ca_file.as_mut()) {
        *file = base.join(&*file);
    }
    if let Some(ledger) = &mut c.ledger {
        for file in [&mut ledger.path, &mut ledger.ca_file].into_iter().flatten() {
            *file = base.join(&*file);
        }
    }
}

/// The tokens of a route or forward-auth entry: known, unretired keys; `iat`/`exp` untouched.
fn check_tokens(
    c: &Config,
    tokens: &IndexMap<String, TokenConfig>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    for (name, t) in tokens {
        match c.keys.iter().find(|k| k.id == t.key) {
            None => err(at(&format!("tokens.{name}.key")), format!("no key with id {:?}", t.key)),
            Some(k) if k.retired => {
                err(at(&format!("tokens.{name}.key")), format!("key {:?} is retired: it no longer signs", t.key))
            }
            Some(_) => {}
        }
        for reserved in ["iat", "exp"] {
            if t.claims.contains_key(reserved) {
                err(
                    at(&format!("tokens.{name}.claims.{reserved}")),
                    "set by tokengate from ttl; not templatable".into(),
                );
            }
        }
    }
}

/// `ledger.record` of a route or forward-auth entry: claims of its first token, each once.
fn check_recorded(
    c: &Config,
    recorded: Option<&RouteLedgerConfig>,
    tokens: &IndexMap<String, TokenConfig>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
    let Some(recorded) = recorded else { return };
    if c.ledger.is_none() {
        err(at("ledger"), "records claims, but there is no top-level `ledger` to record them in".into());
    }
    let first = tokens.first();
    let mut seen = HashSet::new();
    for (j, claim) in recorded.record.iter().enumerate() {
        let at = at(&format!("ledger.record[{j}]"));
        if !seen.insert(claim.as_str()) {
            err(at, format!("{claim:?} is listed twice"));
        } else if matches!(claim.as_str(), "iat" | "exp" | "jti") {
            err(at, format!("{claim:?} is recorded for every token already"));
        } else if let Some((name, _)) = first.filter(|(_, t)| !t.claims.contains_key(claim)) {
            err(at, format!("the route's first token {name:?} has no claim {claim:?}"));
        } else if first.is_none() {
            err(at, "there is no token whose claims could be recorded".into());
        }
    }
}

/// `keys[i].pkcs11`: what can be told without loading the module (`keys::load` does the rest).
fn pkcs11(hsm: &super::Pkcs11Config, at: &dyn Fn(&str) -> String, err: &mut dyn FnMut(String, String)) {
    if hsm.module.as_os_str().is_empty() {
        err(at("module"), "is empty: give the path of the HSM vendor's PKCS#11 module".into());
    }
    for (key, value) in [("token_label", &hsm.token_label), ("key_label", &hsm.key_label)] {
        if value.is_empty() {
            err(at(key), "is empty".into());
        }
    }
    if hsm.pin.as_ref().is_none_or(|p| p.is_empty()) {
        err(at("pin"), "missing: give pin or pin_file (the token's user PIN)".into());
    }
    if hsm.sessions == 0 || hsm.sessions > 64 {
        err(at("sessions"), "must be between 1 and 64".into());
    }
    if hsm.queue == 0 {
        err(at("queue"), "must be at least 1".into());
    }
    if hsm.timeout.0.is_zero() {
        err(at("timeout"), "must be longer than 0".into());
    }
}
