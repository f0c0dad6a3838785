//! Where a config's spans go: the collector's URL, the client that reaches it, the headers and
//! the resource they are sent with.

use bytes::Bytes;
use http::{HeaderMap, Uri};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The OTLP/HTTP client of a target: plain HTTP or HTTPS (rustls), pooled.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An OTLP/HTTP client trusting what `config` trusts.
pub fn http_client(config: rustls::ClientConfig) -> HttpClient {
    let connector = HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Where a config's spans are exported, and as which service.
#[derive(Debug)]
pub struct Target {
    /// The OTLP/HTTP traces URL (`…/v1/traces`), or the gRPC method's (`…/TraceService/Export`).
    pub url: Uri,
    pub grpc: bool,
    /// The OTLP/HTTP client (`http://` or `https://`, trusting the system roots and
    /// `tracing.ca_file`); gRPC targets use the exporter's h2c client.
    pub http: Option<HttpClient>,
    pub headers: HeaderMap,
    /// `service.name` and `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
}
