//! Telling the segment where the VIP lives now: gratuitous ARP for an IPv4 VIP, alternating request and
//! reply (some devices only learn from one of the two), sent through AF_PACKET so that the kernel adds the
//! Ethernet header for the broadcast address; unsolicited neighbour advertisements (RFC 4861 §7.2.6) to
//! ff02::1 for an IPv6 VIP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Announces one address on one interface.
#[derive(Debug)]
pub enum Announcer {
    /// Gratuitous ARP.
    Arp(Arp),
    /// Unsolicited neighbour advertisements.
    Na(Na),
}

impl Announcer {
    /// An announcer of `address` at `mac` on `interface` (index `ifindex`). Needs CAP_NET_RAW.
    pub fn new(interface: &str, ifindex: u32, mac: [u8; 6], address: IpAddr) -> io::Result<Self> {
        match address {
            IpAddr::V4(a) => Arp::new(ifindex, mac, a).map(Announcer::Arp),
            IpAddr::V6(a) => Na::new(interface, ifindex, mac, a).map(Announcer::Na),
        }
    }

    /// Sends `count` announcements; returns how many went out.
    pub fn announce(&self, count: u8) -> io::Result<u8> {
        match self {
            Announcer::Arp(a) => a.announce(count),
            Announcer::Na(n) => n.announce(count),
        }
    }
}

/// Gratuitous ARP for one IPv4 address.
#[derive(Debug)]
pub struct Arp {
    socket: Socket,
    to: SockAddr,
    mac: [u8; 6],
    address: Ipv4Addr,
}

impl Arp {
    /// Gratuitous ARP of `address` at `mac` on interface `ifindex`.
    pub fn new(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) -> io::Result<Self> {
        let (socket, to) = arp_socket(ifindex)?;
        Ok(Self { socket, to, mac, address })
    }

    /// Sends `count` gratuitous ARPs, alternating request and reply. Returns how many went out.
    pub fn announce(&self, count: u8) -> io::Result<u8> {
        let mut sent = 0;
        for i in 0..count {
            let reply = i % 2 == 1;
            self.socket.send_to(&packet(self.mac, self.address, reply), &self.to)?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// Unsolicited neighbour advertisements for one IPv6 address.
#[derive(Debug)]
pub struct Na {
    socket: Socket,
    message: [u8; 32],
}

/// All-nodes: where unsolicited advertisements go.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

impl Na {
    /// Unsolicited NA of `address` at `mac` on `interface`.
    pub fn new(interface: &str, ifindex: u32, mac: [u8; 6], address: Ipv6Addr) -> io::Result<Self> {
        Ok(Self { socket: icmpv6_socket(interface, ifindex)?, message: advertisement(mac, address) })
    }

    /// Sends `count` advertisements. The kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.
    pub fn announce(&self, count: u8) -> io::Result<u8> {
        let to = SockAddr::from(SocketAddr::new(IpAddr::V6(ALL_NODES), 0));
        for _ in 0..count {
            self.socket.send_to(&self.message, &to)?;
        }
        Ok(count)
    }
}

/// A neighbour advertisement (RFC 4861 §4.4): type 136, the Override flag set (it replaces cached link-layer
/// addresses), target the VIP, and a Target Link-Layer Address option with our MAC.
pub(crate) fn advertisement(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136;
    m[4] = 0x20; // Override; not Router, not Solicited
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // Target Link-Layer Address
    m[25] = 1; // length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// A raw ICMPv6 socket on `interface` for neighbour discovery: solicitations and advertisements out of it carry
/// hop limit 255, without which a receiver drops them (RFC 4861 §7.1.1, §7.1.2).
pub(crate) fn icmpv6_socket(interface: &str, ifindex: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(ifindex)?;
    Ok(socket)
}

/// An ARP socket (AF_PACKET, the kernel adds the Ethernet header) and the link-layer broadcast address on
/// `ifindex`.
pub(crate) fn arp_socket(ifindex: u32) -> io::Result<(Socket, SockAddr)> {
    let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))))?;
    Ok((socket, arp_link_address(ifindex, BROADCAST)?))
}

/// A gratuitous ARP (RFC 5227 §3 "ARP Announcement"): sender and target protocol address are both the
/// announced address; a request leaves the target hardware address zero, a reply sets it to broadcast.
pub(crate) fn packet(mac: [u8; 6], address: Ipv4Addr, reply: bool) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&(if reply { 2u16 } else { 1 }).to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&address.octets());
    p[18..24].copy_from_slice(if reply { &BROADCAST } else { &[0; 6] });
    p[24..28].copy_from_slice(&address.octets());
    p
}

/// A link-layer socket address on `ifindex` for ARP, to `mac` (zero when binding).
pub(crate) fn arp_link_address(ifindex: u32, mac: [u8; 6]) -> io::Result<SockAddr> {
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
    // SAFETY: `try_init` hands us zeroed storage large enough for any socket address; we write a complete
    // sockaddr_ll into it and set the length to exactly its size, so family, contents and length agree.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let mut sll_addr = [0u8; 8];
            sll_addr[..6].copy_from_slice(&mac);
            let ll = libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as u16,
                sll_protocol: ETH_P_ARP.to_be(),
                sll_ifindex: ifindex,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 6,
                sll_addr,
            };
            storage.cast::<libc::sockaddr_ll>().write(ll);
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_advertisement_overrides_with_our_mac() {
        let m = advertisement([2, 0, 0, 0, 0, 0x11], "2001:db8::10".parse().unwrap());
        assert_eq!((m[0], m[4], m[24], m[25]), (136, 0x20, 2, 1));
        assert_eq!(&m[8..24], &"2001:db8::10".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&m[26..], &[2, 0, 0, 0, 0, 0x11]);
    }

    #[test]
    fn announcements_carry_the_vip_as_sender_and_target() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let vip = Ipv4Addr::new(198, 51, 100, 10);
        let req = packet(mac, vip, false);
        assert_eq!(&req[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(
            (&req[8..14], &req[14..18], &req[18..24], &req[24..28]),
            (&mac[..], &vip.octets()[..], &[0u8; 6][..], &vip.octets()[..])
        );
        let rep = packet(mac, vip, true);
        assert_eq!((&rep[6..8], &rep[18..24]), (&[0u8, 2][..], &BROADCAST[..]));
    }
}
