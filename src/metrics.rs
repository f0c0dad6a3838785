//! Every metric tokengate exports (SPEC §5), on an explicit registry so tests stay isolated.
//! Label values are bounded: route names, outcomes, status codes; never paths or user ids.

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds, from loopback mints to slow upstreams.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Handles to every metric; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_errors_total: IntCounterVec,
    pub tokens_minted_total: IntCounterVec,
    pub token_cache_total: IntCounterVec,
    pub auth_hook_total: IntCounterVec,
    pub auth_hook_duration_seconds: HistogramVec,
    pub auth_cache_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub cors_preflights_total: IntCounterVec,
    pub forward_auth_total: IntCounterVec,
    pub tracing_spans_total: IntCounterVec,
    pub ratelimit_decisions_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    /// Unix time of the last config put in service (the first load counts).
    pub config_last_reload_success_timestamp_seconds: Gauge,
    /// 1 for the config in service, labelled with its hash; nothing else.
    pub config_info: IntGaugeVec,
    pub config_reload_duration_seconds: Histogram,
    pub open_connections: IntGauge,
    /// Response body bytes moved from an upstream's socket to a client's by splice(2).
    pub upstream_spliced_bytes_total: IntCounter,
    pub ledger: LedgerMetrics,
    pub shared: SharedMetrics,
    /// HSM keys' signers (`keys[].pkcs11`).
    pub signer: SignerFamilies,
    /// Pre-resolved handles for forwarded traffic (`route="proxy"`), the hot path.
    pub proxy: RouteMetrics,
}

/// The ledger writer's counters (SPEC §6).
#[derive(Clone)]
pub struct LedgerMetrics {
    /// Token records committed.
    pub writes: IntCounter,
    /// Failed attempts to connect, migrate, write or purge.
    pub errors: IntCounter,
    /// Answers waiting in the queue to be written.
    pub queue_depth: IntGauge,
}

/// The HSM signers' families, by key id.
pub struct SignerFamilies {
    duration: HistogramVec,
    queue_depth: IntGaugeVec,
    unavailable: IntCounterVec,
}

impl SignerFamilies {
    /// The handles one key's signer threads use.
    pub fn for_key(&self, key: &str) -> SignerMetrics {
        for reason in ["queue_full", "timeout", "token"] {
            self.unavailable.with_label_values(&[key, reason]);
        }
        SignerMetrics {
            key: key.to_owned(),
            duration: self.duration.with_label_values(&[key]),
            queue_depth: self.queue_depth.with_label_values(&[key]),
            unavailable: self.unavailable.clone(),
        }
    }
}

/// One HSM key's signer metrics.
#[derive(Clone)]
pub struct SignerMetrics {
    key: String,
    /// Time inside the module per signature.
    pub duration: Histogram,
    /// Signatures waiting for a signer thread.
    pub queue_depth: IntGauge,
    unavailable: IntCounterVec,
}

impl SignerMetrics {
    /// Counts a signature refused with 503, by reason (queue_full, timeout, token).
    pub fn unavailable(&self, reason: &str) {
        self.unavailable.with_label_values(&[&self.key, reason]).inc();
    }
}

/// Redis shared state (SPEC §7).
#[derive(Clone)]
pub struct SharedMetrics {
    /// 1 while Redis answers, 0 while the circuit breaker skips it.
    pub up: IntGauge,
    /// Failed Redis calls, by kind: timeout, connection, script; and bad_mac, an entry that
    /// failed its MAC.
    pub errors: IntCounterVec,
    pub duration: Histogram,
    /// What a limit did without Redis, by limit and decision (local, allow, deny).
    pub fallback: IntCounterVec,
}

/// One series of a labelled family, resolved at its first use: it shows in a scrape once
/// something was counted, as with `with_label_values`, which hashes the label values on each
/// call (SipHash, under the family's lock); after the first, a use is one atomic load.
pub struct Series<M> {
    resolved: OnceLock<M>,
    resolve: Box<dyn Fn() -> M + Send + Sync>,
}

impl<M> Series<M> {
    fn of<P: MetricVecBuilder<M = M> + 'static>(family: &MetricVec<P>, labels: &[&str]) -> Self
    where
        M: Send + Sync + 'static,
    {
        let (family, labels) = (family.clone(), labels.iter().map(|&l| l.to_owned()).collect::<Vec<_>>());
        Self { resolved: OnceLock::new(), resolve: Box::new(move || family.with_label_values(&labels)) }
    }

    #[inline]
    pub fn get(&self) -> &M {
        self.resolved.get_or_init(&self.resolve)
    }
}

/// One route's request counter and latency histogram, resolved once instead of hashing
/// label values on every request.
pub struct RouteMetrics {
    route: String,
    requests: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    duration: Series<Histogram>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMetrics({})", self.route)
    }
}

