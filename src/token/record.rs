//! What a token route hands the ledger: a row per freshly minted token (reused ones were
//! recorded when they were minted) and the caller's identity, to upsert.

use serde_json::Value;

use super::mint::{Minted, Noted};
use super::Route;
use crate::auth::Identity;
use crate::ledger::{sha256_hex, Entry, Recorder, Row, UserSeen};

/// The ledger entry of one answer. The recorded claims are those of the route's first token.
pub(super) fn entry(
    route: &Route,
    recorder: &Recorder,
    minted: &[(Minted, Option<Noted>)],
    identity: &Identity,
    now: u64,
) -> Entry {
    let user_id = identity.id().map(str::to_owned);
    let claims = minted.first().and_then(|(_, noted)| noted.as_ref()).map(|n| n.claims.clone()).unwrap_or_default();
    let rows: Vec<Row> = route
        .tokens
        .iter()
        .zip(minted)
        .filter_map(|(spec, (token, noted))| {
            let noted = noted.as_ref()?;
            Some(Row {
                jti: noted.jti.clone(),
                route: route.name.clone(),
                token_name: spec.name.clone(),
                kid: spec.key.id.clone(),
                user_id: user_id.clone(),
                iat: seconds(token.iat),
                exp: seconds(token.exp),
                sha256: sha256_hex(&token.token),
                token: recorder.store_token.then(|| token.token.to_string()),
                claims: claims.clone(),
            })
        })
        .collect();
    let text = |field: &str| match identity.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let user = user_id.map(|id| UserSeen {
        id,
        name: text("name"),
        image: text("image"),
        custom: identity.get("custom").filter(|v| !v.is_null()).map(Value::to_string),
        seen: seconds(now),
        tokens: i64::try_from(rows.len()).unwrap_or(i64::MAX),
    });
    Entry { rows, user }
}

fn seconds(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}
