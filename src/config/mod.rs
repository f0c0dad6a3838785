//! The configuration file, as plain data (SPEC §2).
//!
//! `load` turns a file into a [`Config`]: YAML → `${VAR}` substitution → `*_file` secrets →
//! typed structs → `validate`. Every error carries its key path. Nothing downstream re-checks
//! what `validate` accepted.

mod load;
mod secret;
mod typed;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

pub use load::{digest, load_file, load_str, schema, ConfigErrors, FieldError, Loaded};
pub use secret::Secret;
pub use typed::{FieldName, HttpUrl, MethodName};
use units::{ByteSize, Duration, SignedDuration};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The app's public port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`, the JWK set and `/admin/*`; never the public port.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Guards `/admin/*`; empty or absent: loopback peers only.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Also serve the JWK set on `listen` at this path.
    #[serde(default)]
    pub jwks_path: Option<String>,
    /// Runtime worker threads; default: all cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// TLS on `listen` (TLS 1.2+, ALPN h2 and http/1.1).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Signing keys; `id` becomes the JWT `kid`.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub auth_hooks: IndexMap<String, AuthHookConfig>,
    #[serde(default)]
    pub rate_limits: IndexMap<String, RateLimitConfig>,
    /// Limits applied to forwarded traffic too (429 before forwarding).
    #[serde(default)]
    pub proxy_rate_limits: Vec<String>,
    /// Which RateLimit fields a limited (or limit-reporting) answer carries.
    #[serde(default)]
    pub rate_limit_headers: RateLimitHeaders,
    /// Token routes; all other traffic is forwarded.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Decisions for a proxy in front (nginx `auth_request`, Traefik ForwardAuth, Caddy
    /// `forward_auth`, Envoy `ext_authz`); never forwarded.
    #[serde(default)]
    pub forward_auth: Vec<ForwardAuthConfig>,
    #[serde(default)]
    pub ledger: Option<LedgerConfig>,
    #[serde(default)]
    pub shared_state: Option<SharedStateConfig>,
    /// OpenTelemetry traces (SPEC §9); the standard `OTEL_*` variables fill in the rest.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
}

/// SPEC §2 `tracing`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    #[serde(default)]
    pub exporter: TraceExporter,
    /// `http://host:4318` (OTLP/HTTP protobuf; `/v1/traces` is added) or `grpc://host:4317`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub sampler: Option<TraceSampler>,
    /// For the ratio samplers, 0.0 to 1.0.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// For an `https://` endpoint: CA certificates (PEM) trusted besides the system roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE` when absent).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TraceExporter {
    #[default]
    None,
    Otlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedTraceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
}

/// What the command line pins for every load of the file, the first and each reload.
#[derive(Clone, Copy, Debug)]
pub struct Overrides {
    /// `--workers`: wins over `workers:`.
    pub workers: Option<usize>,
    /// Worker threads when neither says (all cores for `tokengate run`).
    pub default_workers: usize,
}

impl Default for Overrides {
    fn default() -> Self {
        Self { workers: None, default_workers: 1 }
    }
}