impl RouteMetrics {
    fn new(route: &str, requests: &IntCounterVec, durations: &HistogramVec) -> Self {
        Self {
            route: route.to_owned(),
            requests: requests.clone(),
            by_status: (0..600).map(|_| OnceLock::new()).collect(),
            duration: Series::of(durations, &[route]),
        }
    }

    /// Counts one answered request.
    #[inline]
    pub fn observe(&self, status: StatusCode, elapsed: Duration) {
        match self.by_status.get(usize::from(status.as_u16())) {
            Some(counter) => {
                counter.get_or_init(|| self.requests.with_label_values(&[self.route.as_str(), status.as_str()])).inc()
            }
            // Never an answer tokengate sends (upstream codes outside 100-599 are a 502).
            None => self.requests.with_label_values(&[self.route.as_str(), status.as_str()]).inc(),
        }
        self.duration.get().observe(elapsed.as_secs_f64());
    }
}

/// An auth hook's decisions (`tokengate_auth_hook_total`), resolved at their first use.
pub struct HookOutcomes {
    pub allow: Series<IntCounter>,
    pub deny: Series<IntCounter>,
    pub error: Series<IntCounter>,
    /// `tokengate_auth_cache_total` of an HTTP hook: found in a cache (local or shared), or
    /// asked.
    pub cache_hit: Series<IntCounter>,
    pub cache_miss: Series<IntCounter>,
}

/// Registers `metric` on `r`. The names and labels are constants of this file, registered
/// once at start-up, so an error is a bug in this file: it fails the first test that starts.
#[allow(clippy::expect_used, reason = "start-up only, over this file's constants: a failure is a bug here")]
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("valid metric");
    r.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(r, HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), labels))
}

impl Metrics {
    /// `route`'s request counter and latency histogram (a token route's or a forward-auth
    /// entry's), for the compiled config to keep.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics::new(route, &self.requests_total, &self.request_duration_seconds)
    }

    /// The auth hook `hook`'s decisions, for the compiled hook to keep.
    pub fn hook_outcomes(&self, hook: &str) -> HookOutcomes {
        let outcome = |o: &str| Series::of(&self.auth_hook_total, &[hook, o]);
        let cache = |result: &str| Series::of(&self.auth_cache_total, &[hook, result]);
        HookOutcomes {
            allow: outcome("allow"),
            deny: outcome("deny"),
            error: outcome("error"),
            cache_hit: cache("hit"),
            cache_miss: cache("miss"),
        }
    }

    /// The count of tokens `token` of `route` signed with `algorithm`, for the compiled token
    /// to keep.
    pub fn minted(&self, route: &str, token: &str, algorithm: &str) -> Series<IntCounter> {
        Series::of(&self.tokens_minted_total, &[route, token, algorithm])
    }
}

