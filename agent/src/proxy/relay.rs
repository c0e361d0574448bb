//! Copying bytes both ways between a client and its backend.
//!
//! Each direction runs until its source sends FIN, then half-closes its destination (shutdown of the
//! write side) and stops, while the other direction carries on: a client that has sent its request and
//! closed its side still gets the whole answer. An error either way ends both.
//!
//! Zero-copy: on Linux the bytes move socket → pipe → socket with splice(2) and never enter user space.
//! Memory is bounded either way: at most one pipe or one buffer per direction is in flight, and a
//! direction reads again only after it has written everything it read (backpressure). A direction holds
//! its buffer only while data flows: an idle connection — a quiet watch — holds none.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// The largest chunk one read moves.
const CHUNK: usize = 64 * 1024;
/// The pipe size, and so the largest chunk one splice moves.
const PIPE: usize = 1024 * 1024;

/// Last activity of a connection, in milliseconds since `start`, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Starts now.
    pub fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved either way.
    pub fn last(&self) -> Instant {
        self.start + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters of one connection's two directions.
#[derive(Debug)]
pub struct Meters<'a> {
    /// Bytes from the client to the backend.
    pub to_backend: &'a Counter,
    /// Bytes from the backend to the client.
    pub to_client: &'a Counter,
    /// Touched whenever bytes move.
    pub activity: &'a Activity,
}

/// Relays until both directions have ended, or either failed. With `zero_copy`, a direction that moves bulk
/// data (a read fills the whole buffer) switches to splice(2) for the rest of the connection; small
/// request/response traffic stays on plain reads and writes, which cost fewer system calls per message.
pub async fn relay(client: &mut TcpStream, backend: &mut TcpStream, zero_copy: bool, m: Meters<'_>) -> io::Result<()> {
    let (mut client_r, mut client_w) = client.split();
    let (mut backend_r, mut backend_w) = backend.split();
    tokio::try_join!(
        copy_one(&mut client_r, &mut backend_w, zero_copy, m.to_backend, m.activity),
        copy_one(&mut backend_r, &mut client_w, zero_copy, m.to_client, m.activity),
    )?;
    Ok(())
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Bigger than the default 64 KiB: fewer splices per MiB. Pages are taken only while data waits in it.
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE as i32));
        Ok(Self { read, write })
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

async fn splice_rest(from: &TcpStream, to: &TcpStream, bytes: &Counter, act: &Activity) -> io::Result<()> {
    let pipe = Pipe::new()?;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing: readiness is right.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe.write.as_fd(), None, PIPE, flags()).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return half_close(to);
        }
        let mut left = n;
        // The pipe holds `left` bytes, so EAGAIN can only mean the socket is full.
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_fd(), None, to.as_fd(), None, left, flags()).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        bytes.inc_by(n as u64);
        act.touch();
    }
}

// Reads go through tokio's AsyncRead: a short read tells it the socket is drained, so it clears the
// readiness itself and waiting for the next message costs no EAGAIN read. That is also the moment the buffer
// goes back, to a small per-thread pool: 10 000 quiet watches would otherwise hold 2 × 64 KiB each, 1.25 GiB,
// and the allocator, given a 64 KiB block back per message, may hand the heap's top to the kernel each time
// (a measured 10 % of small-request throughput).
async fn copy_one(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    zero_copy: bool,
    bytes: &Counter,
    act: &Activity,
) -> io::Result<()> {
    // A socket tokio has just registered reports itself readable before anything arrived; a buffer taken
    // on that word would wait, held, for the first byte — 64 KiB of address space and a resident page per
    // quiet connection. Peeking waits until a byte or the end is really there (one extra call per connection).
    from.as_ref().peek(&mut [0u8; 1]).await?;
    loop {
        from.as_ref().readable().await?;
        let mut buf = Spare::take();
        loop {
            buf.0.clear();
            let n = from.read_buf(&mut buf.0).await?;
            if n == 0 {
                return half_close(to.as_ref());
            }
            to.write_all(&buf.0).await?;
            bytes.inc_by(n as u64);
            act.touch();
            if n < CHUNK {
                break;
            }
            if zero_copy {
                drop(buf);
                return splice_rest(from.as_ref(), to.as_ref(), bytes, act).await;
            }
        }
    }
}

