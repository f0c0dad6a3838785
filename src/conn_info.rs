//! What a connection knows about where its requests come from, filled in once when it is
//! accepted and read by everything that serves them.

use std::io::Write;
use std::net::SocketAddr;

/// What the connection knows about a request's origin. No allocation: it is copied into each
/// request, and a connection that idles keeps nothing of it on the heap.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as text, formatted once per connection for `X-Forwarded-For`.
    peer_ip: IpText,
}

/// An IP address as text, inline (the longest, an IPv6 address in full, is 39 bytes).
#[derive(Clone, Copy, Debug)]
struct IpText {
    len: u8,
    bytes: [u8; IP_TEXT],
}

/// Room for an IP address as text, with some to spare.
const IP_TEXT: usize = 46;

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let mut bytes = [0; IP_TEXT];
        let mut room = &mut bytes[..];
        // Cannot fail (an address is at most 39 bytes of text); said rather than invented.
        let len = match write!(room, "{}", peer.ip()) {
            Ok(()) => IP_TEXT - room.len(),
            Err(_) => {
                bytes[..7].copy_from_slice(b"unknown");
                7
            }
        };
        let len = u8::try_from(len).unwrap_or(0);
        Self { peer, tls, peer_ip: IpText { len, bytes } }
    }

    /// The peer's IP as text (`X-Forwarded-For`, `Forwarded`).
    pub fn peer_ip(&self) -> &[u8] {
        &self.peer_ip.bytes[..usize::from(self.peer_ip.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::ConnInfo;

    #[test]
    fn the_peer_ip_is_its_text() {
        for (addr, text) in [
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]:443", "::1"),
            ("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
            ("[::ffff:10.1.2.3]:8080", "::ffff:10.1.2.3"),
        ] {
            let info = ConnInfo::new(addr.parse().unwrap(), false);
            assert_eq!(std::str::from_utf8(info.peer_ip()).unwrap(), text);
        }
    }
}
