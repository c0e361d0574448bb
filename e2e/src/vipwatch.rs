//! Where an address was, when: the kernel's own address events on every host, in the order the kernel
//! made them. One `ip -ts monitor address all-nsid` in the root namespace hears every host's namespace
//! through its nsid (RFC-free kernel feature: a netlink socket with NETLINK_LISTEN_ALL_NSID), so one queue
//! holds the events of all hosts in kernel order. One monitor per host would not do: each stamps an event
//! when its process reads it, so a monitor scheduled late on a busy machine puts a removal after the add
//! that followed it on another host, and shows the VIP on two hosts that never held it together.
//! Polling each host in turn with `ip addr` is worse still (milliseconds per host).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cluster::Cluster;
use crate::error::{IoContext as _, Result};
use crate::net::{CLIENTS, Host, NODES};

/// An address no test uses, added and removed on a host until the monitor is known to listen.
const MARKER: &str = "203.0.113.254";

#[derive(Debug)]
/// Watches `address` on every host from [`VipWatch::start`] to [`VipWatch::finish`].
pub struct VipWatch {
    monitor: Child,
    reader: Option<JoinHandle<Vec<Change>>>,
    /// When the initial holders were read (seconds since the epoch).
    since: f64,
    initial: Vec<Host>,
}

/// One change of one host, at the time `ip monitor` read it (seconds since the epoch).
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
    /// Every add and removal (refreshes left out), as `+4.624438 n2 added`: what a failure message shows.
    pub events: Vec<String>,
}

impl VipWatch {
    /// Starts the monitor, then reads where `address` is now.
    pub fn start(cluster: &Cluster, address: IpAddr) -> Result<Self> {
        let hosts: Vec<Host> = NODES.iter().chain(CLIENTS.iter()).copied().collect();
        let nsids = nsids(&hosts)?;
        let mut monitor = Command::new("ip")
            .args(["-ts", "monitor", "address", "all-nsid"])
            // The stamps are local time; UTC makes them comparable with the epoch.
            .env("TZ", "UTC")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| "ip monitor all-nsid".to_string())?;
        let out = monitor.stdout.take().expect("piped");
        let want = address.to_string();
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut changes = Vec::new();
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if line.contains(&format!(" {MARKER}/32 ")) {
                    let _ = subscribed_tx.send(());
                }
                changes.extend(change(&line, &nsids, &want));
            }
            changes
        });
        // `ip monitor` prints nothing when it has subscribed: a marker address it reports says it hears.
        let marker = |op: &str| {
            Command::new("ip")
                .args(["-n", &hosts[0].netns(), "addr", op, &format!("{MARKER}/32"), "dev", "eth0"])
                .status()
                .ctx(|| format!("ip addr {op} {MARKER} on {}", hosts[0]))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut heard = false;
        while !heard && std::time::Instant::now() < deadline {
            marker("add")?;
            marker("del")?;
            heard = subscribed.recv_timeout(Duration::from_millis(100)).is_ok();
        }
        if !heard {
            let _ = monitor.kill();
            return Err(crate::Error::Usage("ip monitor all-nsid did not start within 10 s".into()));
        }
        let since = epoch_now();
        let initial = cluster.holders(address);
        Ok(Self { monitor, reader: Some(reader), since, initial })
    }

    /// Stops the monitor and tells what happened since the start.
    pub fn finish(mut self) -> Timeline {
        let end = epoch_now();
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
        // Kept in the order read, which is the kernel's: the stamps only measure the stretches.
        let changes: Vec<Change> = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.at > self.since)
            .collect();
        timeline(self.since, end, &self.initial, &changes)
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
    }
}

/// The nsid under which the root namespace knows each host's namespace, assigned where there is none yet
/// (`ip netns set NAME auto`; a namespace keeps its nsid until it is deleted).
fn nsids(hosts: &[Host]) -> Result<HashMap<u32, Host>> {
    let mut ids = HashMap::new();
    for host in hosts {
        let _ = Command::new("ip").args(["netns", "set", &host.netns(), "auto"]).stderr(Stdio::null()).status();
    }
    let list = Command::new("ip").args(["netns", "list"]).output().ctx(|| "ip netns list".to_string())?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        // `kh-n1 (id: 3)`
        let mut words = line.split_whitespace();
        let (Some(name), Some("(id:"), Some(id)) = (words.next(), words.next(), words.next()) else { continue };
        if let (Some(host), Ok(id)) =
            (hosts.iter().find(|h| h.netns() == name), id.trim_end_matches(')').parse::<u32>())
        {
            ids.insert(id, *host);
        }
    }
    match hosts.iter().find(|h| !ids.values().any(|v| v == *h)) {
        Some(h) => Err(crate::Error::Usage(format!("{} has no nsid in the root namespace", h.netns()))),
        None => Ok(ids),
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
        t.events.push(format!("+{:.6} {} {}", c.at - since, c.host, if c.present { "added" } else { "removed" }));
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

/// A change of `want` in one line of `ip -ts monitor address all-nsid`, on the host of its nsid:
/// `[2026-12-06T14:41:18.763126] [nsid 2]Deleted 3: eth0    inet 198.51.100.10/24 scope global dynamic eth0`.
fn change(line: &str, nsids: &HashMap<u32, Host>, want: &str) -> Option<Change> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let (nsid, rest) = rest.strip_prefix("[nsid ")?.split_once(']')?;
    let host = *nsids.get(&nsid.parse().ok()?)?;
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
    fn lines_of_ip_monitor_are_changes_of_the_address_on_the_host_of_their_nsid() {
        let [n1, n2, _] = NODES;
        let ids = HashMap::from([(3, n1), (4, n2)]);
        let add = "[2026-12-06T14:41:18.759174] [nsid 3]3: eth0    inet 198.51.100.10/24 scope global dynamic eth0";
        let del =
            "[2026-12-06T14:41:18.763126] [nsid 4]Deleted 3: eth0    inet 198.51.100.10/24 scope global dynamic eth0";
        assert!(change(add, &ids, VIP).is_some_and(|c| c.present && c.host == n1));
        assert!(change(del, &ids, VIP).is_some_and(|c| !c.present && c.host == n2));
        assert!(change("       valid_lft 6sec preferred_lft 6sec", &ids, VIP).is_none());
        assert!(change(&add.replace(".10/", ".100/"), &ids, VIP).is_none(), "another address");
        assert!(change(&add.replace("nsid 3", "nsid 9"), &ids, VIP).is_none(), "a namespace of no host");
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
