//! Ledger look-ups on the admin listener (SPEC §4, §6): `GET /admin/tokens/{jti}`,
//! `GET /admin/tokens?<claim>=…&user=…&route=…&sha256=…&limit=…&cursor=…` (newest first) and
//! `GET /admin/users/{id}`. JSON; 404 when unknown or when there is no ledger.

use http::{Response, StatusCode};
use serde_json::json;

use crate::body::Body;
use crate::error::json_error;
use crate::ledger::{DbError, Ledger, Search};
use crate::state::State;
use crate::token::request::{percent_decode, query_pairs};

/// Records per page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

fn ledger(state: &State) -> Option<Ledger> {
    state.gateway.load().ledger.clone()
}

fn no_ledger() -> Response<Body> {
    json_error(StatusCode::NOT_FOUND, "not_found", "no ledger is configured")
}

fn unavailable(e: &DbError) -> Response<Body> {
    tracing::warn!(error = %crate::logging::chain(e), "ledger look-up failed");
    json_error(StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable", "the ledger cannot be read right now")
}

fn json(value: &serde_json::Value) -> Response<Body> {
    let mut resp = super::text(StatusCode::OK, "application/json", value.to_string().into_bytes());
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

fn bad_request(message: &str) -> Response<Body> {
    json_error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// `GET /admin/tokens/{jti}`: the newest record with that `jti`.
pub async fn token(state: &State, segment: &str) -> Response<Body> {
    let Some(ledger) = ledger(state) else {
        return no_ledger();
    };
    let Some(jti) = percent_decode(segment).filter(|j| !j.is_empty() && !j.contains('/')) else {
        return bad_request("expected /admin/tokens/{jti}");
    };
    match ledger.token(&jti).await {
        Ok(Some(record)) => json(&json!(record)),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not_found", "no token with that jti"),
        Err(e) => unavailable(&e),
    }
}

/// `GET /admin/users/{id}`: the upserted user.
pub async fn user(state: &State, segment: &str) -> Response<Body> {
    let Some(ledger) = ledger(state) else {
        return no_ledger();
    };
    let Some(id) = percent_decode(segment).filter(|id| !id.is_empty()) else {
        return bad_request("expected /admin/users/{id}");
    };
    match ledger.user(&id).await {
        Ok(Some(record)) => json(&json!(record)),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not_found", "no user with that id"),
        Err(e) => unavailable(&e),
    }
}

/// `GET /admin/tokens?…`: records matching every filter, newest first, one page.
pub async fn search(state: &State, query: &str) -> Response<Body> {
    let Some(ledger) = ledger(state) else {
        return no_ledger();
    };
    let recorded: Vec<String> = {
        let gateway = state.gateway.load();
        let mut names: Vec<String> =
            gateway.config.routes.iter().filter_map(|r| r.ledger.as_ref()).flat_map(|l| l.record.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let search = match parse(query, &recorded) {
        Ok(s) => s,
        Err(message) => return bad_request(&message),
    };
    let limit = search.limit;
    // One more than asked: whether there is a next page.
    let mut records = match ledger.search(Search { limit: limit + 1, ..search }).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next = if more { records.last().map(|r| r.id.to_string()) } else { None };
    json(&json!({ "tokens": records, "next_cursor": next }))
}

fn parse(query: &str, recorded: &[String]) -> Result<Search, String> {
    let pairs = query_pairs(query).ok_or("the query is not valid UTF-8")?;
    let mut search = Search { limit: DEFAULT_LIMIT, ..Search::default() };
    for (name, value) in pairs {
        match name.as_str() {
            "user" => search.user = Some(value),
            "route" => search.route = Some(value),
            "sha256" => search.sha256 = Some(value.to_ascii_lowercase()),
            "limit" => {
                search.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or(format!("limit must be 1 to {MAX_LIMIT}"))?;
            }
            "cursor" => {
                search.before = Some(value.parse().ok().filter(|n: &i64| *n > 0).ok_or("invalid cursor")?);
            }
            claim if recorded.iter().any(|r| r == claim) => search.claims.push((name, value)),
            other => {
                let known = if recorded.is_empty() { "none".to_owned() } else { recorded.join(", ") };
                return Err(format!(
                    "unknown filter {other:?}: use user, route, sha256, limit, cursor or a recorded claim ({known})"
                ));
            }
        }
    }
    Ok(search)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_recorded_claims_or_known_names() {
        let recorded = ["phn".to_owned(), "xid".to_owned()];
        let s = parse("xid=a%20b&user=u1&limit=2&cursor=9", &recorded).unwrap();
        assert_eq!(s.claims, [("xid".to_owned(), "a b".to_owned())]);
        assert_eq!((s.user.as_deref(), s.limit, s.before), (Some("u1"), 2, Some(9)));
        assert!(parse("email=x", &recorded).unwrap_err().contains("phn, xid"));
        assert!(parse("limit=0", &recorded).is_err());
        assert!(parse("limit=1001", &recorded).is_err());
        assert!(parse("cursor=-1", &recorded).is_err());
        assert_eq!(parse("", &recorded).unwrap().limit, DEFAULT_LIMIT);
    }
}
