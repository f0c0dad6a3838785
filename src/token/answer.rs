//! A token route's answer once the caller is known: a place in the ledger's queue, the tokens
//! minted (or reused), their record, and the route's response rendered.

use std::sync::Arc;

use http::Response;

use super::request::Values;
use super::respond::render;
use super::{record, Record, Route};
use crate::auth::Identity;
use crate::body::Body;
use crate::error::Error;
use crate::ledger::Recorder;
use crate::metrics::Metrics;
use crate::trace::{Attr, Kind, RequestTrace, Span};

/// Ends a span `answer` started, marked failed when `failed`.
fn end(trace: Option<&RequestTrace>, span: Option<Span>, failed: bool) {
    if let (Some(trace), Some(mut span)) = (trace, span) {
        span.error = failed;
        trace.record(span);
    }
}

/// The tokens one answer carries: by name, and the first one's (iat, exp).
pub(crate) struct Issued<'r> {
    /// Each token under its name in the route.
    pub named: Vec<(&'r str, Arc<str>)>,
    pub first: Option<(u64, u64)>,
}

impl Route {
    /// Mints the route's tokens for `identity`, records them in the ledger, and renders the
    /// route's response (or its error shape).
    pub async fn answer(
        &self,
        values: &Values<'_>,
        identity: &Identity,
        metrics: &Metrics,
        record: Record,
        trace: Option<&RequestTrace>,
    ) -> Response<Body> {
        let values = Values { identity: Some(identity), ..*values };
        let issued = match self.issue(&values, identity, metrics, record, trace).await {
            Ok(issued) => issued,
            Err(e) => return self.error(&e, &values),
        };
        let values = Values { tokens: &issued.named, first: issued.first, ..values };
        match render(&self.response, self.response.status, &values) {
            Ok(resp) => resp,
            Err(missing) => self.error(&Error::InvalidRequest(missing.to_string()), &values),
        }
    }

    /// Mints (or reuses) the route's tokens for `identity` and records them in the ledger. A
    /// full ledger queue refuses before minting. Traced requests get a `mint` span (key ids and
    /// algorithms) and a `ledger` span.
    pub(crate) async fn issue(
        &self,
        values: &Values<'_>,
        identity: &Identity,
        metrics: &Metrics,
        record: Record,
        trace: Option<&RequestTrace>,
    ) -> Result<Issued<'_>, Error> {
        if self.tokens.is_empty() {
            return Ok(Issued { named: Vec::new(), first: None });
        }
        let ledger = self.ledger.as_ref().filter(|_| record == Record::Ledger);
        let reserved = ledger.map(Recorder::reserve).transpose().map_err(Error::from)?;
        let mut mint_span = trace.map(|t| t.child("mint", Kind::Internal));
        if let Some(span) = mint_span.as_mut() {
            // The keys and algorithms, never a claim value or a token.
            let kids = self.tokens.iter().map(|t| t.key.kid.as_str()).collect::<Vec<_>>().join(",");
            let algs = self.tokens.iter().map(|t| format!("{:?}", t.key.algorithm)).collect::<Vec<_>>().join(",");
            span.set("mint.key_id", Attr::Str(kids));
            span.set("mint.algorithm", Attr::Str(algs));
        }
        let minted = self.mint_all(values, identity, metrics, trace.zip(mint_span.as_ref())).await;
        end(trace, mint_span, minted.is_err());
        let minted = minted?;
        if let (Some(reserved), Some(recorder)) = (reserved, ledger) {
            let entry = record::entry(self, recorder, &minted, identity, values.now);
            let ledger_span = trace.map(|t| t.child("ledger", Kind::Internal));
            let recorded = reserved.record(entry).await;
            end(trace, ledger_span, recorded.is_err());
            if let Err(e) = recorded {
                tracing::warn!(route = %self.name, error = %e, "minted tokens not answered: the ledger did not take them");
                return Err(Error::from(e));
            }
        }
        let first = minted.first().map(|(m, _)| (m.iat, m.exp));
        let named = self.tokens.iter().zip(minted).map(|(spec, (m, _))| (spec.name.as_str(), m.token)).collect();
        Ok(Issued { named, first })
    }
}
