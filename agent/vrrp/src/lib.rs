//! The sans-IO VRRP core: the wire codec ([`wire`]) and the router state machine ([`router`]) of RFC 9568
//! (VRRPv3, which obsoletes RFC 5798) and RFC 3768 (VRRPv2).
//!
//! Nothing here does I/O or reads a clock: the driver passes `now` and an input in and carries out the
//! actions that come back, which keeps every protocol decision deterministic and testable in virtual time.
//! The crate is `no_std` (with `alloc`) outside its tests, so a socket or a clock cannot creep in.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod router;
pub mod wire;
