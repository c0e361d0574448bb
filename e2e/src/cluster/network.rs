//! What the network shows: which hosts carry an address, and how clients' connects end.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::net::{CLIENTS, Host, NODES};
use crate::process;

use super::Cluster;

impl Cluster {
    /// The hosts whose eth0 carries `address` right now.
    pub fn holders(&self, address: std::net::IpAddr) -> Vec<Host> {
        NODES
            .iter()
            .chain(CLIENTS.iter())
            .filter(|h| {
                process::output(Command::new("ip").args(["-n", &h.netns(), "-o", "addr", "show", "dev", "eth0"]))
                    .is_ok_and(|out| out.split_whitespace().any(|w| w.split('/').next() == Some(&address.to_string())))
            })
            .copied()
            .collect()
    }

    /// Connects to `addr` from `host`, one attempt after the other every `every` (each up to 1 s), for
    /// `span`, and counts how they ended: what a client of a listener sees while the test does something
    /// else. Join the handle for the tally.
    pub fn connect_loop(
        &self,
        host: &Host,
        addr: SocketAddr,
        every: Duration,
        span: Duration,
    ) -> Result<std::thread::JoinHandle<Connects>> {
        process::thread_in(host, "connect-loop", move || {
            let mut tally = Connects::default();
            let until = std::time::Instant::now() + span;
            while std::time::Instant::now() < until {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(_) => tally.ok += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => tally.refused += 1,
                    Err(_) => tally.failed += 1,
                }
                std::thread::sleep(every);
            }
            tally
        })
    }
}

/// How the connects of [`Cluster::connect_loop`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connects {
    /// Accepted.
    pub ok: u32,
    /// Refused: a reset, nothing listening on the address where the packets arrived.
    pub refused: u32,
    /// Timed out or unreachable.
    pub failed: u32,
}
