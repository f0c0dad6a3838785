//! What the ledger stores and answers: token rows, user sightings, and their JSON forms.

use std::collections::BTreeMap;

use serde::Serialize;

/// One minted token, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub jti: Option<String>,
    pub route: String,
    pub token_name: String,
    pub kid: String,
    pub user_id: Option<String>,
    pub iat: i64,
    pub exp: i64,
    /// Lowercase hex SHA-256 of the token text.
    pub sha256: String,
    /// The token itself, only with `store_token: true`.
    pub token: Option<String>,
    /// The route's recorded claims, as text (strings as they are, other JSON as JSON).
    pub claims: Vec<(String, String)>,
}

impl Row {
    /// The recorded claims as one JSON object, for the `claims` column.
    pub fn claims_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> =
            self.claims.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        serde_json::Value::Object(map).to_string()
    }
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// A claim value as recorded and searched: a string as it is, anything else as its JSON.
pub fn claim_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A caller seen on a token route: upserted by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSeen {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// JSON text.
    pub custom: Option<String>,
    /// Unix seconds.
    pub seen: i64,
    /// Tokens minted for this caller by this answer.
    pub tokens: i64,
}

/// Folds several sightings of the same users into one per id, sorted by id (so concurrent
/// batches lock user rows in the same order): the latest non-empty fields win, counts add up.
pub fn merge_users<'a>(seen: impl Iterator<Item = &'a UserSeen>) -> Vec<(UserSeen, i64)> {
    let mut by_id: BTreeMap<&str, (UserSeen, i64)> = BTreeMap::new();
    for s in seen {
        match by_id.get_mut(s.id.as_str()) {
            None => {
                by_id.insert(&s.id, (s.clone(), s.seen));
            }
            Some((merged, first)) => {
                for (field, new) in
                    [(&mut merged.name, &s.name), (&mut merged.image, &s.image), (&mut merged.custom, &s.custom)]
                {
                    if new.is_some() {
                        field.clone_from(new);
                    }
                }
                merged.seen = merged.seen.max(s.seen);
                *first = (*first).min(s.seen);
                merged.tokens += s.tokens;
            }
        }
    }
    by_id.into_values().collect()
}

/// A token record as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TokenRecord {
    /// Position in the ledger: newest first, and the `cursor` of the next page.
    #[serde(skip)]
    pub id: i64,
    pub jti: Option<String>,
    pub route: String,
    pub token_name: String,
    pub kid: String,
    pub user: Option<String>,
    pub iat: i64,
    pub exp: i64,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub claims: serde_json::Value,
}

/// An upserted user as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct UserRecord {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub custom: Option<serde_json::Value>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub tokens_issued: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, name: Option<&str>, at: i64) -> UserSeen {
        UserSeen { id: id.into(), name: name.map(Into::into), image: None, custom: None, seen: at, tokens: 1 }
    }

    #[test]
    fn sightings_of_one_user_fold_into_one() {
        let all = [seen("b", Some("Bo"), 5), seen("a", Some("Al"), 3), seen("b", None, 9), seen("b", Some("Bob"), 7)];
        let merged = merge_users(all.iter());
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].0.id, "a", "sorted by id");
        let (b, first) = &merged[1];
        assert_eq!((b.name.as_deref(), b.seen, *first, b.tokens), (Some("Bob"), 9, 5, 3));
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
