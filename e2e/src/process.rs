//! Processes of the test world: started inside a host's network namespace with the host's own name,
//! tracked by pidfiles that also record the start time (so a recycled PID is never signalled), and found
//! per namespace so that "every process of a node" really means every one.

use std::fs::{self, File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::ffi::{CStr, CString};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, sethostname, setsid};

use crate::error::{Error, IoContext as _, Result};
use crate::net::Host;

/// Runs a command to completion and turns a non-zero exit into an [`Error::Command`] with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

/// Runs a command to completion and returns its standard output.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().ctx(|| format!("running `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Command { cmd: line, detail: format!("{}: {}", out.status, tail.join(" | ")) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Makes `cmd` run inside `host`'s network namespace and a UTS namespace of its own whose hostname is the
/// host's name. With `new_session` it also leads a new session and process group, so that it and any
/// children can be signalled together and outlive the caller.
pub(crate) fn enter(cmd: &mut Command, host: &Host, new_session: bool) -> Result<()> {
    enter_with(cmd, host, new_session, &[])
}

/// A directory a process sees at another path, as a pod sees its volumes: bound in a mount namespace of its
/// own, so nobody else sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Bind {
    /// The directory of the test world.
    pub(crate) source: PathBuf,
    /// Where the process finds it. Created (empty) on the machine if missing: a mount needs a mount point.
    pub(crate) target: PathBuf,
}

/// [`enter`], plus a private mount namespace with `binds` in it when there are any.
pub(crate) fn enter_with(cmd: &mut Command, host: &Host, new_session: bool, binds: &[Bind]) -> Result<()> {
    let path = Path::new("/run/netns").join(host.netns());
    let netns = File::open(&path).ctx(|| format!("opening {} (is the cluster up?)", path.display()))?;
    let hostname = host.name();
    let mut mounts = Vec::with_capacity(binds.len());
    for b in binds {
        fs::create_dir_all(&b.target).ctx(|| format!("creating mount point {}", b.target.display()))?;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Usage(format!("{} holds a NUL byte", p.display())))
        };
        mounts.push((c(&b.source)?, c(&b.target)?));
    }
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe work is allowed.
    // It makes plain syscalls (setns, unshare, sethostname, mount, setsid) on data moved in before the fork
    // and neither allocates nor takes locks (the paths are C strings already); errors become io::Error from
    // a raw errno, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            setns(&netns, CloneFlags::CLONE_NEWNET)?;
            let ns = if mounts.is_empty() {
                CloneFlags::CLONE_NEWUTS
            } else {
                CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS
            };
            unshare(ns)?;
            sethostname(&hostname)?;
            if !mounts.is_empty() {
                // Private first, so that the binds below never propagate back to the machine's namespace.
                mount(None::<&CStr>, c"/", None::<&CStr>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&CStr>)?;
                for (source, target) in &mounts {
                    mount(Some(source.as_c_str()), target.as_c_str(), None::<&CStr>, MsFlags::MS_BIND, None::<&CStr>)?;
                }
            }
            if new_session {
                setsid()?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `f` on a new thread whose network namespace is `host`'s, so that every socket it opens (and every
/// process it starts) lives there; the rest of the process stays where it is. No process of the host's is
/// left behind by it: [`pids_in`] looks at processes, not threads.
pub(crate) fn thread_in<T: Send + 'static>(
    host: &Host,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>> {
    let path = Path::new("/run/netns").join(host.netns());
    let netns = File::open(&path).ctx(|| format!("opening {} (is the cluster up?)", path.display()))?;
    let (entered, rx) = std::sync::mpsc::sync_channel(1);
    let handle = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Only this thread moves: setns on a thread of a multi-threaded process changes that thread's
            // namespace alone.
            let result = setns(&netns, CloneFlags::CLONE_NEWNET);
            let ok = result.is_ok();
            let _ = entered.send(result);
            if !ok {
                panic!("setns failed");
            }
            f()
        })
        .ctx(|| format!("starting thread {name}"))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(Error::Usage(format!("entering {host}'s network namespace: {e}"))),
        Err(_) => Err(Error::Usage(format!("thread {name} ended before entering {host}"))),
    }
}

