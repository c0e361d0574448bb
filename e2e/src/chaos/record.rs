//! What a chaos run observes, on one clock: a client's probes through the VIP (TCP connects every 10 ms,
//! kubectl requests, one long watch) and which masters hold the VIP (every 20 ms, from netlink).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, setsockopt, socket};
use nix::sys::time::TimeVal;
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;

use crate::error::{Error, Result};
use crate::net::{Host, NODES};
use crate::process;

/// Seconds since the start of a chaos run; every record is stamped with it.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock that starts now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Seconds since the start.
    pub fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Everything observed, in the order it happened (connect results are pushed when they complete, so sort
/// by time before walking them).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Log {
    /// TCP connects to the proxy on the VIP: when it was started, and whether it connected within 1 s.
    pub connects: Vec<(f64, bool)>,
    /// TCP connects that succeeded but took 50 ms or more: when each was started, and how long it took (a
    /// SYN that waited for the VIP to arrive somewhere: a delay the client saw, not a failure).
    pub slow_connects: Vec<(f64, f64)>,
    /// kubectl requests through the VIP: start, end, success.
    pub requests: Vec<(f64, f64, bool)>,
    /// Why a failed kubectl request failed (the last line it printed), by its start.
    pub request_errors: Vec<(f64, String)>,
    /// When the long watch printed an event.
    pub watch_events: Vec<f64>,
    /// When the watch was (re)started after it ended.
    pub watch_starts: Vec<f64>,
    /// Changes of who holds the VIP: the time and a bit per master (bit i: `NODES[i]`).
    pub holders: Vec<(f64, u8)>,
}

impl Log {
    /// The holder bits at time `t` (0 before the first sample).
    pub fn holders_at(&self, t: f64) -> u8 {
        self.holders.iter().take_while(|(at, _)| *at <= t).last().map_or(0, |(_, m)| *m)
    }
}

/// The shared log.
pub type Shared = Arc<Mutex<Log>>;

/// Locks the log; a panicked writer leaves data that is still worth reading.
pub fn lock(log: &Shared) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The masters that hold the VIP in `mask`.
pub fn hosts(mask: u8) -> Vec<Host> {
    NODES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect()
}

/// Something running on a thread of its own until it is stopped (or its time bound passes).
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Stops it and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the client probes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The proxy on the VIP, for TCP connects.
    pub connect: SocketAddr,
    /// kubectl.
    pub kubectl: PathBuf,
    /// A kubeconfig whose server is the VIP.
    pub kubeconfig: PathBuf,
}

/// Starts the client on `host`: a TCP connect to `target.connect` every 10 ms (each may take up to 1 s),
/// a kubectl request every second, and `kubectl get leases -n kube-system --watch-only` started again 200 ms
/// after it ends, as an informer would. Runs until stopped or for `bound` at most.
pub fn probe(host: &Host, target: ProbeTarget, clock: Clock, log: Shared, bound: Duration) -> Result<Worker> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = process::thread_in(host, "chaos-probe", move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return eprintln!("chaos probe: no runtime: {e}"),
        };
        rt.block_on(run_probe(target, clock, log, flag, Instant::now() + bound));
    })?;
    Ok(Worker { stop, thread: Some(thread) })
}

