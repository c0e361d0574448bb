//! Relaying in the kernel: a BPF sockmap joins a client's socket to its backend's, and a small verdict
//! program hands every segment that arrives on one straight to the other's send queue. The bytes never
//! reach the agent: no wake-up, no read, no write per message. The agent still owns both sockets: it
//! accepts, picks and connects as before, sees the end of each direction (FIN and resets still wake it),
//! and closes both when the backend turns unhealthy.
//!
//! The program (hand-assembled below, 21 instructions) looks up the arriving socket's cookie in `peers`,
//! whose value is the peer's cookie and a byte counter; redirects to the peer's socket in `socks`; and
//! counts the bytes of each redirected segment. A segment whose peer is not in the map (the connection is
//! being torn down) is passed up to the agent instead of dropped, so no byte is ever lost silently.
//!
//! Order matters in three places, each handled where it happens:
//! - linking: the backend socket goes into the map before the client's, because the client may already
//!   have sent its first bytes (the backend, for TLS, speaks only when spoken to); bytes already queued
//!   on a socket when it joins are pushed through by raising its receive low-water mark, which makes
//!   the kernel run the verdict over the queue;
//! - half-close: a FIN overtakes bytes still waiting in the kernel's redirect queue, so the agent shuts the
//!   peer's write side only once the peer's socket has taken every byte the program counted;
//! - unlinking: the sockets leave the maps when the relay ends, before they are closed.
//!
//! An experiment, off unless KUBEHA_PROXY_KERNEL_RELAY=1: docs/adr/0006-no-kernel-relay.md says what it
//! measured and why it was not kept.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

/// `BPF_MAP_TYPE_HASH`.
const MAP_HASH: u32 = 1;
/// `BPF_MAP_TYPE_SOCKHASH`.
const MAP_SOCKHASH: u32 = 18;
/// `BPF_PROG_TYPE_SK_SKB`.
const PROG_SK_SKB: u32 = 14;
/// `BPF_SK_SKB_VERDICT`: the verdict runs on each segment as it arrives, with no stream parser.
const ATTACH_SK_SKB_VERDICT: u32 = 38;
const CMD_MAP_CREATE: libc::c_long = 0;
const CMD_MAP_LOOKUP: libc::c_long = 1;
const CMD_MAP_UPDATE: libc::c_long = 2;
const CMD_MAP_DELETE: libc::c_long = 3;
const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_PROG_ATTACH: libc::c_long = 8;
/// `BPF_NOEXIST`: an update that must create the entry.
const NOEXIST: u64 = 1;

/// One entry of `peers`: where a socket's bytes go, and how many went.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Peer {
    cookie: u64,
    bytes: u64,
}

