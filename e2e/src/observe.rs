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

/// How many file descriptors a process has open, if it is alive.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// CPU time a process has used so far (user + system), in seconds, if it is alive.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after its closing parenthesis start at field 3.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    // utime and stime (fields 14 and 15) count in USER_HZ, which Linux fixes at 100 for /proc.
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_counts_what_the_process_spends() {
        let me = std::process::id();
        let before = super::cpu_seconds(me).expect("this process's /proc/self/stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = super::cpu_seconds(me).unwrap() - before;
        assert!(spent >= 0.1, "300 ms of spinning counted as {spent} s");
    }
}
