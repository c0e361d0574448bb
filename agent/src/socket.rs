//! The raw IP-protocol-112 socket of one virtual router: bound to the interface, multicast to 224.0.0.18 /
//! ff02::12 with TTL / hop limit 255 or unicast to configured peers, own packets not looped back.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;

use kubeha_vrrp::wire::{GROUP_V4, GROUP_V6, PROTOCOL, TTL};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, setsockopt, sockopt};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// Why the socket cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Raw sockets need CAP_NET_RAW.
    #[error("cannot open a raw VRRP socket: {0} (kubeha-agent needs CAP_NET_RAW; run it as root or grant NET_RAW)")]
    Permission(io::Error),
    /// Any other failure, with what was being done.
    #[error("VRRP socket: {what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(io::Error) -> SocketError {
    move |source| SocketError::Io { what, source }
}

/// A received VRRP packet: the VRRP message and the IP facts its checks need.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The VRRP message (after the IP header).
    pub message: Vec<u8>,
    /// The IP TTL it arrived with.
    pub ttl: u8,
    /// IP source.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
}

/// The socket.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    destinations: Vec<IpAddr>,
    v6: bool,
}

impl VrrpSocket {
    /// Opens the socket on `interface` (index `ifindex`, primary address `primary`). With `peers` empty it
    /// joins the VRRP group and sends there; otherwise it sends to each peer.
    pub fn open_v4(interface: &str, ifindex: u32, primary: Ipv4Addr, peers: &[IpAddr]) -> Result<Self, SocketError> {
        let s = raw(Domain::IPV4, interface)?;
        s.set_ttl_v4(u32::from(TTL)).map_err(io("TTL"))?;
        s.set_multicast_ttl_v4(u32::from(TTL)).map_err(io("multicast TTL"))?;
        s.set_multicast_loop_v4(false).map_err(io("multicast loop"))?;
        s.set_multicast_if_v4(&primary).map_err(io("multicast interface"))?;
        let destinations = if peers.is_empty() {
            s.join_multicast_v4_n(&GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))
                .map_err(io("joining 224.0.0.18"))?;
            vec![IpAddr::V4(GROUP_V4)]
        } else {
            peers.to_vec()
        };
        s.set_nonblocking(true).map_err(io("non-blocking"))?;
        Ok(Self { fd: register(s)?, destinations, v6: false })
    }

    /// The IPv6 socket: sends from the interface's link-local address (the kernel's choice for ff02::12 and
    /// on-link peers) and learns each packet's hop limit and destination from ancillary data, since an IPv6
    /// raw socket does not deliver the IP header.
    pub fn open_v6(interface: &str, ifindex: u32, peers: &[IpAddr]) -> Result<Self, SocketError> {
        let s = raw(Domain::IPV6, interface)?;
        s.set_unicast_hops_v6(u32::from(TTL)).map_err(io("hop limit"))?;
        s.set_multicast_hops_v6(u32::from(TTL)).map_err(io("multicast hop limit"))?;
        s.set_multicast_loop_v6(false).map_err(io("multicast loop"))?;
        s.set_multicast_if_v6(ifindex).map_err(io("multicast interface"))?;
        setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(|e| io("IPV6_RECVHOPLIMIT")(e.into()))?;
        setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(|e| io("IPV6_RECVPKTINFO")(e.into()))?;
        let destinations = if peers.is_empty() {
            s.join_multicast_v6(&GROUP_V6, ifindex).map_err(io("joining ff02::12"))?;
            vec![IpAddr::V6(GROUP_V6)]
        } else {
            peers.to_vec()
        };
        s.set_nonblocking(true).map_err(io("non-blocking"))?;
        Ok(Self { fd: register(s)?, destinations, v6: true })
    }

    /// Sends one VRRP message to `dst` (the group or a peer).
    pub async fn send_to(&self, message: &[u8], dst: IpAddr) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddr::new(dst, 0));
        loop {
            let mut guard = self.fd.writable().await?;
            if let Ok(result) = guard.try_io(|s| s.get_ref().send_to(message, &addr)) {
                return result.map(drop);
            }
        }
    }

    /// Whether adverts go to unicast peers (not the multicast group).
    pub fn unicast(&self) -> bool {
        !self.destinations.iter().any(IpAddr::is_multicast)
    }

    /// Replaces the unicast peers. Only for a unicast socket and a non-empty list: a switch between
    /// multicast and unicast joins or leaves the group and needs a new socket.
    pub fn set_peers(&mut self, peers: &[IpAddr]) {
        if self.unicast() && !peers.is_empty() {
            self.destinations = peers.to_vec();
        }
    }

    /// Where adverts go.
    pub fn destinations(&self) -> &[IpAddr] {
        &self.destinations
    }

    /// Receives the next VRRP packet.
    pub async fn recv(&self) -> io::Result<Incoming> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|_| self.read_one()) {
                Ok(Ok(Some(incoming))) => return Ok(incoming),
                Ok(Ok(None)) => continue, // a packet that cannot be checked: dropped
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// A packet the kernel has queued already, without waiting: `None` when there is none. It reads the
    /// socket whatever the runtime knows of its readiness, so it finds what arrived while the runtime was
    /// not running (a node too busy to schedule the agent for a moment).
    pub fn try_recv(&self) -> io::Result<Option<Incoming>> {
        loop {
            match self.read_one() {
                Ok(Some(incoming)) => return Ok(Some(incoming)),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// One datagram from the non-blocking socket (WouldBlock when there is none); `None` for one that cannot
    /// be checked (no hop limit or addresses, a malformed IPv4 header).
    fn read_one(&self) -> io::Result<Option<Incoming>> {
        if self.v6 { self.read_v6() } else { self.read_v4() }
    }

    fn read_v6(&self) -> io::Result<Option<Incoming>> {
        let mut buf = [0u8; 2048];
        let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<SockaddrIn6>(self.fd.get_ref().as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
            .map_err(io::Error::from)?;
        let (mut hop, mut dst) = (None, None);
        for c in msg.cmsgs().map_err(io::Error::from)? {
            match c {
                ControlMessageOwned::Ipv6HopLimit(h) => hop = u8::try_from(h).ok(),
                ControlMessageOwned::Ipv6PacketInfo(info) => dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                _ => {}
            }
        }
        let (n, src) = (msg.bytes, msg.address.map(|a| a.ip()));
        let (Some(ttl), Some(dst), Some(src)) = (hop, dst, src) else { return Ok(None) };
        Ok(Some(Incoming { message: buf[..n].to_vec(), ttl, src: IpAddr::V6(src), dst: IpAddr::V6(dst) }))
    }

    fn read_v4(&self) -> io::Result<Option<Incoming>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        let (n, _) = self.fd.get_ref().recv_from(&mut buf)?;
        // SAFETY: recv_from initialised the first `n` bytes of `buf`.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        Ok(parse_ipv4(bytes))
    }
}

/// A raw IP-protocol-112 socket of `domain`, bound to `interface`.
fn raw(domain: Domain, interface: &str) -> Result<Socket, SocketError> {
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(PROTOCOL)))).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied { SocketError::Permission(e) } else { io("socket")(e) }
    })?;
    s.bind_device(Some(interface.as_bytes())).map_err(io("binding to the interface"))?;
    Ok(s)
}