/// The maps and the attached verdict program, shared by every connection of one proxy.
#[derive(Debug)]
pub(super) struct KernelRelay {
    peers: OwnedFd,
    socks: OwnedFd,
    // Held so the program stays loaded; the attachment keeps it too, this makes the ownership plain.
    _prog: OwnedFd,
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// The verdict program for maps `peers` and `socks`.
fn program(peers: RawFd, socks: RawFd) -> Vec<Insn> {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const ADD64_IMM: u8 = 0x07;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const STX_DW: u8 = 0x7b;
    const LDX_W: u8 = 0x61;
    const LD_IMM64: u8 = 0x18;
    const JEQ_IMM: u8 = 0x15;
    const JNE_IMM: u8 = 0x55;
    const ATOMIC_DW: u8 = 0xdb;
    const PSEUDO_MAP_FD: u8 = 1;
    const GET_SOCKET_COOKIE: i32 = 46;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const SK_REDIRECT_HASH: i32 = 72;
    const SK_PASS: i32 = 1;
    let map = |reg: u8, fd: RawFd| [insn(LD_IMM64, reg, PSEUDO_MAP_FD, 0, fd), insn(0, 0, 0, 0, 0)];
    let mut p = vec![
        insn(MOV64_REG, 6, 1, 0, 0),            // r6 = skb
        insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE), // r0 = cookie of the socket it arrived on
        insn(STX_DW, 10, 0, -8, 0),             // stack[-8] = r0
    ];
    p.extend(map(1, peers)); // r1 = peers
    p.extend([
        insn(MOV64_REG, 2, 10, 0, 0),         // r2 = &stack[-8]
        insn(ADD64_IMM, 2, 0, 0, -8),         //
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM), // r0 = &peers[cookie]
        insn(JEQ_IMM, 0, 0, 10, 0),           // not linked: pass up
        insn(MOV64_REG, 7, 0, 0, 0),          // r7 = &Peer
        insn(MOV64_REG, 1, 6, 0, 0),          // r1 = skb
    ]);
    p.extend(map(2, socks)); // r2 = socks
    p.extend([
        insn(MOV64_REG, 3, 7, 0, 0),           // r3 = &Peer.cookie, the key
        insn(MOV64_IMM, 4, 0, 0, 0),           // r4 = 0: to the peer's send queue
        insn(CALL, 0, 0, 0, SK_REDIRECT_HASH), //
        insn(JNE_IMM, 0, 0, 2, SK_PASS),       // the peer has left the map: pass up
        insn(LDX_W, 1, 6, 0, 0),               // r1 = skb->len
        insn(ATOMIC_DW, 7, 1, 8, 0),           // Peer.bytes += r1, atomically
        insn(MOV64_IMM, 0, 0, 0, SK_PASS),     // pass, or the redirect set above
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<libc::c_long> {
    let size = std::mem::size_of_val(attr);
    // SAFETY: `attr` is a live, writable buffer of `size` bytes laid out as the `union bpf_attr` member
    // that `cmd` reads (callers fill the fields at their documented offsets); the kernel copies at most
    // `size` bytes in and, for the commands used here, writes nothing back into it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: `r` is a file descriptor the bpf(2) call just created and nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn map_create(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut a = [0u64; 6];
    a[0] = u64::from(kind) | (u64::from(key) << 32);
    a[1] = u64::from(value) | (u64::from(entries) << 32);
    bpf(CMD_MAP_CREATE, &mut a).map(fd_from)
}

fn elem_attr(map: &OwnedFd, key: *const u8, value: *const u8, flags: u64) -> [u64; 4] {
    [map.as_raw_fd() as u32 as u64, key as u64, value as u64, flags]
}

/// The socket's cookie: the kernel's unique, never reused id for it, and the program's key.
fn cookie(s: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    let mut v = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes one u64 into `v`, whose size `len` gives.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&raw mut v).cast(), &raw mut len)
    };
    if r == 0 { Ok(v) } else { Err(io::Error::last_os_error()) }
}

