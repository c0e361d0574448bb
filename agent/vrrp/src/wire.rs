//! VRRP advertisements on the wire.
//!
//! VRRPv3, RFC 9568 §5.1 (IPv4 and IPv6):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IPvX Address(es)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! VRRPv2, RFC 3768 §5.1 (IPv4 only): byte 4 is the Auth Type, byte 5 the Adver Int in whole seconds, and
//! eight bytes of Authentication Data follow the addresses.
//!
//! The checksum (RFC 9568 §5.2.8) covers the VRRP message; over IPv6 also the RFC 8200 pseudo-header. Over
//! IPv4, RFC 5798 was read as covering an IPv4 pseudo-header too, and keepalived (including Debian 12's)
//! still sends that form unless told `v3_checksum_as_v2`. So a version 3 advertisement over IPv4 is accepted
//! with either checksum, [`Received::checksum`] says which one matched, and the sender picks the form.

use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// The only TTL / hop limit a VRRP packet may arrive with (RFC 9568 §7.1): it proves the sender is on-link.
pub const TTL: u8 = 255;
/// The IPv4 multicast group of VRRP.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

const HEADER: usize = 8;
const V2_AUTH_DATA: usize = 8;
const ADVERTISEMENT: u8 = 1;

/// The protocol version of an advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: IPv4 only, whole-second intervals.
    V2,
    /// RFC 9568: IPv4 and IPv6, centisecond intervals.
    V3,
}

/// Which checksum an IPv4 VRRPv3 advertisement carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChecksumForm {
    /// The VRRP message only: RFC 9568 over IPv4, and every VRRPv2 advertisement.
    Message,
    /// The message and an IP pseudo-header: always over IPv6; over IPv4 the RFC 5798 reading that keepalived
    /// sends by default.
    PseudoHeader,
}

/// The IP source and destination of an advertisement: the checksum's pseudo-header, and the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    /// The sender's primary address on the link.
    pub src: IpAddr,
    /// The multicast group or a unicast peer.
    pub dst: IpAddr,
}

/// A valid advertisement.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Advertisement {
    /// Protocol version.
    pub version: Version,
    /// Virtual router id, 1–255.
    pub vrid: u8,
    /// The sender's priority: 0 means it is giving up being master, 255 that it owns the addresses.
    pub priority: u8,
    /// The sender's advertisement interval in centiseconds (version 2: whole seconds × 100).
    pub interval_cs: u16,
    /// The virtual addresses, all of the endpoints' family.
    pub addresses: Vec<IpAddr>,
}

/// An advertisement as received, with the checksum form it matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The advertisement.
    pub advertisement: Advertisement,
    /// Which checksum matched (always [`ChecksumForm::PseudoHeader`] over IPv6).
    pub checksum: ChecksumForm,
}

