//! The client side of an upstream HTTP/1.1 connection, below `body` and `proxy`: the socket
//! (`io`), tokengate's own connection and exchange (`conn`), the idle connections kept per
//! thread (`idle`), and a response body read from either kind of connection (`pooled_body`).
//! Generic over the request body hyper's connections carry, so nothing here names tokengate's
//! own body types; `proxy::pool` puts them together.

pub mod conn;
pub mod idle;
pub mod io;
pub mod pooled_body;
