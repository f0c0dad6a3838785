//! Upgraded connections (WebSocket, RFC 9110 §7.8): once both sides switched protocols,
//! bytes are copied both ways (`pump`) until both have closed.

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::pump;
use crate::upstream::conn::Conn;

/// The upstream side of a tunnel.
pub enum Upstream {
    /// tokengate's own connection, with whatever arrived after the 101 head.
    Own(Conn),
    /// hyper's client connection (the request had a streamed body).
    Hyper(OnUpgrade),
}

/// Joins the client's and the upstream's upgraded connections.
pub async fn tunnel(client: OnUpgrade, upstream: Upstream) {
    let client = match client.await {
        Ok(io) => TokioIo::new(io),
        Err(e) => return tracing::warn!(error = %e, "upgrade failed"),
    };
    match upstream {
        Upstream::Own(conn) => {
            let (io, early) = conn.into_tunnel();
            copy(client, io, early).await
        }
        Upstream::Hyper(on) => match on.await {
            Ok(io) => copy(client, TokioIo::new(io), Bytes::new()).await,
            Err(e) => tracing::warn!(error = %e, "upgrade failed"),
        },
    }
}

/// Sends `early` (upstream bytes already read) to the client, then copies both ways.
async fn copy<C, U>(mut client: C, mut upstream: U, early: Bytes)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let sent = client.write_all(&early).await;
    drop(early);
    let copied = match sent {
        Ok(()) => pump::both_ways(&mut client, &mut upstream).await,
        Err(e) => Err(e),
    };
    match copied {
        Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel closed with error"),
    }
}
