//! A token route's rate limits: on this replica, or (with `shared_state`) in Redis for every
//! replica, one round trip per phase. When Redis cannot answer, `on_error` decides: `local`
//! counts on this replica, `allow` lets the request through, `deny` refuses it with a 503.
//! A `dry_run` limit that would refuse lets the request through; the answer reports it.

use std::sync::Arc;

use http::HeaderMap;

use crate::config::OnError;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::ratelimit::{fields, Decision, LimitInput, RateLimit};
use crate::shared::limits::{Checked, SharedLimit};
use crate::shared::Shared;
use crate::trace::{RequestTrace, Span};

/// A `dry_run` limit that would have refused the request: logged, counted, and reported in the
/// answer's RateLimit fields.
pub struct WouldLimit {
    limit: Arc<RateLimit>,
    decision: Decision,
}

impl WouldLimit {
    /// Adds the RateLimit fields of the limit that would have refused.
    pub fn report(&self, headers: &mut HeaderMap) {
        fields::insert(headers, &self.limit.name, &self.limit.quota, &self.decision, self.limit.headers);
    }
}

/// Counts the request against each limit in order on this replica; the first refusal wins.
pub fn check_limits(
    limits: &[Arc<RateLimit>],
    input: &LimitInput<'_>,
    metrics: &Metrics,
) -> Result<Option<WouldLimit>, Error> {
    let mut would = None;
    for limit in limits {
        decided(limit, limit.check(input), metrics, &mut would)?;
    }
    Ok(would)
}

/// Counts one limit's decision; Err: it refuses.
fn decided(
    limit: &Arc<RateLimit>,
    decision: Decision,
    metrics: &Metrics,
    would: &mut Option<WouldLimit>,
) -> Result<(), Error> {
    let outcome = match (decision.allowed, limit.dry_run) {
        (true, _) => "allow",
        (false, false) => "limit",
        (false, true) => "would_limit",
    };
    metrics.ratelimit_decisions_total.with_label_values(&[&limit.name, outcome]).inc();
    match outcome {
        "limit" => {
            metrics.rate_limited_total.with_label_values(&[&limit.name]).inc();
            Err(Error::RateLimited { limit: limit.name.clone(), quota: limit.quota, headers: limit.headers, decision })
        }
        "would_limit" => {
            tracing::info!(limit = %limit.name, "rate limit would have refused this request (dry_run)");
            would.get_or_insert_with(|| WouldLimit { limit: limit.clone(), decision });
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Counts the request against `limits`, in Redis when the route has shared state; a traced
/// request's Redis call is a `redis` client span under `parent` (its `rate_limit` span).
pub async fn check(
    limits: &[Arc<RateLimit>],
    input: &LimitInput<'_>,
    shared: Option<&(Shared, OnError)>,
    metrics: &Metrics,
    parent: Option<(&RequestTrace, &Span)>,
) -> Result<Option<WouldLimit>, Error> {
    let Some((shared, on_error)) = shared.filter(|_| !limits.is_empty()) else {
        return check_limits(limits, input, metrics);
    };
    let keys: Vec<SharedLimit<'_>> = limits
        .iter()
        .map(|l| SharedLimit {
            key: shared.key("rl", &[l.shape_text().as_bytes(), l.key_of(input).as_ref()]),
            quota: &l.quota,
            dry_run: l.dry_run,
        })
        .collect();
    let mut would = None;
    let allow = Decision { allowed: true, remaining: 0, reset: Default::default(), retry_after: Default::default() };
    // No answer: Redis failed, timed out, or its circuit breaker is open.
    let checked = crate::trace::redis(parent, "EVALSHA", shared.check_limits(&keys), Option::is_some).await;
    match checked {
        Some(Checked::Refused(i, decision)) => {
            decided(&limits[i], decision, metrics, &mut would)?;
            Ok(would)
        }
        Some(checked) => {
            let dry = match checked {
                Checked::WouldRefuse(i, decision) => Some((i, decision)),
                _ => None,
            };
            for (i, limit) in limits.iter().enumerate() {
                let decision = dry.filter(|(j, _)| *j == i).map_or(allow, |(_, d)| d);
                decided(limit, decision, metrics, &mut would)?;
            }
            Ok(would)
        }
        None => {
            let decision = match on_error {
                OnError::Local => "local",
                OnError::Allow => "allow",
                OnError::Deny => "deny",
            };
            for l in limits {
                metrics.shared.fallback.with_label_values(&[&l.name, decision]).inc();
            }
            match on_error {
                OnError::Local => check_limits(limits, input, metrics),
                OnError::Allow => Ok(None),
                OnError::Deny => Err(Error::SharedStateUnavailable),
            }
        }
    }
}