impl Metrics {
    /// Registers every metric (and the process collector) on a fresh registry.
    #[allow(clippy::expect_used, reason = "start-up only: the process collector is registered once, first")]
    pub fn new() -> Self {
        let r = Registry::new();
        let open_connections =
            register(&r, IntGauge::new("tokengate_open_connections", "Open client connections on the public listener"));
        let upstream_spliced_bytes_total = register(
            &r,
            IntCounter::new(
                "tokengate_upstream_spliced_bytes_total",
                "Response body bytes moved from upstream to client sockets by splice(2), not copied through tokengate",
            ),
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(Opts::new("tokengate_build_info", "Build information; always 1"), &["version"]),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("unique metric");
        let requests_total = counter(
            &r,
            "tokengate_requests_total",
            "Requests answered, by token route (or \"proxy\") and status",
            &["route", "status"],
        );
        let request_duration_seconds =
            histogram(&r, "tokengate_request_duration_seconds", "Time to response headers, by route", &["route"]);
        let config_last_reload_success_timestamp_seconds = register(
            &r,
            Gauge::new(
                "tokengate_config_last_reload_success_timestamp_seconds",
                "Unix time the config in service was loaded",
            ),
        );
        let config_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tokengate_config_info",
                    "The config in service: 1, labelled with the first 12 hex digits of its SHA-256",
                ),
                &["hash"],
            ),
        );
        let config_reload_duration_seconds = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "tokengate_config_reload_duration_seconds",
                    "Time to load, check and compile a config",
                )
                .buckets(BUCKETS.to_vec()),
            ),
        );
        let m = Self {
            proxy: RouteMetrics::new("proxy", &requests_total, &request_duration_seconds),
            requests_total,
            request_duration_seconds,
            upstream_errors_total: counter(
                &r,
                "tokengate_upstream_errors_total",
                "Forwarding failures, by kind",
                &["kind"],
            ),
            tokens_minted_total: counter(
                &r,
                "tokengate_tokens_minted_total",
                "Tokens signed",
                &["route", "token", "alg"],
            ),
            token_cache_total: counter(&r, "tokengate_token_cache_total", "Token cache look-ups", &["route", "result"]),
            auth_hook_total: counter(&r, "tokengate_auth_hook_total", "Auth hook decisions", &["hook", "outcome"]),
            auth_hook_duration_seconds: histogram(
                &r,
                "tokengate_auth_hook_duration_seconds",
                "Auth hook call latency",
                &["hook"],
            ),
            auth_cache_total: counter(&r, "tokengate_auth_cache_total", "Auth cache look-ups", &["hook", "result"]),
            rate_limited_total: counter(
                &r,
                "tokengate_rate_limited_total",
                "Requests refused by a rate limit",
                &["limit"],
            ),
            ratelimit_decisions_total: counter(
                &r,
                "tokengate_ratelimit_decisions_total",
                "Rate limit decisions: allow, limit, would_limit (a dry_run limit that would have refused)",
                &["limit", "outcome"],
            ),
            tracing_spans_total: counter(
                &r,
                "tokengate_tracing_spans_total",
                "Spans exported to the collector, or dropped (queue full, collector slow or down)",
                &["result"],
            ),
            cors_preflights_total: counter(
                &r,
                "tokengate_cors_preflights_total",
                "CORS preflights on token routes, answered by tokengate",
                &["route", "result"],
            ),
            forward_auth_total: counter(
                &r,
                "tokengate_forward_auth_total",
                "Decisions of forward-auth entries, by outcome (allow, deny, limited, error)",
                &["name", "outcome"],
            ),
            config_reloads_total: counter(&r, "tokengate_config_reloads_total", "Config reloads", &["result"]),
            config_last_reload_success_timestamp_seconds,
            config_info,
            config_reload_duration_seconds,
            open_connections,
            upstream_spliced_bytes_total,
            ledger: LedgerMetrics {
                writes: register(
                    &r,
                    IntCounter::new("tokengate_ledger_writes_total", "Token records committed to the ledger"),
                ),
                errors: register(
                    &r,
                    IntCounter::new(
                        "tokengate_ledger_errors_total",
                        "Failed ledger operations (connect, migrate, write, purge); writes are retried",
                    ),
                ),
                queue_depth: register(
                    &r,
                    IntGauge::new("tokengate_ledger_queue_depth", "Answers waiting to be written to the ledger"),
                ),
            },
            shared: SharedMetrics {
                up: register(
                    &r,
                    IntGauge::new("tokengate_shared_state_up", "1 while Redis answers; 0 while it is skipped"),
                ),
                errors: counter(&r, "tokengate_shared_state_errors_total", "Failed Redis calls, by kind", &["kind"]),
                duration: register(
                    &r,
                    Histogram::with_opts(
                        HistogramOpts::new("tokengate_shared_state_duration_seconds", "Redis call latency")
                            .buckets(BUCKETS.to_vec()),
                    ),
                ),
                fallback: counter(
                    &r,
                    "tokengate_shared_state_fallback_total",
                    "Limit checks decided without Redis, by limit and on_error decision",
                    &["limit", "decision"],
                ),
            },
            signer: SignerFamilies {
                duration: histogram(
                    &r,
                    "tokengate_signer_duration_seconds",
                    "Time an HSM key's PKCS#11 module took to sign, by key",
                    &["key"],
                ),
                queue_depth: register(
                    &r,
                    IntGaugeVec::new(
                        Opts::new("tokengate_signer_queue_depth", "Signatures waiting for an HSM key's signer threads"),
                        &["key"],
                    ),
                ),
                unavailable: counter(
                    &r,
                    "tokengate_signer_unavailable_total",
                    "Signatures refused with 503 signer_unavailable, by key and reason (queue_full, timeout, token)",
                    &["key", "reason"],
                ),
            },
            registry: r,
        };
        // Known, bounded label values start at 0 so rate() and alerts see them from the start.
        for result in ["success", "failure"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        for kind in ["connect", "timeout", "protocol"] {
            m.upstream_errors_total.with_label_values(&[kind]);
        }
        for kind in ["timeout", "connection", "script", "bad_mac"] {
            m.shared.errors.with_label_values(&[kind]);
        }
        // Forwarded traffic's latency series shows from the start, as it always has.
        m.proxy.duration.get();
        m
    }

    /// Records that the config with `hash` is now in service.
    pub fn config_in_service(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.config_last_reload_success_timestamp_seconds.set(now.as_secs_f64());
    }

    /// The Prometheus text format (0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure would mean a malformed family.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