impl Overrides {
    /// The worker threads a process started with `config` runs.
    pub fn workers(&self, config: &Config) -> usize {
        self.workers.or(config.workers).unwrap_or(self.default_workers).max(1)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The app backend, `http://host:port` or `https://host:port` (no path).
    pub url: HttpUrl,
    /// For `https://`: more CA certificates (PEM) to trust besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "d2s")]
    pub connect_timeout: Duration,
    /// Until response headers; bodies stream without limit.
    #[serde(default = "d60s")]
    pub response_timeout: Duration,
    #[serde(default = "d90s")]
    pub pool_idle_timeout: Duration,
}

fn d2s() -> Duration {
    Duration::from_secs(2)
}
fn d5s() -> Duration {
    Duration::from_secs(5)
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}
fn d60s() -> Duration {
    Duration::from_secs(60)
}
fn d90s() -> Duration {
    Duration::from_secs(90)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum XForwardedMode {
    /// Append the peer to `X-Forwarded-For`; set `-Proto`/`-Host` unless a trusted proxy did.
    #[default]
    Append,
    /// Drop every incoming `X-Forwarded-*` (and `X_Forwarded_*`) and set fresh ones.
    Replace,
    /// Leave them as they came.
    Off,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    #[serde(default)]
    pub x_forwarded: XForwardedMode,
    /// Peers whose `X-Forwarded-For` is believed for `client_ip`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Kept if present, else generated (UUID v4); sent upstream and back.
    #[serde(default = "default_request_id_header")]
    pub request_id_header: FieldName,
}

fn default_request_id_header() -> FieldName {
    FieldName(http::HeaderName::from_static("x-request-id"))
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            x_forwarded: XForwardedMode::default(),
            trusted_proxies: Vec::new(),
            request_id_header: default_request_id_header(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// A larger request header block is answered 431.
    #[serde(default = "d64kib")]
    pub max_header_bytes: ByteSize,
    /// A client slower than this to send its headers is cut off.
    #[serde(default = "d10s")]
    pub header_read_timeout: Duration,
    /// A keep-alive HTTP/1.1 or HTTP/2 connection with no request in flight for this long is
    /// closed (HTTP/2: GOAWAY). Upgraded connections (WebSockets) are not cut.
    #[serde(default = "d60s")]
    pub idle_timeout: Duration,
    /// No request-body byte for this long: 408 when nothing was answered yet, else the stream
    /// is reset. Token routes and forwarded uploads alike.
    #[serde(default = "d30s")]
    pub request_body_timeout: Duration,
    /// Open client connections; beyond it new ones wait in the accept queue.
    #[serde(default = "d10000")]
    pub max_connections: usize,
    /// A larger body on a token route is answered 413.
    #[serde(default = "d64kib")]
    pub token_route_body: ByteSize,
    /// On SIGTERM: how long in-flight requests and tunnels may take.
    #[serde(default = "d30s")]
    pub shutdown_grace: Duration,
}

fn d64kib() -> ByteSize {
    ByteSize(64 * 1024)
}
fn d10000() -> usize {
    10_000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: d64kib(),
            header_read_timeout: d10s(),
            idle_timeout: d60s(),
            request_body_timeout: d30s(),
            max_connections: d10000(),
            token_route_body: d64kib(),
            shutdown_grace: d30s(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub id: String,
    pub algorithm: Algorithm,
    /// HMAC secret as UTF-8 bytes (never guessed to be hex).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// HMAC secret, base64-encoded.
    #[serde(default)]
    pub secret_base64: Option<Secret>,
    /// PEM private key inline (`private_key_file` reads it from a file).
    #[serde(default)]
    pub private_key: Option<Secret>,
    /// PEM private key, base64-encoded as some vendors hand it out (Mux's signing keys).
    #[serde(default)]
    pub private_key_base64: Option<Secret>,
    /// A Google service-account key, the JSON file Google issues (`service_account_file`):
    /// its `private_key` signs (RS256), its `private_key_id` is the `kid`, and claims may say
    /// `{{ key.client_email }}`.
    #[serde(default)]
    pub service_account: Option<Secret>,
    /// The key lives in an HSM and is used there through its PKCS#11 module; tokengate never
    /// holds the private key (SPEC §2 `keys[].pkcs11`).
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// No longer signs, but stays in the JWK set.
    #[serde(default)]
    pub retired: bool,
}

/// Where an HSM keeps a key (`keys[].pkcs11`).
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module, such as `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token (partition) holding the key, by its label.
    pub token_label: String,
    /// The key, by its `CKA_LABEL`: a private key (its public key beside it, same label) or,
    /// for HS256/HS384/HS512, a secret key.
    pub key_label: String,
    /// The user PIN (`pin_file` reads it from a file). Never logged.
    #[serde(default)]
    pub pin: Option<Secret>,
    /// Signer threads, each with its own logged-in session.
    #[serde(default = "default_pkcs11_sessions")]
    pub sessions: usize,
    /// Signatures that may wait for a signer; one more is refused with 503.
    #[serde(default = "default_pkcs11_queue")]
    pub queue: usize,
    /// How long a signature may take, waiting included, before the request gets 503.
    #[serde(default = "default_pkcs11_timeout")]
    pub timeout: Duration,
}

fn default_pkcs11_sessions() -> usize {
    2
}

fn default_pkcs11_queue() -> usize {
    1024
}

fn default_pkcs11_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(2))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthHookType {
    Http,
    ApiKey,
    Jwt,
    None,
}

/// One auth hook. Which keys apply depends on `type`; `validate` checks them.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthHookConfig {
    #[serde(rename = "type")]
    pub kind: AuthHookType,
    /// http: the session endpoint.
    #[serde(default)]
    pub url: Option<HttpUrl>,
    /// http: method of the subrequest.
    #[serde(default)]
    pub method: Option<MethodName>,
    /// http: request headers passed to the hook (and hashed into the cache key).
    #[serde(default)]
    pub forward_headers: Vec<FieldName>,
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// api_key: header carrying the key.
    #[serde(default)]
    pub header: Option<FieldName>,
    /// api_key: accepted keys, compared in constant time.
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// jwt: where the IdP publishes its keys.
    #[serde(default)]
    pub jwks_url: Option<HttpUrl>,
    /// For `https://` `url` and `jwks_url`: more CA certificates (PEM) to trust besides the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// jwt: a static PEM public key.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// jwt: an HMAC secret.
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<Algorithm>,
    /// Identity fields: `body:/json/pointer`, `header:name` or `claim:name`.
    #[serde(default)]
    pub identity: IndexMap<String, String>,
    #[serde(default)]
    pub cache: Option<HookCacheConfig>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookCacheConfig {
    #[serde(default = "d30s")]
    pub ttl: Duration,
    #[serde(default = "d2s")]
    pub negative_ttl: Duration,
    /// Allowed credentials kept at most.
    #[serde(default = "d100000")]
    pub max_entries: u64,
    /// Denied credentials kept at most, apart from the allowed ones (default: a quarter of
    /// `max_entries`), so a flood of bad credentials never evicts a real user's session.
    #[serde(default)]
    pub max_negative_entries: Option<u64>,
}

impl HookCacheConfig {
    pub fn negative_entries(&self) -> u64 {
        self.max_negative_entries.unwrap_or(self.max_entries / 4).max(1)
    }
}

fn d100000() -> u64 {
    100_000
}

impl Default for HookCacheConfig {
    fn default() -> Self {
        Self { ttl: d30s(), negative_ttl: d2s(), max_entries: d100000(), max_negative_entries: None }
    }
}

/// A GCRA limit: `rate` per `per`, bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `client_ip`, `user`, `user.<field>`, `route`, `global` or `header:NAME`.
    pub key: String,
    pub rate: u32,
    pub per: Duration,
    #[serde(default)]
    pub burst: Option<u32>,
    /// Keys tracked at most (default 100000); beyond it the least recently used are forgotten.
    #[serde(default)]
    pub max_keys: Option<u64>,
    /// Counted and reported (metric, log line, RateLimit fields) but never refuses.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Exact path; `{name}` captures one segment.
    pub path: String,
    #[serde(default = "default_methods")]
    pub methods: Vec<MethodName>,
    /// Name of an auth hook.
    pub auth: String,
    #[serde(default)]
    pub rate_limits: Vec<String>,
    pub tokens: IndexMap<String, TokenConfig>,
    /// Reuse a minted token while over half its lifetime is left.
    #[serde(default)]
    pub cache_tokens: bool,
    #[serde(default)]
    pub response: ResponseConfig,
    #[serde(default)]
    pub error_response: Option<ErrorResponseConfig>,
    #[serde(default)]
    pub ledger: Option<RouteLedgerConfig>,
    /// Browser pages on other origins may call this route.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

/// SPEC §2 `forward_auth[]`: a decision endpoint on `listen` for a proxy in front.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    pub name: String,
    /// Exact path on `listen`, e.g. `/_tokengate/auth`; or a prefix ending in `/*`, whose rest
    /// is the original path (Envoy's ext_authz `path_prefix`).
    pub path: String,
    /// Name of an auth hook.
    pub auth: String,
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Set on an allow, for the proxy to copy upstream (templates; a header whose value is
    /// missing is left out).
    #[serde(default)]
    pub response_headers: IndexMap<String, String>,
    /// Optional tokens minted on an allow (`tokens.<name>` in `response_headers`).
    #[serde(default)]
    pub tokens: IndexMap<String, TokenConfig>,
    /// Reuse a minted token while over half its lifetime is left.
    #[serde(default)]
    pub cache_tokens: bool,
    /// Path pattern of the original request whose `{name}` captures are `path.<name>`.
    #[serde(default)]
    pub original_path: Option<String>,
    #[serde(default)]
    pub error_response: Option<ErrorResponseConfig>,
    #[serde(default)]
    pub ledger: Option<RouteLedgerConfig>,
    /// Preflights of these origins (original method OPTIONS, from a trusted proxy) are
    /// allowed without authentication; every answer gets the CORS fields.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub compat: Compat,
}

/// How a forward-auth entry speaks to the proxy in front.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// 200, 401, 429, 503 as they are; the original request read from `X-Forwarded-Method`,
    /// `-Uri`, `-Host` (Traefik, Caddy, Envoy).
    #[default]
    Standard,
    /// nginx `auth_request` understands only 2xx, 401 and 403: every other status becomes 403
    /// with `X-Auth-Request-Status` (and `X-Auth-Request-Retry-After`); the original request
    /// read from `X-Original-Method` and `X-Original-URL` (nginx, ingress-nginx).
    Nginx,
}

/// SPEC §2 `rate_limit_headers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitHeaders {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    Legacy,
    /// The IETF httpapi draft's `RateLimit` and `RateLimit-Policy` structured fields.
    Draft,
    #[default]
    Both,
}

impl RateLimitHeaders {
    pub fn legacy(self) -> bool {
        matches!(self, Self::Legacy | Self::Both)
    }
    pub fn draft(self) -> bool {
        matches!(self, Self::Draft | Self::Both)
    }
}

/// SPEC §2 `routes[].cors`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `https://app.example.com`, `regex:^https://[a-z0-9-]+\.example\.com$`, or `*`.
    pub allowed_origins: Vec<String>,
    /// The browser may send cookies and `Authorization`.
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "default_cors_allowed_headers")]
    pub allowed_headers: Vec<String>,
    /// Default: `retry-after`, the RateLimit fields `rate_limit_headers` sends.
    #[serde(default)]
    pub expose_headers: Option<Vec<String>>,
    #[serde(default = "default_cors_max_age")]
    pub max_age: Duration,
}

