//! Is anyone else using the VIP? Asked before the VIP is first added where no member was heard holding it
//! (docs/adr/0010): an ARP probe for an IPv4 VIP (RFC 5227 §2.1.1: sender address 0.0.0.0, so that no
//! host's cache learns anything from it), a neighbour solicitation for an IPv6 one (RFC 4861 §7.2.2, from
//! our link-local address). Whoever answers for the address has it configured: the driver does not take it,
//! and reports who answered.
//!
//! RFC 5227 probes three times over one to two seconds because it guards a DHCP client's first address; here
//! the answer of a kernel on the same link comes in well under a millisecond, so three probes
//! [`PROBE_SPACING`] apart and [`LISTEN`] in all are enough, and the first takeover of a cold cluster is
//! that much later. Failovers never probe: the backups heard the master that held the VIP.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{SockAddr, Socket};
use tokio::io::unix::AsyncFd;

use crate::announce;

/// Probes sent, [`PROBE_SPACING`] apart.
pub const PROBES: u32 = 3;
/// Between two probes.
pub const PROBE_SPACING: Duration = Duration::from_millis(10);
/// How long to listen for an answer from the first probe on.
pub const LISTEN: Duration = Duration::from_millis(40);

/// Who answered for the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The link-layer address of the host that answered, when the answer carried one.
    pub mac: Option<[u8; 6]>,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mac {
            Some(m) => write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]),
            None => f.write_str("a host that gave no MAC address"),
        }
    }
}

/// Asks the link whether another host uses `address`: the first answer within [`LISTEN`], if any. `mac` is
/// this interface's address (answers from it are our own). Needs CAP_NET_RAW.
pub async fn who_has(interface: &str, ifindex: u32, mac: [u8; 6], address: IpAddr) -> io::Result<Option<Answer>> {
    match address {
        IpAddr::V4(a) => arp_probe(ifindex, mac, a).await,
        IpAddr::V6(a) => solicit(interface, ifindex, mac, a).await,
    }
}

async fn arp_probe(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) -> io::Result<Option<Answer>> {
    let (socket, to) = announce::arp_socket(ifindex)?;
    // Bound to the interface: only its ARP traffic is read.
    socket.bind(&announce::arp_link_address(ifindex, [0; 6])?)?;
    socket.set_nonblocking(true)?;
    let socket = register(socket)?;
    let probe = arp_probe_packet(mac, address);
    listen(&socket, || socket.get_ref().send_to(&probe, &to).map(drop), |p| arp_answer(p, mac, address)).await
}

async fn solicit(interface: &str, ifindex: u32, mac: [u8; 6], address: Ipv6Addr) -> io::Result<Option<Answer>> {
    let socket = announce::icmpv6_socket(interface, ifindex)?;
    socket.set_nonblocking(true)?;
    let to = SockAddr::from(SocketAddr::new(IpAddr::V6(solicited_node(address)), 0));
    let socket = register(socket)?;
    let message = solicitation(mac, address);
    listen(&socket, || socket.get_ref().send_to(&message, &to).map(drop), |p| na_answer(p, address)).await
}

/// Hands a configured, non-blocking socket to the runtime.
fn register(s: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `s` is an open socket that the AsyncFd owns from here on; socket2's as_raw_fd returns the same
    // descriptor for the socket's whole life, and nothing else closes it.
    unsafe { AsyncFd::register(s) }.map_err(io::Error::from)
}

