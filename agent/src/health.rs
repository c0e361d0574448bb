//! Health checks that move the VRRP priority: an HTTPS GET (the local kube-apiserver's /readyz), a TCP
//! connect, or an interface's carrier. Each runs on its own interval with a timeout; a check turns
//! unhealthy after `fall` consecutive failures and healthy again after `rise` consecutive successes.

use std::time::Duration;

use kubeha_crds::HealthCheck;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::probe::{https, tls_config};
use crate::vip::VipOnLink;

/// The verdict of one check, after rise/fall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The check's name.
    pub name: String,
    /// Healthy after rise/fall; `None` until the first result.
    pub healthy: Option<bool>,
    /// What the last attempt saw.
    pub detail: String,
    /// Its weight: added to the priority while unhealthy; 0 means FAULT.
    pub weight: i32,
    /// When `healthy` last changed (wall clock, for status).
    pub since: Option<std::time::SystemTime>,
}

/// Rise/fall hysteresis: flips only after enough consecutive results the other way. The first result
/// decides at once, so that a node does not start on an optimistic or pessimistic guess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threshold {
    rise: u32,
    fall: u32,
    healthy: Option<bool>,
    streak: u32,
}

impl Threshold {
    /// A threshold that needs `rise` successes to turn healthy and `fall` failures to turn unhealthy.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self { rise: rise.max(1), fall: fall.max(1), healthy: None, streak: 0 }
    }

    /// Records one result.
    pub fn record(&mut self, ok: bool) {
        match self.healthy {
            None => {
                self.healthy = Some(ok);
                self.streak = 0;
            }
            Some(h) if h == ok => self.streak = 0,
            Some(_) => {
                self.streak += 1;
                if self.streak >= if ok { self.rise } else { self.fall } {
                    self.healthy = Some(ok);
                    self.streak = 0;
                }
            }
        }
    }

    /// Turns unhealthy at once, whatever the streak: for evidence stronger than one failed check (a client
    /// whose connect was refused or timed out).
    pub fn fail_now(&mut self) {
        self.healthy = Some(false);
        self.streak = 0;
    }

    /// The state: `None` before the first result.
    pub fn state(&self) -> Option<bool> {
        self.healthy
    }
}

/// The effective priority and fault state that a set of verdicts gives a base priority: the weights of the
/// unhealthy checks are added (clamped to 1–254; 255 stays only while every check passes), and an
/// unhealthy check of weight 0 means FAULT.
pub fn effective(base: u8, verdicts: &[Verdict]) -> (u8, bool) {
    let failing = verdicts.iter().filter(|v| v.healthy == Some(false));
    let mut fault = false;
    let mut p = i32::from(base);
    for v in failing {
        if v.weight == 0 {
            fault = true;
        }
        p += v.weight;
    }
    let p = if p == i32::from(base) { base } else { u8::try_from(p.clamp(1, 254)).unwrap_or(1) };
    (p, fault)
}

/// Running checks: one task each, stopped when this is dropped (a new set of checks replaces the old).
#[derive(Debug, Default)]
pub struct Checks {
    /// The verdict of each check, in the order configured.
    pub verdicts: Vec<watch::Receiver<Verdict>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Checks {
    /// Checks whose verdicts someone else publishes (the driver's tests).
    #[cfg(test)]
    pub(crate) fn of(verdicts: Vec<watch::Receiver<Verdict>>) -> Self {
        Self { verdicts, tasks: Vec::new() }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one task per check; each publishes its verdict. Link checks need the netlink handle.
pub fn spawn(checks: &[HealthCheck], link: Option<VipOnLink>) -> Checks {
    let mut out = Checks::default();
    for c in checks {
        let (tx, rx) = watch::channel(Verdict {
            name: c.name.clone(),
            healthy: None,
            detail: String::new(),
            weight: c.weight,
            since: None,
        });
        out.tasks.push(tokio::spawn(run(c.clone(), link.clone(), tx)).abort_handle());
        out.verdicts.push(rx);
    }
    out
}

async fn run(check: HealthCheck, link: Option<VipOnLink>, tx: watch::Sender<Verdict>) {
    let rise = u32::try_from(check.rise).unwrap_or(1);
    let fall = u32::try_from(check.fall).unwrap_or(1);
    let mut threshold = Threshold::new(rise, fall);
    let tls = match &check.https {
        Some(h) => match tls_config(h.insecure_skip_verify, h.ca_file.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(check = %check.name, error = %e, "cannot set up TLS for the check; it will fail");
                None
            }
        },
        None => None,
    };
    let mut tick = tokio::time::interval(check.interval.into());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout: Duration = check.timeout.into();
        let attempt = async {
            if let Some(h) = &check.https {
                https(&h.url, tls.clone()).await
            } else if let Some(t) = &check.tcp {
                TcpStream::connect(&t.address).await.map(|_| "connected".to_string()).map_err(|e| e.to_string())
            } else if let Some(l) = &check.link {
                link_state(link.as_ref(), &l.interface).await
            } else {
                Err("no check configured".into())
            }
        };
        let (ok, detail) = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(d)) => (true, d),
            Ok(Err(e)) => (false, e),
            Err(_) => (false, format!("no answer within {timeout:?}")),
        };
        let before = threshold.state();
        threshold.record(ok);
        let after = threshold.state();
        if before != after {
            tracing::info!(check = %check.name, healthy = ?after, detail = %detail, "health check changed");
        }
        tx.send_if_modified(|v| {
            let changed = v.healthy != after;
            if changed {
                v.since = Some(std::time::SystemTime::now());
            }
            v.healthy = after;
            v.detail = detail;
            changed
        });
    }
}

async fn link_state(link: Option<&VipOnLink>, interface: &str) -> Result<String, String> {
    let link = link.ok_or("no netlink handle")?;
    match link.named_link_up(interface).await {
        Ok(true) => Ok(format!("{interface} up")),
        Ok(false) => Err(format!("{interface} down or without carrier")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_result_decides_then_rise_and_fall_hold_it() {
        let mut t = Threshold::new(2, 3);
        assert_eq!(t.state(), None);
        t.record(true);
        assert_eq!(t.state(), Some(true));
        for _ in 0..2 {
            t.record(false);
            assert_eq!(t.state(), Some(true), "fewer than fall=3 failures");
        }
        t.record(true); // a success resets the streak
        t.record(false);
        t.record(false);
        assert_eq!(t.state(), Some(true));
        t.record(false);
        assert_eq!(t.state(), Some(false), "three in a row");
        t.record(true);
        assert_eq!(t.state(), Some(false), "one success is not rise=2");
        t.record(true);
        assert_eq!(t.state(), Some(true));
    }

    fn v(weight: i32, healthy: Option<bool>) -> Verdict {
        Verdict { name: "c".into(), healthy, detail: String::new(), weight, since: None }
    }

    #[test]
    fn failing_weights_lower_the_priority_and_weight_zero_faults() {
        assert_eq!(effective(150, &[v(-60, Some(true))]), (150, false));
        assert_eq!(effective(150, &[v(-60, Some(false))]), (90, false));
        assert_eq!(effective(150, &[v(-60, Some(false)), v(-100, Some(false))]), (1, false), "never below 1");
        assert_eq!(effective(150, &[v(0, Some(false))]), (150, true));
        assert_eq!(effective(150, &[v(-60, None)]), (150, false), "no verdict yet: no penalty");
        assert_eq!(effective(255, &[v(-10, Some(false))]), (245, false));
    }
}