async fn run_probe(target: ProbeTarget, clock: Clock, log: Shared, stop: Arc<AtomicBool>, until: Instant) {
    let mut connect_tick = tokio::time::interval(Duration::from_millis(10));
    connect_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut request_tick = tokio::time::interval(Duration::from_secs(1));
    request_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let watch = tokio::spawn(watch_loop(target.clone(), clock, log.clone(), stop.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        tokio::select! {
            _ = connect_tick.tick() => {
                let (log, addr) = (log.clone(), target.connect);
                tasks.spawn(async move {
                    let t = clock.now();
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
                        Ok(Ok(_))
                    );
                    let took = clock.now() - t;
                    let mut log = lock(&log);
                    log.connects.push((t, ok));
                    if ok && took >= 0.05 {
                        log.slow_connects.push((t, took));
                    }
                });
            }
            _ = request_tick.tick() => {
                let (log, target) = (log.clone(), target.clone());
                tasks.spawn(async move {
                    let t = clock.now();
                    let out = tokio::process::Command::new(&target.kubectl)
                        .env("KUBECONFIG", &target.kubeconfig)
                        .args(["--request-timeout=5s", "get", "--raw", "/api/v1/namespaces/kube-system"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .kill_on_drop(true)
                        .output()
                        .await;
                    let ok = out.as_ref().is_ok_and(|o| o.status.success());
                    let mut log = lock(&log);
                    log.requests.push((t, clock.now(), ok));
                    if !ok {
                        let why = out.map_or_else(|e| e.to_string(), |o| String::from_utf8_lossy(&o.stderr).into_owned());
                        log.request_errors.push((t, why.lines().last().unwrap_or_default().to_string()));
                    }
                });
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    stop.store(true, Ordering::Relaxed);
    // Let the attempts under way finish (each is bounded), so that none is recorded as lost.
    while tasks.join_next().await.is_some() {}
    let _ = watch.await;
}

async fn watch_loop(target: ProbeTarget, clock: Clock, log: Shared, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        lock(&log).watch_starts.push(clock.now());
        let child = tokio::process::Command::new(&target.kubectl)
            .env("KUBECONFIG", &target.kubeconfig)
            .args(["get", "leases", "-n", "kube-system", "--watch-only", "-o", "name"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        if let Ok(mut child) = child
            && let Some(out) = child.stdout.take()
        {
            let mut lines = tokio::io::BufReader::new(out).lines();
            loop {
                match tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
                    Ok(Ok(Some(_))) => lock(&log).watch_events.push(clock.now()),
                    Ok(_) => break,
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Samples every 20 ms which masters carry `vip` on eth0, through a netlink socket opened in each master's
/// namespace (no process per sample), and records each change. Runs until stopped or for `bound` at most.
/// Stop it before the namespaces are removed: its sockets keep them alive.
pub fn sample_holders(vip: Ipv4Addr, clock: Clock, log: Shared, bound: Duration) -> Result<Worker> {
    let mut sockets = Vec::new();
    for node in NODES {
        let opened = process::thread_in(&node, "chaos-netlink", netlink_socket)?;
        let fd = opened.join().map_err(|_| Error::Usage("the netlink thread panicked".into()))?;
        sockets.push(fd.map_err(|e| Error::Usage(format!("netlink socket on {node}: {e}")))?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("chaos-holders".into())
        .spawn(move || {
            let until = Instant::now() + bound;
            let mut last = None;
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                let t = clock.now();
                let mut mask = 0u8;
                for (i, fd) in sockets.iter().enumerate() {
                    seq = seq.wrapping_add(1);
                    // A failed dump is read as "not holding": the only failure seen is a timeout under load,
                    // and the next sample 20 ms later corrects it.
                    if has_address(fd, vip, seq).unwrap_or(false) {
                        mask |= 1 << i;
                    }
                }
                if last != Some(mask) {
                    lock(&log).holders.push((t, mask));
                    last = Some(mask);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .map_err(|e| Error::Usage(format!("starting the holder sampler: {e}")))?;
    Ok(Worker { stop, thread: Some(thread) })
}

fn netlink_socket() -> nix::Result<OwnedFd> {
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
    setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    Ok(fd)
}

/// AF_INET on every Linux architecture.
const AF_INET: u8 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// Whether any IPv4 address of the socket's namespace is `vip`: an RTM_GETADDR dump, read to its end.
fn has_address(fd: &OwnedFd, vip: Ipv4Addr, seq: u32) -> nix::Result<bool> {
    // nlmsghdr (len, type, flags, seq, pid) + ifaddrmsg (family AF_INET, prefixlen, flags, scope, index).
    let mut req = Vec::with_capacity(24);
    req.extend_from_slice(&24u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[AF_INET, 0, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    send(fd.as_raw_fd(), &req, MsgFlags::empty())?;
    let want = vip.octets();
    let mut found = false;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut msg = &buf[..n];
        while msg.len() >= 16 {
            let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
            let kind = u16::from_ne_bytes([msg[4], msg[5]]);
            let msg_seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
            if len < 16 || len > msg.len() {
                return Err(nix::errno::Errno::EBADMSG);
            }
            if msg_seq == seq {
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => return Err(nix::errno::Errno::EIO),
                    RTM_NEWADDR => {
                        found |= attributes(&msg[16 + 8..len])
                            .any(|(t, data)| (t == IFA_LOCAL || t == IFA_ADDRESS) && data == want)
                    }
                    _ => {}
                }
            }
            msg = &msg[len.next_multiple_of(4).min(msg.len())..];
        }
    }
}

/// The (type, data) of each rtattr in `bytes`.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        if len < 4 || len > bytes.len() {
            return None;
        }
        let data = &bytes[4..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some((kind, data))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtattrs_are_walked_with_their_padding() {
        // IFA_ADDRESS 198.51.100.10, then a 5-byte IFA_LABEL padded to 8, then IFA_LOCAL.
        let mut b = vec![8, 0, 1, 0, 198, 51, 100, 10];
        b.extend_from_slice(&[5, 0, 3, 0, b'e', 0, 0, 0]);
        b.extend_from_slice(&[8, 0, 2, 0, 198, 51, 100, 11]);
        let got: Vec<(u16, Vec<u8>)> = attributes(&b).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(got, [(1, vec![198, 51, 100, 10]), (3, vec![b'e']), (2, vec![198, 51, 100, 11])]);
        // A length past the end stops the walk instead of reading beyond it.
        assert_eq!(attributes(&[200, 0, 1, 0, 1, 2]).count(), 0);
    }

    #[test]
    fn the_holders_at_a_time_are_the_last_change_before_it() {
        let log = Log { holders: vec![(1.0, 0b001), (2.0, 0b011), (2.5, 0b010)], ..Log::default() };
        assert_eq!(log.holders_at(0.5), 0);
        assert_eq!(log.holders_at(2.2), 0b011);
        assert_eq!(log.holders_at(9.0), 0b010);
        assert_eq!(hosts(0b101), [NODES[0], NODES[2]]);
    }
}
