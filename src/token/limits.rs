//! A token route's rate limits: on this replica, or (with `shared_state`) in Redis for every
//! replica, one round trip per phase. When Redis cannot answer, `on_error` decides: `local`
//! counts on this replica, `allow` lets the request through, `deny` refuses it with a 503.

use std::sync::Arc;

use crate::config::OnError;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::ratelimit::{LimitInput, RateLimit};
use crate::shared::limits::SharedLimit;
use crate::shared::Shared;

/// Counts the request against each limit in order on this replica; the first refusal wins.
pub fn check_limits(limits: &[Arc<RateLimit>], input: &LimitInput<'_>, metrics: &Metrics) -> Result<(), Error> {
    for limit in limits {
        let decision = limit.check(input);
        if !decision.allowed {
            return Err(refused(limit, decision, metrics));
        }
    }
    Ok(())
}

fn refused(limit: &RateLimit, decision: crate::ratelimit::Decision, metrics: &Metrics) -> Error {
    metrics.rate_limited_total.with_label_values(&[&limit.name]).inc();
    Error::RateLimited { limit: limit.name.clone(), quota: limit.quota, headers: limit.headers, decision }
}

/// Counts the request against `limits`, in Redis when the route has shared state.
pub async fn check(
    limits: &[Arc<RateLimit>],
    input: &LimitInput<'_>,
    shared: Option<&(Shared, OnError)>,
    metrics: &Metrics,
) -> Result<(), Error> {
    let Some((shared, on_error)) = shared.filter(|_| !limits.is_empty()) else {
        return check_limits(limits, input, metrics);
    };
    let keys: Vec<SharedLimit<'_>> = limits
        .iter()
        .map(|l| SharedLimit {
            key: shared.key("rl", &[l.shape_text().as_bytes(), l.key_of(input).as_ref()]),
            quota: &l.quota,
        })
        .collect();
    match shared.check_limits(&keys).await {
        Some(None) => Ok(()),
        Some(Some((i, decision))) => Err(refused(&limits[i], decision, metrics)),
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
                OnError::Allow => Ok(()),
                OnError::Deny => Err(Error::SharedStateUnavailable),
            }
        }
    }
}
