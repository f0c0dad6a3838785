//! A token route's request body: the method first (405), then its size (413), then JSON (400),
//! checked here and read where a template or an identity asks (`JsonBody`).

use bytes::Bytes;
use http::header;
use http::Method;
use http_body_util::{BodyExt, Either, Limited};

use super::Route;
use crate::body::{ClientBodyError, ClientFault, RequestBody};
use crate::error::Error;
use crate::header_view::HeaderView;
use crate::json_body::JsonBody;

impl Route {
    /// Method (405), then body size (413), then JSON.
    pub(super) async fn read_body(
        &self,
        method: &Method,
        headers: HeaderView<'_>,
        body: RequestBody,
    ) -> Result<JsonBody, Error> {
        if !self.methods.contains(method) {
            return Err(Error::MethodNotAllowed { allow: self.allow.clone() });
        }
        let declared = headers.get_str(&header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit) {
            return Err(Error::PayloadTooLarge(self.body_limit));
        }
        let limit = usize::try_from(self.body_limit).unwrap_or(usize::MAX);
        let bytes = match body {
            // A body that came whole with its head (`server::h1`): no collecting to do.
            Either::Right(whole) => whole.into_inner().unwrap_or_default(),
            streamed => self.collect(streamed, limit).await?,
        };
        if bytes.len() > limit {
            return Err(Error::PayloadTooLarge(self.body_limit));
        }
        JsonBody::parse(bytes).map_err(|e| Error::InvalidRequest(e.to_string()))
    }

    /// A streamed body, read to its end or to `limit` (413).
    async fn collect(&self, body: RequestBody, limit: usize) -> Result<Bytes, Error> {
        match Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::PayloadTooLarge(self.body_limit)),
            Err(e) => Err(match e.downcast_ref::<ClientBodyError>() {
                Some(ClientBodyError::Timeout(_)) => Error::ClientBody(ClientFault::Timeout),
                Some(ClientBodyError::Broken(_)) => Error::ClientBody(ClientFault::Broken),
                None => Error::BodyRead(e),
            }),
        }
    }
}
