//! Reading a running component from outside, as a person would: its Prometheus metrics and its memory.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The text of `GET /metrics` on `addr` (plain HTTP), empty when it cannot be read.
pub async fn scrape(addr: SocketAddr) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: kubeha\r\nConnection: close\r\n\r\n").await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// The value of the sample `name{labels}` in a scrape, labels written as the exposition has them
/// (`backend="198.51.100.11:6443",kind="up"`).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok())
}

/// A process's resident memory in KiB (VmRSS), if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
