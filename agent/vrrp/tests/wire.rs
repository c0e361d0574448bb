//! The codec against byte fixtures computed independently of it (a few lines of Python's struct module
//! over the RFC layouts), one negative test per DecodeError variant, and properties over arbitrary input.

use std::net::IpAddr;

use kubeha_vrrp::wire::{
    Advertisement, ChecksumForm, DecodeError, EncodeError, Endpoints, V2Auth, Version, decode, decode_with,
};
use proptest::prelude::*;

// VRRPv3, VRID 51, priority 150, 100 cs, 198.51.100.10, from 198.51.100.11 to 224.0.0.18.
const V3_V4_MESSAGE: [u8; 12] = [0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x0e, 0x29, 0xc6, 0x33, 0x64, 0x0a];
// The same with keepalived's RFC 5798 IPv4 pseudo-header checksum.
const V3_V4_PSEUDO: [u8; 12] = [0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x03, 0x5b, 0xc6, 0x33, 0x64, 0x0a];
// VRRPv3, VRID 52, priority 200, 10 cs, fe80::10 and 2001:db8::10, from fe80::11 to ff02::12.
const V3_V6: [u8; 40] = [
    0x31, 0x34, 0xc8, 0x02, 0x00, 0x0a, 0xdc, 0x25, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x10, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x10,
];
// VRRPv2, VRID 51, priority 100, 1 s, 198.51.100.10, no authentication.
const V2_V4: [u8; 20] =
    [0x21, 0x33, 0x64, 0x01, 0x00, 0x01, 0x50, 0x8c, 0xc6, 0x33, 0x64, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0];

fn v4() -> Endpoints {
    Endpoints { src: "198.51.100.11".parse().unwrap(), dst: "224.0.0.18".parse().unwrap() }
}