/// Why a packet is not a valid advertisement. Every variant is counted by the driver and the packet dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than the header or than its address count needs.
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// Longer than its address count says: not a packet any implementation sends.
    TrailingBytes {
        /// Bytes received.
        len: usize,
        /// Bytes the address count accounts for.
        expected: usize,
    },
    /// TTL or hop limit other than 255: the packet crossed a router (RFC 9568 §7.1).
    Ttl(u8),
    /// Version other than 2 or 3, or version 2 over IPv6.
    Version(u8),
    /// Type other than 1 (ADVERTISEMENT).
    Type(u8),
    /// The checksum does not match (`found` as received, `expected` as computed).
    Checksum {
        /// As received.
        found: u16,
        /// As computed over the packet (message-only form where two forms exist).
        expected: u16,
    },
    /// Count of addresses is zero (the minimum is 1).
    NoAddresses,
    /// Advertisement interval of zero: a backup could never wait for the master.
    ZeroInterval,
    /// VRRPv2 authentication other than none (or, with [`V2Auth::IgnoreSimplePassword`], other than none
    /// and simple password): RFC 3768 removed authentication, and kubeha does not use it.
    AuthType(u8),
    /// The source and destination addresses are of different families.
    MixedFamilies,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { len, needed } => {
                write!(f, "truncated: {len} bytes, {needed} needed")
            }
            DecodeError::TrailingBytes { len, expected } => {
                write!(f, "{len} bytes where the address count accounts for {expected}")
            }
            DecodeError::Ttl(t) => write!(f, "TTL/hop limit {t}, not 255: sent from off-link"),
            DecodeError::Version(v) => write!(f, "version {v} is not VRRPv2 over IPv4 or VRRPv3"),
            DecodeError::Type(t) => write!(f, "type {t} is not ADVERTISEMENT (1)"),
            DecodeError::Checksum { found, expected } => {
                write!(f, "checksum {found:#06x}, computed {expected:#06x}")
            }
            DecodeError::NoAddresses => f.write_str("no virtual addresses"),
            DecodeError::ZeroInterval => f.write_str("advertisement interval 0"),
            DecodeError::AuthType(t) => {
                write!(
                    f,
                    "VRRPv2 auth type {t}; only 0 (none) is accepted, and 1 (simple password) from strangers elected for a migration"
                )
            }
            DecodeError::MixedFamilies => f.write_str("source and destination of different address families"),
        }
    }
}

impl DecodeError {
    /// A short stable label for metrics (`invalid_packets_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::Ttl(_) => "ttl",
            DecodeError::Version(_) => "version",
            DecodeError::Type(_) => "type",
            DecodeError::Checksum { .. } => "checksum",
            DecodeError::NoAddresses => "no_addresses",
            DecodeError::ZeroInterval => "zero_interval",
            DecodeError::AuthType(_) => "auth_type",
            DecodeError::MixedFamilies => "mixed_families",
        }
    }
}

/// A checked view of the bytes of a VRRP message: the header is there and the length matches the address
/// count, so every accessor is in bounds. Field values are not validated here; [`Packet::parse`] does that.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    v6: bool,
}

impl<'a> Packet<'a> {
    /// Checks the lengths of `bytes` for a message over IPv6 (`v6`) or IPv4.
    pub fn new_checked(bytes: &'a [u8], v6: bool) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER {
            return Err(DecodeError::Truncated { len: bytes.len(), needed: HEADER });
        }
        let p = Self { bytes, v6 };
        let expected =
            HEADER + usize::from(p.count()) * p.address_len() + if p.raw_version() == 2 { V2_AUTH_DATA } else { 0 };
        if bytes.len() < expected {
            return Err(DecodeError::Truncated { len: bytes.len(), needed: expected });
        }
        if bytes.len() > expected {
            return Err(DecodeError::TrailingBytes { len: bytes.len(), expected });
        }
        Ok(p)
    }

    fn address_len(&self) -> usize {
        if self.v6 { 16 } else { 4 }
    }

    /// The version nibble.
    pub fn raw_version(&self) -> u8 {
        self.bytes[0] >> 4
    }

    /// The type nibble.
    pub fn raw_type(&self) -> u8 {
        self.bytes[0] & 0x0f
    }

    /// The virtual router id.
    pub fn vrid(&self) -> u8 {
        self.bytes[1]
    }

    /// The sender's priority.
    pub fn priority(&self) -> u8 {
        self.bytes[2]
    }

    /// The count of addresses.
    pub fn count(&self) -> u8 {
        self.bytes[3]
    }

    /// Version 2: the Auth Type byte.
    pub fn auth_type(&self) -> u8 {
        self.bytes[4]
    }

    /// The interval field: version 3 the low 12 bits of bytes 4–5 (centiseconds), version 2 byte 5 (seconds).
    pub fn raw_interval(&self) -> u16 {
        if self.raw_version() == 2 {
            u16::from(self.bytes[5])
        } else {
            u16::from_be_bytes([self.bytes[4], self.bytes[5]]) & 0x0fff
        }
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes[6], self.bytes[7]])
    }

    /// The addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let n = self.address_len();
        self.bytes[HEADER..HEADER + usize::from(self.count()) * n].chunks_exact(n).map(move |c| {
            if n == 16 {
                let mut a = [0u8; 16];
                a.copy_from_slice(c);
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            }
        })
    }

    /// Validates every field as RFC 9568 §7.1 / RFC 3768 §7.1 require of a receiver (TTL, version, type,
    /// checksum, address count, interval, v2 auth type). VRID and address-owner checks belong to the router.
    pub fn parse(&self, ttl: u8, endpoints: &Endpoints, auth: V2Auth) -> Result<Received, DecodeError> {
        if ttl != TTL {
            return Err(DecodeError::Ttl(ttl));
        }
        let version = match (self.raw_version(), self.v6) {
            (3, _) => Version::V3,
            (2, false) => Version::V2,
            (v, _) => return Err(DecodeError::Version(v)),
        };
        if self.raw_type() != ADVERTISEMENT {
            return Err(DecodeError::Type(self.raw_type()));
        }
        let checksum = verify(self.bytes, version, endpoints)?;
        if self.count() == 0 {
            return Err(DecodeError::NoAddresses);
        }
        let accepted = match auth {
            V2Auth::None => 0..=0,
            V2Auth::IgnoreSimplePassword => 0..=1,
        };
        if version == Version::V2 && !accepted.contains(&self.auth_type()) {
            return Err(DecodeError::AuthType(self.auth_type()));
        }
        let interval = self.raw_interval();
        if interval == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let interval_cs = if version == Version::V2 { interval * 100 } else { interval };
        let advertisement = Advertisement {
            version,
            vrid: self.vrid(),
            priority: self.priority(),
            interval_cs,
            addresses: self.addresses().collect(),
        };
        Ok(Received { advertisement, checksum })
    }
}

