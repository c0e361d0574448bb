//! Where an address was, when: the kernel's own address events (`ip -ts monitor address`) on every host,
//! merged into one timeline. Polling each host in turn with `ip addr` takes milliseconds per host, so it can
//! see the VIP on two hosts that held it one after the other, and miss a stretch shorter than its round;
//! the events carry the time each change was announced, to the microsecond.

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cluster::Cluster;
use crate::error::{IoContext as _, Result};
use crate::net::{CLIENTS, Host, NODES};

/// An address no test uses, added and removed once on each host so that every monitor is known to listen.
const MARKER: &str = "203.0.113.254";

#[derive(Debug)]
/// Watches `address` on every host from [`VipWatch::start`] to [`VipWatch::finish`].
pub struct VipWatch {
    monitors: Vec<Child>,
    readers: Vec<JoinHandle<Vec<Change>>>,
    /// When the initial holders were read (seconds since the epoch).
    since: f64,
    initial: Vec<Host>,
}

/// One change of one host, at the time `ip monitor` stamped it (seconds since the epoch).
#[derive(Clone, Copy, Debug)]
struct Change {
    at: f64,
    host: Host,
    present: bool,
}

/// What the watch saw.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The longest stretch with the address on no host (the one still open at the end included).
    pub longest_nowhere: Duration,
    /// Every stretch with the address on two or more hosts: when it began (seconds after the start), how
    /// long it lasted, and on which hosts.
    pub on_two: Vec<(f64, Duration, Vec<Host>)>,
    /// How many times the address moved (was added somewhere).
    pub adds: usize,
}

