//! Resets the TCP connections whose local address is one this node is about to give up (the VIP), with
//! the kernel's socket-diagnostics interface: list them (SOCK_DIAG_BY_FAMILY), then destroy each
//! (SOCK_DESTROY, as `ss -K` does; CAP_NET_ADMIN, CONFIG_INET_DIAG_DESTROY). A destroyed connection sends
//! its peer a reset while the address is still here. Once the address is gone the kernel can no longer
//! send from it: a connection the VIP leaves behind stays open on the client's side without a word, and a
//! watch on it (a client that only reads) stays silent until its client's own health check gives up —
//! client-go's HTTP/2 ping after 30 s (measured in the guide's migration test).

use std::io::{self, Read as _};
use std::net::IpAddr;

use socket2::{Domain, Protocol, Socket, Type};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const HEADER: usize = 16;
/// `struct inet_diag_req_v2`.
const REQUEST: usize = 56;
/// `struct inet_diag_msg` up to and including its socket id.
const REPLY_ID_END: usize = 52;
/// `struct inet_diag_sockid`.
const ID: usize = 48;
/// Every TCP state but LISTEN, TIME_WAIT and CLOSE (the kernel's numbers: ESTABLISHED 1, SYN_SENT 2,
/// SYN_RECV 3, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11): the connections that still
/// talk to a peer.
const CONNECTED: u32 = 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;

/// One socket as the kernel identifies it: its family and `inet_diag_sockid` (ports, addresses,
/// interface and cookie), exactly as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SockId {
    family: u8,
    id: [u8; ID],
}

impl SockId {
    /// The local address.
    fn local(&self) -> Option<IpAddr> {
        let src = &self.id[4..20];
        match i32::from(self.family) {
            libc::AF_INET => Some(IpAddr::from([src[0], src[1], src[2], src[3]])),
            libc::AF_INET6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(src);
                let v6 = std::net::Ipv6Addr::from(a);
                // A dual-stack listener ([::], as Go's servers listen) holds IPv4 clients as mapped addresses.
                Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            _ => None,
        }
    }
}

/// Resets every TCP connection of this network namespace whose local address is `addr` (IPv4 ones held
/// by dual-stack sockets too); returns how many. Errors: no CAP_NET_ADMIN (EPERM), a kernel without
/// SOCK_DESTROY (EOPNOTSUPP).
pub fn reset_tcp_to(addr: IpAddr) -> io::Result<usize> {
    let sock = Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(Protocol::from(libc::NETLINK_SOCK_DIAG)))?;
    let families: &[u8] =
        if addr.is_ipv4() { &[libc::AF_INET as u8, libc::AF_INET6 as u8] } else { &[libc::AF_INET6 as u8] };
    let mut found = Vec::new();
    for (seq, family) in (1u32..).zip(families) {
        sock.send(&message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, *family, CONNECTED, &[0; ID]))?;
        found.extend(dump(&sock)?.into_iter().filter(|s| s.local() == Some(addr)));
    }
    let mut reset = 0;
    for (seq, s) in (100u32..).zip(&found) {
        sock.send(&message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, s.family, u32::MAX, &s.id))?;
        match ack(&sock, seq) {
            Ok(()) => reset += 1,
            // Closed in between: nothing left to reset.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(reset)
}

/// A netlink message carrying an `inet_diag_req_v2` for TCP.
fn message(kind: u16, flags: u16, seq: u32, family: u8, states: u32, id: &[u8; ID]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + REQUEST);
    m.extend_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

/// The netlink messages in one datagram: (type, payload).
fn messages(buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed netlink message");
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().map_err(|_| bad())?) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < HEADER || at + len > buf.len() {
            return Err(bad());
        }
        out.push((kind, &buf[at + HEADER..at + len]));
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// The error an NLMSG_ERROR payload carries (`None`: an acknowledgement).
fn nl_error(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// Reads a dump's replies to the end.
fn dump(sock: &Socket) -> io::Result<Vec<SockId>> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut out = Vec::new();
    loop {
        let n = (&*sock).read(&mut buf)?;
        for (kind, payload) in messages(&buf[..n])? {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => return Err(nl_error(payload).unwrap_or_else(|| io::Error::other("dump ended early"))),
                SOCK_DIAG_BY_FAMILY if payload.len() >= REPLY_ID_END => {
                    let mut id = [0u8; ID];
                    id.copy_from_slice(&payload[4..REPLY_ID_END]);
                    out.push(SockId { family: payload[0], id });
                }
                _ => {}
            }
        }
    }
}

/// Reads the acknowledgement of request `seq`.
fn ack(sock: &Socket, seq: u32) -> io::Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = (&*sock).read(&mut buf)?;
        for (kind, payload) in messages(&buf[..n])? {
            if kind == NLMSG_ERROR {
                // The original request's header follows the error code: match its sequence number.
                let acked = payload.get(12..16).map(|s| u32::from_ne_bytes(s.try_into().unwrap_or_default()));
                if acked == Some(seq) {
                    return nl_error(payload).map_or(Ok(()), Err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    fn connect(server: &TcpListener, from: &str) -> (TcpStream, TcpStream) {
        let s = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&from.parse::<SocketAddr>().unwrap().into()).unwrap();
        s.connect(&server.local_addr().unwrap().into()).unwrap();
        let client: TcpStream = s.into();
        let (accepted, _) = server.accept().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (client, accepted)
    }

    #[test]
    fn the_connections_to_an_address_are_reset_and_no_other() {
        // Loopback addresses of their own: nothing else on this machine uses them.
        let given_up = TcpListener::bind("127.88.0.1:0").unwrap();
        let kept = TcpListener::bind("127.88.0.3:0").unwrap();
        let (mut a, _a_server) = connect(&given_up, "127.88.0.2:0");
        let (mut b, _b_server) = connect(&given_up, "127.88.0.2:0");
        let (mut other, mut other_server) = connect(&kept, "127.88.0.2:0");

        match reset_tcp_to("127.88.0.1".parse().unwrap()) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return eprintln!("skipped: SOCK_DESTROY needs CAP_NET_ADMIN (run as root)");
            }
            reset => assert_eq!(reset.unwrap(), 2),
        }
        for client in [&mut a, &mut b] {
            let err = client.read(&mut [0u8; 8]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        }
        // The listener and the other address's connection are untouched.
        let (_c, _) = connect(&given_up, "127.88.0.2:0");
        other_server.write_all(b"still").unwrap();
        let mut got = [0u8; 5];
        other.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still");
        assert_eq!(reset_tcp_to("127.88.0.9".parse().unwrap()).unwrap(), 0, "nothing there");
    }
}
