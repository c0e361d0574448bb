//! Any bytes, from any endpoints, with any TTL: decoding returns a value or a DecodeError, never panics, and
//! what decodes re-encodes to a packet that decodes to the same advertisement.
#![no_main]

use core::net::IpAddr;

use kubeha_vrrp::wire::{Endpoints, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], bool, u8)| {
    let (bytes, v6, ttl) = input;
    let endpoints = if v6 {
        Endpoints { src: IpAddr::from([0xfe80, 0, 0, 0, 0, 0, 0, 0x11u16]), dst: IpAddr::from([0xff02, 0, 0, 0, 0, 0, 0, 0x12u16]) }
    } else {
        Endpoints { src: IpAddr::from([198, 51, 100, 11]), dst: IpAddr::from([224, 0, 0, 18]) }
    };
    if let Ok(r) = decode(bytes, ttl, &endpoints) {
        let again = r.advertisement.encode(&endpoints, r.checksum).expect("a decoded advertisement encodes");
        assert_eq!(decode(&again, 255, &endpoints).expect("and decodes").advertisement, r.advertisement);
    }
});
