//! A token route's responses: its `response` shape, and errors in its `error_response` shape
//! (or the default JSON body), always with `Cache-Control: no-store`.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;

use super::request::Values;
use super::{Rendered, Route};
use crate::body::{self, Body};
use crate::error::{add_error_headers, Error};

impl Route {
    /// The error in this route's `error_response` shape (or the default JSON body).
    pub(crate) fn error(&self, err: &Error, values: &Values<'_>) -> Response<Body> {
        let status = err.status();
        let mut resp = match &self.error_response {
            Some(shape) => {
                let message = err.public_message();
                let ctx = Values {
                    error: Some((&message, err.code(), status.as_u16())),
                    identity: None,
                    tokens: &[],
                    first: None,
                    ..*values
                };
                match shape.body.render(&ctx) {
                    Ok(rendered) => respond(shape, status, &rendered),
                    Err(_) => crate::error::rescue(err),
                }
            }
            None => crate::error::rescue(err),
        };
        add_error_headers(err, &mut resp);
        resp
    }
}

/// The rendered value as a response with the shape's content type and headers.
pub(super) fn respond(shape: &Rendered, status: StatusCode, rendered: &Value) -> Response<Body> {
    let is_json = shape.content_type.as_bytes().starts_with(b"application/json");
    let bytes = match rendered {
        Value::String(s) if !is_json => s.clone().into_bytes(),
        // A JSON value always serializes.
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    let mut resp = Response::new(body::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, shape.content_type.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in &shape.headers {
        h.insert(k.clone(), v.clone());
    }
    resp
}
