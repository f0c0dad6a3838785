//! A token route's responses: its `response` shape, and errors in its `error_response` shape
//! (or the default JSON body), always with `Cache-Control: no-store`.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;

use super::request::Values;
use super::{Rendered, Route};
use crate::body::{self, Body};
use crate::error::{add_error_headers, Error};
use crate::template::Missing;

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
                render(shape, status, &ctx).unwrap_or_else(|_| crate::error::rescue(err))
            }
            None => crate::error::rescue(err),
        };
        add_error_headers(err, &mut resp);
        resp
    }
}

/// The shape rendered for `values`, as a response with its content type and headers. A JSON
/// shape is written as JSON text at once; any other renders a value first (text goes out as
/// it is).
pub(super) fn render(shape: &Rendered, status: StatusCode, values: &Values<'_>) -> Result<Response<Body>, Missing> {
    let bytes = if let Some(json) = &shape.json {
        let mut bytes = Vec::with_capacity(512);
        json.write(values, &mut bytes)?;
        bytes
    } else {
        match shape.body.render(values)? {
            Value::String(s) => s.into_bytes(),
            // A JSON value always serializes.
            other => serde_json::to_vec(&other).unwrap_or_default(),
        }
    };
    let mut resp = Response::new(body::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, shape.content_type.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in &shape.headers {
        h.insert(k.clone(), v.clone());
    }
    Ok(resp)
}
