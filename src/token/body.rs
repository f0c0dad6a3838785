//! A token route's request body: the method first (405), then its size (413), then JSON (400).

use http::header;
use http::Method;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::Route;
use crate::body::{ClientBodyError, ClientFault, RequestBody};
use crate::error::Error;

impl Route {
    /// Method (405), then body size (413), then JSON.
    pub(super) async fn read_body(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        body: RequestBody,
    ) -> Result<Value, Error> {
        if !self.methods.contains(method) {
            return Err(Error::MethodNotAllowed { allow: self.allow.clone() });
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit) {
            return Err(Error::PayloadTooLarge(self.body_limit));
        }
        let limit = usize::try_from(self.body_limit).unwrap_or(usize::MAX);
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Error::PayloadTooLarge(self.body_limit))
            }
            Err(e) => {
                return Err(match e.downcast_ref::<ClientBodyError>() {
                    Some(ClientBodyError::Timeout(_)) => Error::ClientBody(ClientFault::Timeout),
                    Some(ClientBodyError::Broken(_)) => Error::ClientBody(ClientFault::Broken),
                    None => Error::BodyRead(e),
                })
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| Error::InvalidRequest("request body is not valid JSON".into()))
    }
}