/// Buffers kept per thread for the next message; beyond this many they go back to the allocator.
const SPARE_MAX: usize = 16;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A relay buffer of [`CHUNK`] bytes from the thread's pool, returned to the pool of whatever thread drops
/// it (also when the relay ends by an error).
struct Spare(Vec<u8>);

#[cfg(test)]
thread_local! {
    /// Buffers taken and not yet dropped on this thread (a test's current-thread runtime runs on one).
    static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

impl Spare {
    fn take() -> Self {
        #[cfg(test)]
        HELD.with(|h| h.set(h.get() + 1));
        Self(SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(CHUNK)))
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        #[cfg(test)]
        HELD.with(|h| h.set(h.get() - 1));
        let buf = std::mem::take(&mut self.0);
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_MAX {
                s.push(buf);
            }
        });
    }
}

fn half_close(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        // The peer is gone already: the other direction will see it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client ⇄ [c_in | relay | b_out] ⇄ server; returns the outer ends.
    async fn relayed(zero_copy: bool) -> (TcpStream, TcpStream, tokio::task::JoinHandle<(io::Result<()>, u64, u64)>) {
        let (client, mut c_in) = pair().await;
        let (mut b_out, server) = pair().await;
        let task = tokio::spawn(async move {
            let (up, down, act) = (Counter::default(), Counter::default(), Activity::new());
            let r =
                relay(&mut c_in, &mut b_out, zero_copy, Meters { to_backend: &up, to_client: &down, activity: &act })
                    .await;
            (r, up.get(), down.get())
        });
        (client, server, task)
    }

    #[tokio::test]
    async fn a_half_closed_client_still_gets_the_whole_answer() {
        for zero_copy in [true, false] {
            let (mut client, mut server, task) = relayed(zero_copy).await;
            client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            client.shutdown().await.unwrap();
            let mut request = Vec::new();
            server.read_to_end(&mut request).await.unwrap();
            assert_eq!(request, b"GET / HTTP/1.0\r\n\r\n", "the server sees the request, then EOF");
            let answer: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            server.write_all(&answer).await.unwrap();
            server.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert!(
                got == answer,
                "zero_copy={zero_copy}: {} of {} bytes, equal={}",
                got.len(),
                answer.len(),
                got == answer
            );
            let (r, up, down) = task.await.unwrap();
            r.unwrap();
            assert_eq!((up, down), (18, 3_000_000));
        }
    }

    #[tokio::test]
    async fn a_quiet_connection_holds_no_buffer() {
        // A fresh socket claims to be readable before a byte came; a buffer taken then would be held until one
        // does — for a quiet watch, for hours.
        let (mut client, mut server, _task) = relayed(false).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(HELD.with(std::cell::Cell::get), 0, "buffers held by a connection nothing was sent on");
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(HELD.with(std::cell::Cell::get), 0, "buffers held after the messages were relayed");
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions() {
        for zero_copy in [true, false] {
            let (client, server, task) = relayed(zero_copy).await;
            socket2::SockRef::from(&server).set_linger(Some(std::time::Duration::ZERO)).unwrap();
            drop(server);
            let (r, _, _) = task.await.unwrap();
            assert!(r.is_err(), "zero_copy={zero_copy}: a reset is an error");
            let mut client = client;
            let mut rest = Vec::new();
            // The relay dropped its end of the client: the client sees EOF or a reset, never a hang.
            let _ = client.read_to_end(&mut rest).await;
        }
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_the_writer() {
        // Backpressure: with the client not reading, the relay must stop reading the server, so the server's
        // writes block once the socket buffers and the one pipe are full — far below what it tries to send.
        let (client, mut server, _task) = relayed(true).await;
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0usize;
        while sent < 256 << 20 {
            match tokio::time::timeout(std::time::Duration::from_millis(300), server.write_all(&chunk)).await {
                Ok(r) => {
                    r.unwrap();
                    sent += chunk.len();
                }
                Err(_) => break,
            }
        }
        assert!(sent < 64 << 20, "the relay buffered without bound: {sent} bytes accepted");
        drop(client);
    }
}