/// Decodes the VRRP message `bytes` that arrived with `ttl` between `endpoints`.
pub fn decode(bytes: &[u8], ttl: u8, endpoints: &Endpoints) -> Result<Received, DecodeError> {
    decode_with(bytes, ttl, endpoints, V2Auth::None)
}

/// What VRRPv2 authentication a receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V2Auth {
    /// None only (type 0), as RFC 3768 has it.
    None,
    /// None, or the simple text password of RFC 2338 (type 1), whose password is not checked: keepalived's
    /// `auth_type PASS`, which kubeadm's HA guide configures. A password sent in clear on the segment
    /// authenticates nothing; accepting it lets the members hear such a keepalived while a migration
    /// elects strangers (docs/adr/0013). Type 2 (IP AH) is refused still: its data is not in the message.
    IgnoreSimplePassword,
}

/// [`decode`] with the VRRPv2 authentication `auth` accepts.
pub fn decode_with(bytes: &[u8], ttl: u8, endpoints: &Endpoints, auth: V2Auth) -> Result<Received, DecodeError> {
    let v6 = match (endpoints.src, endpoints.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(DecodeError::MixedFamilies),
    };
    Packet::new_checked(bytes, v6)?.parse(ttl, endpoints, auth)
}

/// Why an advertisement cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// No address, more than 255, or one of another family than the endpoints.
    Addresses,
    /// Version 2 over IPv6.
    Version,
    /// An interval the version cannot carry: v3 1–4095 centiseconds, v2 whole seconds 1–255.
    Interval,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::Addresses => "an advertisement carries 1–255 addresses of the endpoints' family",
            EncodeError::Version => "VRRPv2 is IPv4 only",
            EncodeError::Interval => "interval out of range: v3 10ms–40950ms in 10ms steps, v2 whole seconds 1s–255s",
        })
    }
}

