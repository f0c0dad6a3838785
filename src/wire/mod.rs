//! HTTP/1.1 message heads as bytes: parsed in place by httparse, fields kept as spans of the
//! head, the names tokengate acts on recognised once. Forwarded requests and their responses
//! are relayed from these without building header maps; `to_request` / `to_response` give the
//! `http` types to the code paths that need them.

pub mod decode;
pub mod encode;
pub mod fields;
pub mod request;
pub mod response;
pub mod writer;
