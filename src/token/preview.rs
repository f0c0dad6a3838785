//! `tokengate mint`: a route's answer for a caller and inputs given on the command line,
//! minted with the route's real keys and templates, recorded nowhere.

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

use super::request::Values;
use super::{Record, Routes};
use crate::auth::Identity;
use crate::header_view::HeaderView;
use crate::json_body::JsonBody;
use crate::metrics::Metrics;

/// `tokengate mint`: what `route` answers for a caller with id `user_id` and the given
/// `SOURCE=VALUE` inputs. Returns the status and the body text.
pub async fn preview(
    routes: &Routes,
    route: &str,
    user_id: &str,
    sets: &[String],
) -> Result<(StatusCode, String), String> {
    let route = routes.by_name(route).ok_or_else(|| format!("no route named {route:?}"))?;
    let mut identity = serde_json::Map::new();
    identity.insert("id".into(), Value::String(user_id.to_owned()));
    let (mut body, mut query, mut captures, mut headers) =
        (serde_json::Map::new(), Vec::new(), Vec::new(), http::HeaderMap::new());
    for set in sets {
        let (source, value) = set.split_once('=').ok_or_else(|| format!("--set {set:?}: expected SOURCE=VALUE"))?;
        let value_json = || serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        match source.split_once('.') {
            Some(("user", f)) => {
                identity.insert(f.to_owned(), value_json());
            }
            Some(("body", f)) => {
                body.insert(f.to_owned(), value_json());
            }
            Some(("query", f)) => query.push(format!("{f}={value}")),
            Some(("path", f)) => captures.push((f.to_owned(), value.to_owned())),
            Some(("header", f)) => {
                let name = HeaderName::from_bytes(f.as_bytes()).map_err(|_| format!("invalid header {f:?}"))?;
                headers
                    .insert(name, HeaderValue::from_str(value).map_err(|_| format!("invalid header value for {f}"))?);
            }
            _ => return Err(format!("--set {source:?}: expected user.*, body.*, query.*, path.* or header.*")),
        }
    }
    let (body, query) = (JsonBody::from_value(&Value::Object(body)), query.join("&"));
    let values = Values {
        body: &body,
        ..Values::new(&query, &captures, HeaderView::Map(&headers), std::net::IpAddr::from([127, 0, 0, 1]))
    };
    // A preview mints nothing anyone receives: nothing to record.
    let resp = route.answer(&values, &Identity(identity), &Metrics::new(), Record::Nothing, None).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
