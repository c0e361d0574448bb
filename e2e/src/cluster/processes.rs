//! Processes on the test world's hosts: started in a host's namespaces with their logs under the cluster's
//! directory, as services that survive the test process, or as one-off commands.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::error::{Error, IoContext as _, Result};
use crate::net::Host;
use crate::process::{self, Daemon};

use super::Cluster;

impl Cluster {
    /// Starts `argv` on `host` (its network namespace and hostname), its output in
    /// `logs/<host>/<name>.log`. The returned handle SIGKILLs it when dropped.
    pub fn spawn(&self, host: &Host, name: &str, argv: &[String]) -> Result<Process> {
        self.start_process(Some(host), &host.name(), name, argv)
    }

    /// Starts `argv` on this machine (the root namespace, where the operator's API access works as from a
    /// pod), with the admin kubeconfig and its output in `logs/<name>.log`. SIGKILLed when dropped.
    pub fn spawn_local(&self, name: &str, argv: &[String]) -> Result<Process> {
        self.start_process(None, "", name, argv)
    }

    pub(super) fn start_process(&self, host: Option<&Host>, dir: &str, name: &str, argv: &[String]) -> Result<Process> {
        let log = self.dir.join("logs").join(dir).join(format!("{name}.log"));
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let out = File::create(&log).ctx(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().ctx(|| format!("opening {}", log.display()))?;
        let program = argv.first().ok_or_else(|| Error::Usage("spawn needs a command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..]).env("KUBECONFIG", self.kubeconfig()).stdin(Stdio::null()).stdout(out).stderr(err);
        if let Some(host) = host {
            process::enter(&mut cmd, host, false)?;
        }
        let child = cmd.spawn().ctx(|| format!("starting {program}"))?;
        Ok(Process { child, log })
    }

    /// Starts `argv` on `host` as the system service `name` (what systemd would run there: keepalived,
    /// HAProxy), in the host's namespaces, recorded so that it outlives the caller and is stopped with the
    /// node. Does nothing if it runs already.
    pub fn start_service(&self, host: &Host, name: &str, argv: &[String]) -> Result<()> {
        let daemon = self.service(host, name);
        if daemon.pid().is_none() {
            daemon.spawn(host, argv)?;
        }
        Ok(())
    }

    /// Stops the service `name` on `host`: SIGTERM and up to 10 s to finish, or, if `crash`, SIGKILL to every
    /// process of it at once.
    pub fn stop_service(&self, host: &Host, name: &str, crash: bool) {
        let daemon = self.service(host, name);
        if crash { daemon.kill() } else { daemon.stop(Duration::from_secs(10)) }
    }

    /// Whether the service `name` runs on `host`.
    pub fn service_running(&self, host: &Host, name: &str) -> bool {
        self.service(host, name).pid().is_some()
    }

    pub(super) fn service(&self, host: &Host, name: &str) -> Daemon {
        Daemon {
            pidfile: self.dir.join("run").join(host.name()).join(format!("svc-{name}.pid")),
            log: self.dir.join("logs").join(host.name()).join(format!("svc-{name}.log")),
        }
    }

    /// Every live process on `host` (in its network namespace).
    pub fn processes_on(&self, host: &Host) -> Vec<u32> {
        process::pids_in(host)
    }

    /// Runs a command on a host (its network namespace and hostname), with this process's stdio.
    pub fn exec(&self, host: &Host, argv: &[String]) -> Result<ExitStatus> {
        let program = argv.first().ok_or_else(|| Error::Usage("exec needs a command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..]).env("KUBECONFIG", self.kubeconfig());
        process::enter(&mut cmd, host, false)?;
        cmd.status().ctx(|| format!("running {program} on {host}"))
    }
}

/// A process a test started on a host; SIGKILLed when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, like a crash; waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().ctx(|| "waiting for a terminated process".into())
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