/// Sends [`PROBES`] probes with `send` while reading what arrives, until an answer or the end of [`LISTEN`].
async fn listen(
    socket: &AsyncFd<Socket>,
    send: impl Fn() -> io::Result<()>,
    answer: impl Fn(&[u8]) -> Option<Answer>,
) -> io::Result<Option<Answer>> {
    let start = tokio::time::Instant::now();
    let end = start + LISTEN;
    let mut sent = 0;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        if sent < PROBES && tokio::time::Instant::now() >= start + PROBE_SPACING * sent {
            send()?;
            sent += 1;
        }
        let next_probe = if sent < PROBES { start + PROBE_SPACING * sent } else { end };
        let readable = tokio::time::timeout_at(next_probe.min(end), socket.readable()).await;
        let Ok(guard) = readable else {
            if tokio::time::Instant::now() >= end {
                return Ok(None);
            }
            continue;
        };
        let mut guard = guard?;
        match guard.try_io(|s| s.get_ref().recv(&mut buf)) {
            Ok(Ok(n)) => {
                // SAFETY: recv initialised the first `n` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                if let Some(a) = answer(bytes) {
                    return Ok(Some(a));
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
        if tokio::time::Instant::now() >= end {
            return Ok(None);
        }
    }
}

/// An ARP probe (RFC 5227 §2.1.1): the request of a gratuitous ARP for `address` from `mac`, with sender
/// address 0.0.0.0.
fn arp_probe_packet(mac: [u8; 6], address: Ipv4Addr) -> [u8; 28] {
    let mut p = announce::packet(mac, address, false);
    p[14..18].fill(0);
    p
}

/// An ARP packet (request or reply) whose sender is `address` at a MAC other than `ours`: a host that has it.
fn arp_answer(p: &[u8], ours: [u8; 6], address: Ipv4Addr) -> Option<Answer> {
    if p.len() < 28 || p[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let sender_mac: [u8; 6] = p[8..14].try_into().ok()?;
    (p[14..18] == address.octets() && sender_mac != ours).then_some(Answer { mac: Some(sender_mac) })
}

/// ff02::1:ffXX:XXXX, the solicited-node group of `a` (RFC 4291 §2.7.1).
fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// A neighbour solicitation (RFC 4861 §4.3) for `target`, with our MAC as Source Link-Layer Address. The
/// kernel fills in the checksum of a raw ICMPv6 socket.
fn solicitation(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 135;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 1; // Source Link-Layer Address
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

/// A neighbour advertisement (type 136) for `target`, with the MAC of its Target Link-Layer Address option.
fn na_answer(m: &[u8], target: Ipv6Addr) -> Option<Answer> {
    if m.len() < 24 || m[0] != 136 || m[8..24] != target.octets() {
        return None;
    }
    let mut options = &m[24..];
    let mut mac = None;
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            break;
        }
        if options[0] == 2 && len >= 8 {
            mac = options[2..8].try_into().ok();
        }
        options = &options[len..];
    }
    Some(Answer { mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

    #[test]
    fn an_arp_probe_asks_for_the_vip_from_no_address() {
        let p = arp_probe_packet(MAC, Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(
            (&p[8..14], &p[14..18], &p[18..24], &p[24..28]),
            (&MAC[..], &[0u8; 4][..], &[0u8; 6][..], &[198, 51, 100, 10][..])
        );
    }

    #[test]
    fn only_another_host_speaking_for_the_vip_is_an_answer() {
        let vip = Ipv4Addr::new(198, 51, 100, 10);
        let theirs = [0x02, 0, 0, 0, 0, 0x12];
        let mut reply = arp_probe_packet(theirs, vip);
        reply[7] = 2;
        reply[14..18].copy_from_slice(&vip.octets());
        assert_eq!(arp_answer(&reply, MAC, vip), Some(Answer { mac: Some(theirs) }));
        assert_eq!(Answer { mac: Some(theirs) }.to_string(), "02:00:00:00:00:12");
        // Our own probe, echoed; another host's probe (sender 0.0.0.0); an answer about another address.
        assert_eq!(arp_answer(&arp_probe_packet(MAC, vip), MAC, vip), None);
        assert_eq!(arp_answer(&arp_probe_packet(theirs, vip), MAC, vip), None);
        let mut other = reply;
        other[17] = 11;
        assert_eq!(arp_answer(&other, MAC, vip), None);
        assert_eq!(arp_answer(&reply[..20], MAC, vip), None, "short");
    }

    #[test]
    fn a_solicitation_goes_to_the_solicited_node_group_and_an_advertisement_names_the_mac() {
        let vip: Ipv6Addr = "2001:db8::12:3456".parse().unwrap();
        assert_eq!(solicited_node(vip), "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap());
        let s = solicitation(MAC, vip);
        assert_eq!((s[0], &s[8..24], s[24], s[25], &s[26..]), (135, &vip.octets()[..], 1, 1, &MAC[..]));
        let theirs = [0x02, 0, 0, 0, 0, 0x12];
        let mut na = announce::advertisement(theirs, vip).to_vec();
        assert_eq!(na_answer(&na, vip), Some(Answer { mac: Some(theirs) }));
        na.truncate(24);
        assert_eq!(na_answer(&na, vip), Some(Answer { mac: None }), "no option: still an answer");
        assert_eq!(na_answer(&na, "2001:db8::1".parse().unwrap()), None, "about another address");
        assert_eq!(na_answer(&s, vip), None, "a solicitation is no answer");
    }
}