fn default_cors_allowed_headers() -> Vec<String> {
    vec!["content-type".into(), "authorization".into()]
}

fn default_cors_max_age() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}

fn default_methods() -> Vec<MethodName> {
    vec![MethodName(http::Method::POST)]
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub key: String,
    pub ttl: Duration,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `iat` is set this far from now (e.g. `-10s`).
    #[serde(default)]
    pub iat_offset: Option<SignedDuration>,
    /// Adds `nbf` = `iat`.
    #[serde(default)]
    pub not_before: bool,
    /// Extra JWT header fields, e.g. `{typ: JWT}`.
    #[serde(default)]
    pub header: serde_json::Map<String, serde_json::Value>,
    /// `false` omits `kid` from the header.
    #[serde(default = "yes")]
    pub kid: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    #[serde(default = "d200")]
    pub status: u16,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON value with templates; a string body with `text/plain`.
    #[serde(default)]
    pub body: serde_json::Value,
}

fn d200() -> u16 {
    200
}
fn default_content_type() -> String {
    "application/json".into()
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            status: 200,
            content_type: default_content_type(),
            headers: BTreeMap::new(),
            body: serde_json::Value::Null,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponseConfig {
    #[serde(default = "default_content_type")]
    pub content_type: String,
    pub body: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteLedgerConfig {
    /// Claim names of the route's first token to record and make searchable.
    #[serde(default)]
    pub record: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerType {
    Sqlite,
    Postgres,
}

/// When a token route answers relative to its ledger record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The record is queued and written off the request path, in batches.
    #[default]
    Queued,
    /// The route answers only once the record is committed.
    Commit,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    #[serde(rename = "type")]
    pub kind: LedgerType,
    /// The SQLite database file (type sqlite); created if missing.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `postgres://user:password@host:port/db?sslmode=require` (type postgres).
    #[serde(default)]
    pub url: Option<Secret>,
    /// Type postgres over TLS: certificates trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Keep the token itself, not only its SHA-256.
    #[serde(default)]
    pub store_token: bool,
    #[serde(default)]
    pub durability: Durability,
    /// Delete records whose `exp` is older than this (in the background, in small batches).
    #[serde(default)]
    pub retention: Option<Duration>,
    /// Answers waiting to be written; when full, token routes answer 503 rather than mint.
    #[serde(default = "d10000")]
    pub queue_size: usize,
    /// With `durability: commit`: how long an answer may wait for its commit before a 503.
    #[serde(default = "d5s")]
    pub commit_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SharedStateType {
    /// One Redis server (`url`).
    Redis,
    /// A Redis Cluster (`urls`: some of its nodes).
    RedisCluster,
}

/// What token routes do while Redis cannot be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Each replica applies its own limits (the default).
    #[default]
    Local,
    /// No limit applies.
    Allow,
    /// 503 `shared_state_unavailable`.
    Deny,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedStateConfig {
    #[serde(rename = "type")]
    pub kind: SharedStateType,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (type redis).
    #[serde(default)]
    pub url: Option<Secret>,
    /// Nodes of the cluster (type redis_cluster).
    #[serde(default)]
    pub urls: Vec<Secret>,
    #[serde(default)]
    pub on_error: OnError,
    /// Per Redis call; after a failure, Redis is skipped until a background probe succeeds.
    #[serde(default = "d50ms")]
    pub timeout: Duration,
    /// HMAC key (at least 16 bytes) for key names and for the identities cached in Redis.
    pub secret: Secret,
    /// For `rediss://`: certificates trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Prepended to every key and channel, so several deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn d50ms() -> Duration {
    Duration(std::time::Duration::from_millis(50))
}

fn default_key_prefix() -> String {
    "tokengate:".to_owned()
}