/// A long-running process of the test world, recorded in a pidfile.
#[derive(Debug, Clone)]
pub(crate) struct Daemon {
    pub(crate) pidfile: PathBuf,
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// Starts `argv` in `host`'s namespaces as a session leader, output appended to the log, and records it.
    /// The caller does not wait for it: a reaper thread collects its exit status so that a test process that
    /// kills it is not left holding a zombie (a zombie still looks alive to a PID check).
    pub(crate) fn spawn(&self, host: &Host, argv: &[String]) -> Result<u32> {
        self.spawn_with(host, argv, &[])
    }

    /// [`Daemon::spawn`] with directories bound into a mount namespace of the process's own.
    pub(crate) fn spawn_with(&self, host: &Host, argv: &[String], binds: &[Bind]) -> Result<u32> {
        if let Some(dir) = self.log.parent() {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        if let Some(dir) = self.pidfile.parent() {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .ctx(|| format!("opening {}", self.log.display()))?;
        let log2 = log.try_clone().ctx(|| format!("duplicating {}", self.log.display()))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(log).stderr(log2);
        enter_with(&mut cmd, host, true, binds)?;
        let mut child = cmd.spawn().ctx(|| format!("starting {} on {host}", argv[0]))?;
        let pid = child.id();
        let start = start_time(pid).ok_or_else(|| Error::Usage(format!("{} on {host} exited at once", argv[0])))?;
        fs::write(&self.pidfile, format!("{pid} {start}\n")).ctx(|| format!("writing {}", self.pidfile.display()))?;
        thread::spawn(move || child.wait());
        Ok(pid)
    }

    /// The PID of the recorded process if it is still that process and still running.
    pub(crate) fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(&self.pidfile).ok()?;
        let mut it = text.split_whitespace();
        let pid: u32 = it.next()?.parse().ok()?;
        let start: u64 = it.next()?.parse().ok()?;
        (start_time(pid) == Some(start)).then_some(pid)
    }

    /// SIGKILL to the process group at once, like a crash (no SIGTERM first, so nothing can clean up);
    /// returns once it is gone. Idempotent.
    pub(crate) fn kill(&self) {
        if let Some(pid) = self.pid() {
            signal_group(pid, Signal::SIGKILL);
            wait_gone(|| self.pid().is_none(), Duration::from_secs(5));
        }
        let _ = fs::remove_file(&self.pidfile);
    }

    /// SIGTERM to the process group, SIGKILL after `grace`; returns once it is gone. Idempotent.
    pub(crate) fn stop(&self, grace: Duration) {
        if let Some(pid) = self.pid() {
            signal_group(pid, Signal::SIGTERM);
            if !wait_gone(|| self.pid().is_none(), grace) {
                signal_group(pid, Signal::SIGKILL);
                wait_gone(|| self.pid().is_none(), Duration::from_secs(5));
            }
        }
        let _ = fs::remove_file(&self.pidfile);
    }
}

fn signal_group(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // A session leader's process group id is its pid; signal the group so a supervisor and its child go
    // together, and the leader itself in case it changed group.
    let _ = kill(Pid::from_raw(-pid), sig);
    let _ = kill(Pid::from_raw(pid), sig);
}

fn wait_gone(gone: impl Fn() -> bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if gone() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    gone()
}

/// The kernel's start time of a live (not zombie) process, in clock ticks since boot: with the PID it
/// identifies one process for good.
fn start_time(pid: u32) -> Option<u64> {
    let mut stat = String::new();
    File::open(format!("/proc/{pid}/stat")).ok()?.read_to_string(&mut stat).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// Every live process whose network namespace is `host`'s.
pub(crate) fn pids_in(host: &Host) -> Vec<u32> {
    let Ok(ns) = fs::metadata(Path::new("/run/netns").join(host.netns())) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
        })
        .filter(|pid| start_time(*pid).is_some())
        .collect()
}

/// Signals every process in `host`'s network namespace until none is left: SIGTERM first unless `crash`,
/// then SIGKILL for whatever remains after `grace`. Supervisors that respawn a child are caught by looping.
pub(crate) fn kill_all_in(host: &Host, crash: bool, grace: Duration) -> Result<()> {
    if !crash {
        for pid in pids_in(host) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        wait_gone(|| pids_in(host).is_empty(), grace);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_in(host);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Usage(format!("processes {pids:?} in {} survive SIGKILL", host.netns())));
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every live process whose executable lies under `dir`.
pub(crate) fn running_from(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(dir)))
        .filter(|pid| start_time(*pid).is_some())
        .collect()
}