impl VipWatch {
    /// Starts one `ip monitor` per host, then reads where `address` is now.
    pub fn start(cluster: &Cluster, address: IpAddr) -> Result<Self> {
        let (mut monitors, mut readers) = (Vec::new(), Vec::new());
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel::<Host>();
        for host in NODES.iter().chain(CLIENTS.iter()).copied() {
            let mut child = Command::new("ip")
                .args(["-ts", "-n", &host.netns(), "monitor", "address", "dev", "eth0"])
                // The stamps are local time; UTC makes them comparable with the epoch.
                .env("TZ", "UTC")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ctx(|| format!("ip monitor on {host}"))?;
            let out = child.stdout.take().expect("piped");
            let want = address.to_string();
            let subscribed_tx = subscribed_tx.clone();
            readers.push(std::thread::spawn(move || {
                let mut changes = Vec::new();
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if line.contains(&format!(" {MARKER}/32 ")) {
                        let _ = subscribed_tx.send(host);
                    }
                    changes.extend(change(&line, host, &want));
                }
                changes
            }));
            monitors.push(child);
        }
        // `ip monitor` prints nothing when it has subscribed: a marker address added on each host and seen
        // by every monitor says that all of them hear changes now.
        let marker = |op: &str, host: &Host| {
            Command::new("ip")
                .args(["-n", &host.netns(), "addr", op, &format!("{MARKER}/32"), "dev", "eth0"])
                .status()
                .ctx(|| format!("ip addr {op} {MARKER} on {host}"))
        };
        let hosts: Vec<Host> = NODES.iter().chain(CLIENTS.iter()).copied().collect();
        let mut waiting = hosts.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !waiting.is_empty() && std::time::Instant::now() < deadline {
            for h in &waiting {
                marker("add", h)?;
                marker("del", h)?;
            }
            while let Ok(h) = subscribed.recv_timeout(Duration::from_millis(100)) {
                waiting.retain(|w| *w != h);
            }
        }
        if !waiting.is_empty() {
            return Err(crate::Error::Usage(format!("ip monitor did not start on {waiting:?} within 10 s")));
        }
        let since = epoch_now();
        let initial = cluster.holders(address);
        Ok(Self { monitors, readers, since, initial })
    }

    /// Stops the monitors and tells what happened since the start.
    pub fn finish(mut self) -> Timeline {
        let end = epoch_now();
        for m in &mut self.monitors {
            let _ = m.kill();
            let _ = m.wait();
        }
        let mut changes: Vec<Change> =
            self.readers.drain(..).flat_map(|r| r.join().unwrap_or_default()).filter(|c| c.at > self.since).collect();
        changes.sort_by(|a, b| a.at.total_cmp(&b.at));
        timeline(self.since, end, &self.initial, &changes)
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        for m in &mut self.monitors {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

fn timeline(since: f64, end: f64, initial: &[Host], changes: &[Change]) -> Timeline {
    let mut holders: Vec<Host> = initial.to_vec();
    let mut t = Timeline::default();
    let (mut nowhere_since, mut two_since) = (holders.is_empty().then_some(since), None::<(f64, Vec<Host>)>);
    if holders.len() > 1 {
        two_since = Some((since, holders.clone()));
    }
    for c in changes {
        let had = holders.contains(&c.host);
        match (c.present, had) {
            // A refresh of the lifetime, or a removal of what was not there.
            (true, true) | (false, false) => continue,
            (true, false) => {
                holders.push(c.host);
                t.adds += 1;
            }
            (false, true) => holders.retain(|h| *h != c.host),
        }
        match (holders.len(), nowhere_since) {
            (0, None) => nowhere_since = Some(c.at),
            (1.., Some(from)) => {
                t.longest_nowhere = t.longest_nowhere.max(secs(c.at - from));
                nowhere_since = None;
            }
            _ => {}
        }
        match (holders.len(), &mut two_since) {
            (2.., None) => two_since = Some((c.at, holders.clone())),
            (2.., Some((_, on))) => {
                for h in &holders {
                    if !on.contains(h) {
                        on.push(*h);
                    }
                }
            }
            (..2, Some((from, on))) => {
                t.on_two.push((*from - since, secs(c.at - *from), std::mem::take(on)));
                two_since = None;
            }
            (..2, None) => {}
        }
    }
    if let Some(from) = nowhere_since {
        t.longest_nowhere = t.longest_nowhere.max(secs(end - from));
    }
    if let Some((from, on)) = two_since {
        t.on_two.push((from - since, secs(end - from), on));
    }
    t
}

/// A change of `want` on `host` in one line of `ip -ts monitor address`:
/// `[2026-12-06T14:41:18.763126] Deleted 3: eth0    inet 198.51.100.10/24 scope global dynamic eth0`.
fn change(line: &str, host: Host, want: &str) -> Option<Change> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let mut words = rest.split_whitespace();
    let present = words.clone().next() != Some("Deleted");
    words.find(|w| *w == "inet" || *w == "inet6")?;
    let addr = words.next()?.split('/').next()?;
    (addr == want).then_some(Change { at: epoch_of(stamp)?, host, present })
}

/// `2026-12-06T14:41:18.763126` (UTC) in seconds since the epoch.
fn epoch_of(stamp: &str) -> Option<f64> {
    let t: k8s_openapi::jiff::Timestamp = format!("{stamp}Z").parse().ok()?;
    Some(t.as_microsecond() as f64 / 1e6)
}

fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: &str = "198.51.100.10";

    #[test]
    fn stamps_are_seconds_since_the_epoch() {
        assert_eq!(epoch_of("1970-01-01T00:00:01.5"), Some(1.5));
        // `date -u -d 2026-12-06T14:41:18 +%s`
        assert_eq!(epoch_of("2026-12-06T14:41:18.000000"), Some(1_796_568_078.0));
        assert_eq!(epoch_of("2024-02-29T00:00:00").unwrap() - epoch_of("2024-02-28T00:00:00").unwrap(), 86_400.0);
    }

    #[test]
    fn lines_of_ip_monitor_are_changes_of_the_address() {
        let n1 = NODES[0];
        let add = "[2026-12-06T14:41:18.759174] 3: eth0    inet 198.51.100.10/24 scope global dynamic eth0";
        let del = "[2026-12-06T14:41:18.763126] Deleted 3: eth0    inet 198.51.100.10/24 scope global dynamic eth0";
        assert!(change(add, n1, VIP).is_some_and(|c| c.present));
        assert!(change(del, n1, VIP).is_some_and(|c| !c.present));
        assert!(change("       valid_lft 6sec preferred_lft 6sec", n1, VIP).is_none());
        assert!(change(&add.replace(".10/", ".100/"), n1, VIP).is_none(), "another address");
    }

    #[test]
    fn the_timeline_measures_stretches_nowhere_and_on_two() {
        let [n1, n2, _] = NODES;
        let c = |at, host, present| Change { at, host, present };
        // n1 holds; it lets go at 1.0, n2 adds at 1.002; n1 adds again at 2.0 before n2 removes at 2.005.
        let changes = [c(0.5, n1, true), c(1.0, n1, false), c(1.002, n2, true), c(2.0, n1, true), c(2.005, n2, false)];
        let t = timeline(0.0, 3.0, &[n1], &changes);
        assert_eq!(t.adds, 2, "the refresh at 0.5 is not a move");
        assert!((t.longest_nowhere.as_secs_f64() - 0.002).abs() < 1e-9, "{t:?}");
        assert_eq!(t.on_two.len(), 1);
        let (at, lasted, on) = &t.on_two[0];
        assert!((*at - 2.0).abs() < 1e-9 && (lasted.as_secs_f64() - 0.005).abs() < 1e-9, "{t:?}");
        assert_eq!(on, &vec![n2, n1]);

        let t = timeline(0.0, 3.0, &[], &[c(1.0, n1, true)]);
        assert_eq!(t.longest_nowhere, Duration::from_secs(1));
        assert!(t.on_two.is_empty());
    }
}