fn v6() -> Endpoints {
    Endpoints { src: "fe80::11".parse().unwrap(), dst: "ff02::12".parse().unwrap() }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn adv(version: Version, vrid: u8, priority: u8, interval_cs: u16, addrs: &[&str]) -> Advertisement {
    Advertisement { version, vrid, priority, interval_cs, addresses: addrs.iter().map(|a| ip(a)).collect() }
}

/// `bytes` with a valid checksum again after an edit (message-only form; for the tests of later checks).
fn refix(mut bytes: Vec<u8>, e: &Endpoints) -> Vec<u8> {
    bytes[6] = 0;
    bytes[7] = 0;
    let pseudo = e.src.is_ipv6();
    let sum = kubeha_vrrp::wire::checksum(&bytes, pseudo.then_some(e));
    bytes[6..8].copy_from_slice(&sum.to_be_bytes());
    bytes
}

#[test]
fn fixtures_decode_to_what_they_say() {
    let want = adv(Version::V3, 51, 150, 100, &["198.51.100.10"]);
    let r = decode(&V3_V4_MESSAGE, 255, &v4()).unwrap();
    assert_eq!((r.advertisement.clone(), r.checksum), (want.clone(), ChecksumForm::Message));
    let r = decode(&V3_V4_PSEUDO, 255, &v4()).unwrap();
    assert_eq!((r.advertisement, r.checksum), (want, ChecksumForm::PseudoHeader));
    let r = decode(&V3_V6, 255, &v6()).unwrap();
    assert_eq!(r.advertisement, adv(Version::V3, 52, 200, 10, &["fe80::10", "2001:db8::10"]));
    let r = decode(&V2_V4, 255, &v4()).unwrap();
    assert_eq!(r.advertisement, adv(Version::V2, 51, 100, 100, &["198.51.100.10"]));
}

#[test]
fn encoding_gives_the_fixture_bytes() {
    let a = adv(Version::V3, 51, 150, 100, &["198.51.100.10"]);
    assert_eq!(a.encode(&v4(), ChecksumForm::Message).unwrap(), V3_V4_MESSAGE);
    assert_eq!(a.encode(&v4(), ChecksumForm::PseudoHeader).unwrap(), V3_V4_PSEUDO);
    let a = adv(Version::V3, 52, 200, 10, &["fe80::10", "2001:db8::10"]);
    assert_eq!(a.encode(&v6(), ChecksumForm::Message).unwrap(), V3_V6, "IPv6 always has the pseudo-header");
    let a = adv(Version::V2, 51, 100, 100, &["198.51.100.10"]);
    assert_eq!(a.encode(&v4(), ChecksumForm::PseudoHeader).unwrap(), V2_V4, "v2 never has one");
}

#[test]
fn truncated() {
    assert_eq!(decode(&V3_V4_MESSAGE[..7], 255, &v4()), Err(DecodeError::Truncated { len: 7, needed: 8 }));
    assert_eq!(decode(&V3_V4_MESSAGE[..10], 255, &v4()), Err(DecodeError::Truncated { len: 10, needed: 12 }));
    assert_eq!(decode(&V2_V4[..12], 255, &v4()), Err(DecodeError::Truncated { len: 12, needed: 20 }));
}

#[test]
fn trailing_bytes() {
    let mut b = V3_V4_MESSAGE.to_vec();
    b.push(0);
    assert_eq!(decode(&b, 255, &v4()), Err(DecodeError::TrailingBytes { len: 13, expected: 12 }));
}

#[test]
fn ttl() {
    assert_eq!(decode(&V3_V4_MESSAGE, 254, &v4()), Err(DecodeError::Ttl(254)));
    assert_eq!(decode(&V3_V6, 64, &v6()), Err(DecodeError::Ttl(64)));
}

#[test]
fn version() {
    let mut b = V3_V4_MESSAGE.to_vec();
    b[0] = 0x41;
    assert_eq!(decode(&refix(b, &v4()), 255, &v4()), Err(DecodeError::Version(4)));
    // VRRPv2 exists only over IPv4; a v2 header in an IPv6 packet (sized as v2 would be) is refused.
    let mut b = vec![0x21, 52, 100, 1, 0, 1, 0, 0];
    b.extend_from_slice(&ip6("2001:db8::10"));
    b.extend_from_slice(&[0; 8]);
    assert_eq!(decode(&b, 255, &v6()), Err(DecodeError::Version(2)));
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn type_() {
    let mut b = V3_V4_MESSAGE.to_vec();
    b[0] = 0x32;
    assert_eq!(decode(&refix(b, &v4()), 255, &v4()), Err(DecodeError::Type(2)));
}

#[test]
fn checksum() {
    let mut b = V3_V4_MESSAGE.to_vec();
    b[2] = 0x97; // priority changed in transit
    assert!(matches!(decode(&b, 255, &v4()), Err(DecodeError::Checksum { found: 0x0e29, .. })));
    // The IPv6 checksum covers the addresses of the IP header: a different source fails it.
    let other = Endpoints { src: ip("fe80::99"), dst: ip("ff02::12") };
    assert!(matches!(decode(&V3_V6, 255, &other), Err(DecodeError::Checksum { .. })));
    // The pseudo-header form is accepted for v3 only: a v2 packet with it is refused.
    let mut b = V2_V4.to_vec();
    b[6] = 0x03;
    assert!(matches!(decode(&b, 255, &v4()), Err(DecodeError::Checksum { .. })));
}

#[test]
fn no_addresses() {
    let b = refix(vec![0x31, 51, 150, 0, 0, 100, 0, 0], &v4());
    assert_eq!(decode(&b, 255, &v4()), Err(DecodeError::NoAddresses));
}

#[test]
fn zero_interval() {
    let mut b = V3_V4_MESSAGE.to_vec();
    b[5] = 0;
    assert_eq!(decode(&refix(b, &v4()), 255, &v4()), Err(DecodeError::ZeroInterval));
}

// keepalived's `auth_type PASS` with `auth_pass 42`: VRRPv2, VRID 51, priority 101, auth type 1, 1 s,
// 198.51.100.10, the password in the authentication data.
const V2_V4_PASS: [u8; 20] =
    [0x21, 0x33, 0x65, 0x01, 0x01, 0x01, 0x1a, 0x5a, 0xc6, 0x33, 0x64, 0x0a, 0x34, 0x32, 0, 0, 0, 0, 0, 0];

#[test]
fn auth_type() {
    let mut b = V2_V4.to_vec();
    b[4] = 1;
    assert_eq!(decode(&refix(b, &v4()), 255, &v4()), Err(DecodeError::AuthType(1)));
    assert_eq!(decode(&V2_V4_PASS, 255, &v4()), Err(DecodeError::AuthType(1)));
    let mut ah = V2_V4.to_vec();
    ah[4] = 2;
    let ah = refix(ah, &v4());
    assert_eq!(decode_with(&ah, 255, &v4(), V2Auth::IgnoreSimplePassword), Err(DecodeError::AuthType(2)));
}

#[test]
fn a_simple_password_is_accepted_unchecked_only_when_asked() {
    let r = decode_with(&V2_V4_PASS, 255, &v4(), V2Auth::IgnoreSimplePassword).unwrap();
    assert_eq!(r.advertisement, adv(Version::V2, 51, 101, 100, &["198.51.100.10"]));
    assert_eq!(decode_with(&V2_V4_PASS, 255, &v4(), V2Auth::None), Err(DecodeError::AuthType(1)));
    // The checksum still covers the password.
    let mut flipped = V2_V4_PASS;
    flipped[13] ^= 1;
    assert!(matches!(
        decode_with(&flipped, 255, &v4(), V2Auth::IgnoreSimplePassword),
        Err(DecodeError::Checksum { .. })
    ));
}

#[test]
fn mixed_families() {
    let e = Endpoints { src: ip("198.51.100.11"), dst: ip("ff02::12") };
    assert_eq!(decode(&V3_V4_MESSAGE, 255, &e), Err(DecodeError::MixedFamilies));
}

#[test]
fn every_decode_error_has_a_distinct_metric_label() {
    let all = [
        DecodeError::Truncated { len: 0, needed: 8 },
        DecodeError::TrailingBytes { len: 9, expected: 8 },
        DecodeError::Ttl(1),
        DecodeError::Version(4),
        DecodeError::Type(2),
        DecodeError::Checksum { found: 0, expected: 1 },
        DecodeError::NoAddresses,
        DecodeError::ZeroInterval,
        DecodeError::AuthType(1),
        DecodeError::MixedFamilies,
    ];
    let labels: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
    assert_eq!(labels.len(), all.len());
}

#[test]
fn what_cannot_be_sent_is_refused() {
    let e = v4();
    assert_eq!(
        adv(Version::V3, 1, 1, 0, &["198.51.100.10"]).encode(&e, ChecksumForm::Message),
        Err(EncodeError::Interval)
    );
    assert_eq!(
        adv(Version::V3, 1, 1, 4096, &["198.51.100.10"]).encode(&e, ChecksumForm::Message),
        Err(EncodeError::Interval)
    );
    assert_eq!(
        adv(Version::V2, 1, 1, 150, &["198.51.100.10"]).encode(&e, ChecksumForm::Message),
        Err(EncodeError::Interval)
    );
    assert_eq!(
        adv(Version::V2, 1, 1, 100, &["2001:db8::10"]).encode(&v6(), ChecksumForm::Message),
        Err(EncodeError::Version)
    );
    assert_eq!(adv(Version::V3, 1, 1, 100, &[]).encode(&e, ChecksumForm::Message), Err(EncodeError::Addresses));
    assert_eq!(
        adv(Version::V3, 1, 1, 100, &["2001:db8::10"]).encode(&e, ChecksumForm::Message),
        Err(EncodeError::Addresses)
    );
}

fn any_advert() -> impl Strategy<Value = (Advertisement, Endpoints)> {
    let v4s = (
        any::<u8>(),
        1u8..=255,
        any::<u8>(),
        1u16..=4095,
        prop::collection::vec(any::<[u8; 4]>(), 1..8),
        any::<bool>(),
    )
        .prop_map(|(src, vrid, prio, cs, addrs, v2)| {
            let (version, cs) = if v2 { (Version::V2, (cs % 255 + 1) * 100) } else { (Version::V3, cs) };
            let a = Advertisement {
                version,
                vrid,
                priority: prio,
                interval_cs: cs,
                addresses: addrs.into_iter().map(IpAddr::from).collect(),
            };
            (a, Endpoints { src: IpAddr::from([198, 51, 100, src]), dst: "224.0.0.18".parse().unwrap() })
        });
    let v6s = (1u8..=255, any::<u8>(), 1u16..=4095, prop::collection::vec(any::<[u8; 16]>(), 1..4)).prop_map(
        |(vrid, prio, cs, addrs)| {
            let a = Advertisement {
                version: Version::V3,
                vrid,
                priority: prio,
                interval_cs: cs,
                addresses: addrs.into_iter().map(IpAddr::from).collect(),
            };
            (a, v6())
        },
    );
    prop_oneof![v4s, v6s]
}

proptest! {
    #[test]
    fn what_is_encoded_decodes_to_itself((a, e) in any_advert(), pseudo in any::<bool>()) {
        let form = if pseudo { ChecksumForm::PseudoHeader } else { ChecksumForm::Message };
        let bytes = a.encode(&e, form).unwrap();
        prop_assert_eq!(decode(&bytes, 255, &e).unwrap().advertisement, a);
    }

    /// The fuzz target's property (agent/vrrp/fuzz), on stable in the test command: any bytes from any
    /// endpoints with any TTL give a value or an error, and what decodes re-encodes to the same advert.
    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..128), v6 in any::<bool>(), ttl in any::<u8>()) {
        let e = if v6 { self::v6() } else { v4() };
        if let Ok(r) = decode(&bytes, ttl, &e) {
            let again = r.advertisement.encode(&e, r.checksum).unwrap();
            prop_assert_eq!(decode(&again, 255, &e).unwrap().advertisement, r.advertisement);
        }
    }

    /// Random bytes rarely get past the checksum; valid adverts with a few bytes changed, cut or extended and
    /// the checksum made right again reach every later check: still a value or an error, never a panic.
    #[test]
    fn mutated_adverts_decode_or_fail_cleanly(
        (a, e) in any_advert(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        resize in prop::option::of(0usize..96),
        ttl in prop_oneof![Just(255u8), any::<u8>()],
    ) {
        let mut bytes = a.encode(&e, ChecksumForm::Message).unwrap();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if let Some(len) = resize {
            bytes.resize(len.max(8), 0);
        }
        let bytes = refix(bytes, &e);
        if let Ok(r) = decode(&bytes, ttl, &e) {
            prop_assert_eq!(ttl, 255, "only a TTL of 255 is accepted");
            let again = r.advertisement.encode(&e, r.checksum).unwrap();
            prop_assert_eq!(decode(&again, 255, &e).unwrap().advertisement, r.advertisement);
        }
    }

    #[test]
    fn a_flipped_bit_never_passes_unnoticed((a, e) in any_advert(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = a.encode(&e, ChecksumForm::Message).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // Either rejected, or (never, for one bit) decoded to something else that is still consistent.
        if let Ok(r) = decode(&bytes, 255, &e) {
            prop_assert_ne!(r.advertisement, a);
        }
    }
}
