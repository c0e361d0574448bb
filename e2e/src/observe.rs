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

/// What a process's open file descriptors are, counted by kind: a TCP socket by its state and remote port
/// (`tcp ESTABLISHED :6443`), as the process's own network namespace shows it; anything else by its link
/// target with numbers dropped (`pipe`, `anon_inode:[eventpoll]`, a file path). For telling a leak from a
/// pool of idle connections when a count grows.
pub fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut tcp = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else { continue };
            let port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
            tcp.insert(inode.to_string(), format!("tcp {} :{port}", tcp_state(state)));
        }
    }
    let mut kinds = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return kinds };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        let kind = match target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            Some(inode) => tcp.get(inode).cloned().unwrap_or_else(|| "socket (not TCP)".into()),
            None => target.split('[').next().unwrap_or(&target).trim_end_matches(':').to_string(),
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The name of a state in /proc/net/tcp (hex, as include/net/tcp_states.h numbers them).
fn tcp_state(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "other",
    }
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

    #[test]
    fn fd_kinds_names_a_listening_and_a_connected_socket() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let kinds = super::fd_kinds(me);
        assert!(kinds.get("tcp LISTEN :0").is_some_and(|n| *n >= 1), "{kinds:?}");
        assert!(kinds.get(&format!("tcp ESTABLISHED :{port}")).is_some_and(|n| *n >= 1), "{kinds:?}");
    }
}
