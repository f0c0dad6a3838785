//! A token route's answer once the caller is known: a place in the ledger's queue, the tokens
//! minted (or reused), their record, and the route's response rendered.

use http::Response;

use super::mint::Minted;
use super::request::Values;
use super::respond::respond;
use super::{record, Record, Route};
use crate::auth::Identity;
use crate::body::Body;
use crate::error::Error;
use crate::ledger::Recorder;
use crate::metrics::Metrics;

impl Route {
    /// Mints the route's tokens for `identity`, records them in the ledger, and renders the
    /// route's response (or its error shape). A full ledger queue refuses before minting.
    pub async fn answer(
        &self,
        values: &Values<'_>,
        identity: &Identity,
        metrics: &Metrics,
        record: Record,
    ) -> Response<Body> {
        let values = Values { identity: Some(identity), ..*values };
        let ledger = self.ledger.as_ref().filter(|_| record == Record::Ledger);
        let reserved = match ledger.map(Recorder::reserve).transpose() {
            Ok(reserved) => reserved,
            Err(e) => return self.error(&Error::from(e), &values),
        };
        let minted = match self.mint_all(&values, identity, metrics).await {
            Ok(m) => m,
            Err(e) => return self.error(&e, &values),
        };
        if let (Some(reserved), Some(recorder)) = (reserved, ledger) {
            let entry = record::entry(self, recorder, &minted, identity, values.now);
            if let Err(e) = reserved.record(entry).await {
                tracing::warn!(route = %self.name, error = %e, "minted tokens not answered: the ledger did not take them");
                return self.error(&Error::from(e), &values);
            }
        }
        let minted: Vec<Minted> = minted.into_iter().map(|(m, _)| m).collect();
        let named: Vec<(String, String)> =
            self.tokens.iter().zip(&minted).map(|(spec, m)| (spec.name.clone(), m.token.to_string())).collect();
        let values = Values { tokens: &named, first: minted.first().map(|m| (m.iat, m.exp)), ..values };
        match self.response.body.render(&values) {
            Ok(rendered) => respond(&self.response, self.response.status, &rendered),
            Err(missing) => self.error(&Error::InvalidRequest(missing.to_string()), &values),
        }
    }
}