impl Advertisement {
    /// The bytes of this advertisement from `endpoints`, with the checksum in `form` (over IPv6 the
    /// pseudo-header is always included; version 2 never has one).
    pub fn encode(&self, endpoints: &Endpoints, form: ChecksumForm) -> Result<Vec<u8>, EncodeError> {
        let v6 = endpoints.src.is_ipv6();
        if endpoints.dst.is_ipv6() != v6 || self.addresses.is_empty() || self.addresses.len() > 255 {
            return Err(EncodeError::Addresses);
        }
        if self.addresses.iter().any(|a| a.is_ipv6() != v6) {
            return Err(EncodeError::Addresses);
        }
        let count = self.addresses.len() as u8;
        let mut out = Vec::with_capacity(HEADER + self.addresses.len() * 16 + V2_AUTH_DATA);
        match self.version {
            Version::V3 => {
                if !(1..=0x0fff).contains(&self.interval_cs) {
                    return Err(EncodeError::Interval);
                }
                out.extend_from_slice(&[0x31, self.vrid, self.priority, count]);
                out.extend_from_slice(&self.interval_cs.to_be_bytes());
            }
            Version::V2 => {
                if v6 {
                    return Err(EncodeError::Version);
                }
                let secs = self.interval_cs / 100;
                if !self.interval_cs.is_multiple_of(100) || !(1..=255).contains(&secs) {
                    return Err(EncodeError::Interval);
                }
                out.extend_from_slice(&[0x21, self.vrid, self.priority, count, 0, secs as u8]);
            }
        }
        out.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match a {
                IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
            }
        }
        if self.version == Version::V2 {
            out.extend_from_slice(&[0; V2_AUTH_DATA]);
        }
        let pseudo = v6 || (self.version == Version::V3 && form == ChecksumForm::PseudoHeader);
        let sum = checksum(&out, pseudo.then_some(endpoints));
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }
}

/// Checks the checksum; over IPv4 version 3 either form is accepted.
fn verify(bytes: &[u8], version: Version, e: &Endpoints) -> Result<ChecksumForm, DecodeError> {
    let found = u16::from_be_bytes([bytes[6], bytes[7]]);
    // The sum with the checksum field read as zero; it is a whole 16-bit word, so skipping it needs no copy.
    let parts = [&bytes[..6], &bytes[8..]];
    let v6 = e.src.is_ipv6();
    let message = sum_parts(&parts, bytes.len(), None);
    let with_pseudo = sum_parts(&parts, bytes.len(), Some(e));
    match (v6, version) {
        (true, _) if found == with_pseudo => Ok(ChecksumForm::PseudoHeader),
        (true, _) => Err(DecodeError::Checksum { found, expected: with_pseudo }),
        (false, _) if found == message => Ok(ChecksumForm::Message),
        (false, Version::V3) if found == with_pseudo => Ok(ChecksumForm::PseudoHeader),
        (false, _) => Err(DecodeError::Checksum { found, expected: message }),
    }
}

/// The RFC 1071 Internet checksum of `message`, preceded by the pseudo-header of `pseudo` if given: for IPv4
/// source, destination, a zero byte, the protocol and the 16-bit length; for IPv6 (RFC 8200 §8.1) source,
/// destination, the 32-bit length, three zero bytes and the next header.
pub fn checksum(message: &[u8], pseudo: Option<&Endpoints>) -> u16 {
    sum_parts(&[message], message.len(), pseudo)
}

/// The checksum of the concatenation of `parts` (each but the last of even length) of `len` bytes in all.
fn sum_parts(parts: &[&[u8]], len: usize, pseudo: Option<&Endpoints>) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(u16::from_be_bytes([*last, 0]));
        }
    };
    let len = len as u32;
    match pseudo {
        Some(Endpoints { src: IpAddr::V4(s), dst: IpAddr::V4(d) }) => {
            add(&s.octets());
            add(&d.octets());
            add(&[0, PROTOCOL]);
            add(&(len as u16).to_be_bytes());
        }
        Some(Endpoints { src: IpAddr::V6(s), dst: IpAddr::V6(d) }) => {
            add(&s.octets());
            add(&d.octets());
            add(&len.to_be_bytes());
            add(&[0, 0, 0, PROTOCOL]);
        }
        _ => {}
    }
    for part in parts {
        add(part);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