/// Sets SO_RCVLOWAT to 1 byte, which runs the socket's data-ready hook if bytes are queued.
fn kick(s: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: SO_RCVLOWAT reads one int from the pointer, which points at `one`.
    let r = unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl KernelRelay {
    /// Creates the maps for up to `connections` relayed connections and loads and attaches the program.
    /// Fails where the kernel has no sockmap support or the agent lacks CAP_BPF (or root).
    pub(super) fn new(connections: u32) -> io::Result<Self> {
        let entries = connections.saturating_mul(2).max(2);
        let peers = map_create(MAP_HASH, 8, std::mem::size_of::<Peer>() as u32, entries)?;
        let socks = map_create(MAP_SOCKHASH, 8, 8, entries)?;
        let insns = program(peers.as_raw_fd(), socks.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut a = [0u64; 6];
        a[0] = u64::from(PROG_SK_SKB) | ((insns.len() as u64) << 32);
        a[1] = insns.as_ptr() as u64;
        a[2] = license.as_ptr() as u64;
        a[3] = 1 | ((log.len() as u64) << 32); // log level 1, log size
        a[4] = log.as_mut_ptr() as u64;
        let prog = match bpf(CMD_PROG_LOAD, &mut a) {
            Ok(fd) => fd_from(fd),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let log = String::from_utf8_lossy(&log[..end]);
                return Err(io::Error::new(e.kind(), format!("loading the relay program: {e}: {log}")));
            }
        };
        let mut a = [0u64; 2];
        a[0] = u64::from(socks.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32);
        a[1] = u64::from(ATTACH_SK_SKB_VERDICT);
        bpf(CMD_PROG_ATTACH, &mut a)?;
        Ok(Self { peers, socks, _prog: prog })
    }

    fn put_peer(&self, from: u64, to: u64) -> io::Result<()> {
        let v = Peer { cookie: to, bytes: 0 };
        let mut a = elem_attr(&self.peers, (&raw const from).cast(), (&raw const v).cast(), NOEXIST);
        bpf(CMD_MAP_UPDATE, &mut a).map(drop)
    }

    fn put_sock(&self, key: u64, s: &impl std::os::fd::AsRawFd) -> io::Result<()> {
        let fd = u64::from(s.as_raw_fd() as u32);
        let mut a = elem_attr(&self.socks, (&raw const key).cast(), (&raw const fd).cast(), NOEXIST);
        bpf(CMD_MAP_UPDATE, &mut a).map(drop)
    }

    fn delete(map: &OwnedFd, key: u64) {
        let mut a = elem_attr(map, (&raw const key).cast(), std::ptr::null(), 0);
        let _ = bpf(CMD_MAP_DELETE, &mut a);
    }

    /// Bytes redirected so far from the socket with cookie `from`.
    fn bytes(&self, from: u64) -> u64 {
        let mut v = Peer::default();
        let mut a = elem_attr(&self.peers, (&raw const from).cast(), (&raw mut v).cast(), 0);
        match bpf(CMD_MAP_LOOKUP, &mut a) {
            Ok(_) => v.bytes,
            Err(_) => 0,
        }
    }

    /// Joins `client` and `backend`: from now on the kernel moves their bytes. Unlinks on drop.
    pub(super) fn link<'a>(
        &'a self,
        client: &impl std::os::fd::AsRawFd,
        backend: &impl std::os::fd::AsRawFd,
    ) -> io::Result<Link<'a>> {
        let (c, b) = (cookie(client)?, cookie(backend)?);
        let link = Link { relay: self, client: c, backend: b };
        self.put_peer(c, b)?;
        self.put_peer(b, c)?;
        self.put_sock(b, backend)?;
        self.put_sock(c, client)?;
        // Bytes that came before the socket joined sit in its receive queue until the next segment runs the
        // verdict; setting the low-water mark re-runs it now (tcp_set_rcvlowat calls the data-ready hook).
        kick(client.as_raw_fd())?;
        kick(backend.as_raw_fd())?;
        Ok(link)
    }
}

/// A client and backend joined in the kernel.
#[derive(Debug)]
pub(super) struct Link<'a> {
    relay: &'a KernelRelay,
    client: u64,
    backend: u64,
}

impl Link<'_> {
    /// Bytes moved from the client to the backend so far.
    pub(super) fn to_backend(&self) -> u64 {
        self.relay.bytes(self.client)
    }

    /// Bytes moved from the backend to the client so far.
    pub(super) fn to_client(&self) -> u64 {
        self.relay.bytes(self.backend)
    }
}

impl Drop for Link<'_> {
    fn drop(&mut self) {
        // Peers first: a segment arriving in between is passed up, not redirected to a closing socket.
        for k in [self.client, self.backend] {
            KernelRelay::delete(&self.relay.peers, k);
        }
        for k in [self.client, self.backend] {
            KernelRelay::delete(&self.relay.socks, k);
        }
    }
}

/// Bytes a TCP socket has taken from its writers so far: acknowledged plus still queued. Read in this order
/// the sum never runs ahead of the truth.
pub(super) fn taken(s: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes and `len` is passed by pointer as getsockopt
    // requires; the kernel writes at most `len` bytes of its `struct tcp_info` into it.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &raw mut len)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < 128 {
        return Err(io::Error::other("the kernel's tcp_info has no tcpi_bytes_acked"));
    }
    let acked = u64::from_ne_bytes(info[120..128].try_into().expect("eight bytes"));
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `queued`.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked + queued.max(0) as u64)
}