/// Hands a configured, non-blocking socket to the runtime.
fn register(s: Socket) -> Result<AsyncFd<Socket>, SocketError> {
    // SAFETY: `s` is an open socket that the AsyncFd owns from here on; socket2's as_raw_fd returns the same
    // descriptor for the socket's whole life, and nothing else closes it.
    unsafe { AsyncFd::register(s) }.map_err(|e| io("registering with the runtime")(e.into()))
}

/// Splits what an IPv4 raw socket delivers (the IP header, then the payload) into the VRRP message and the
/// header fields the checks need. `None` for something that is not a whole IPv4 packet.
fn parse_ipv4(b: &[u8]) -> Option<Incoming> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if ihl < 20 || total < ihl || b.len() < total {
        return None;
    }
    Some(Incoming {
        message: b[ihl..total].to_vec(),
        ttl: b[8],
        src: IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
        dst: IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_header_is_split_off() {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0, 198, 51, 100, 11, 224, 0, 0, 18];
        p.extend_from_slice(&[0x31, 51, 150, 1, 0, 100, 0, 0, 198, 51, 100, 10]);
        let i = parse_ipv4(&p).unwrap();
        assert_eq!(
            (i.ttl, i.src, i.dst, i.message.len()),
            (255, "198.51.100.11".parse().unwrap(), "224.0.0.18".parse().unwrap(), 12)
        );
        assert!(parse_ipv4(&p[..10]).is_none());
        let mut short = p.clone();
        short[3] = 200; // total length beyond what arrived
        assert!(parse_ipv4(&short).is_none());
    }
}
