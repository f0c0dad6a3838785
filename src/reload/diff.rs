//! What a reload changed, in one line for the log: routes, keys, hooks and limits by name
//! (`+` added, `-` removed, `~` changed), then the other sections that differ.

use indexmap::IndexMap;

use crate::config::{Config, KeyConfig, RouteConfig};
use crate::gateway::Gateway;

/// Names in `old` and `new` that were added, removed or changed, as `label: +a ~b -c`.
fn by_name<T: PartialEq>(label: &str, old: &[(&str, &T)], new: &[(&str, &T)], out: &mut Vec<String>) {
    let mut parts = Vec::new();
    for (name, n) in new {
        match old.iter().find(|(o, _)| o == name) {
            None => parts.push(format!("+{name}")),
            Some((_, o)) if o != n => parts.push(format!("~{name}")),
            Some(_) => {}
        }
    }
    parts.extend(old.iter().filter(|(o, _)| !new.iter().any(|(n, _)| n == o)).map(|(o, _)| format!("-{o}")));
    if !parts.is_empty() {
        out.push(format!("{label}: {}", parts.join(" ")));
    }
}

fn entries<T>(map: &IndexMap<String, T>) -> Vec<(&str, &T)> {
    map.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

fn routes(c: &Config) -> Vec<(&str, &RouteConfig)> {
    c.routes.iter().map(|r| (r.name.as_str(), r)).collect()
}

fn keys(c: &Config) -> Vec<(&str, &KeyConfig)> {
    c.keys.iter().map(|k| (k.id.as_str(), k)).collect()
}

/// `routes: +a ~b; keys: ~k; rate_limits: -old; upstream; tls`, or `nothing`.
pub fn changes(old: &Gateway, new: &Gateway) -> String {
    let (o, n) = (&old.config, &new.config);
    let mut out = Vec::new();
    by_name("routes", &routes(o), &routes(n), &mut out);
    by_name("keys", &keys(o), &keys(n), &mut out);
    by_name("auth_hooks", &entries(&o.auth_hooks), &entries(&n.auth_hooks), &mut out);
    by_name("rate_limits", &entries(&o.rate_limits), &entries(&n.rate_limits), &mut out);
    let tls_digest = |g: &Gateway| g.tls.as_ref().map(|t| t.digest.clone());
    let sections = [
        ("upstream", o.upstream == n.upstream),
        ("forwarding", o.forwarding == n.forwarding),
        ("limits", o.limits == n.limits),
        ("tls", o.tls == n.tls && tls_digest(old) == tls_digest(new)),
        ("admin_token", o.admin_token == n.admin_token),
        ("jwks_path", o.jwks_path == n.jwks_path),
        ("proxy_rate_limits", o.proxy_rate_limits == n.proxy_rate_limits),
        ("ledger", o.ledger == n.ledger),
        ("shared_state", o.shared_state == n.shared_state),
        ("forward_auth", o.forward_auth == n.forward_auth),
        ("tracing", o.tracing == n.tracing),
    ];
    out.extend(sections.iter().filter(|(_, same)| !same).map(|(name, _)| (*name).to_owned()));
    if out.is_empty() {
        return "nothing".to_owned();
    }
    out.join("; ")
}
