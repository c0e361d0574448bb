//! Test helpers shared by the crates' unit tests (feature `testing`; never in a shipped binary).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A loopback server standing in for an API server: `serve` handles each connection, and the count of
/// connections still open is kept for the test to read.
#[derive(Debug)]
pub struct CountingServer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CountingServer {
    /// Listens on an ephemeral loopback port; a connection counts as open until `serve` returns.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (counted, served) = (counted.clone(), serve(socket));
                tokio::spawn(async move {
                    served.await;
                    counted.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { port, open, task }
    }

    /// An API server that takes each request and never answers; a connection stays open until the client
    /// closes it.
    pub async fn silent() -> Self {
        Self::start(|mut socket| async move {
            let mut buf = vec![0u8; 4096];
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits up to 5 s for `ready(open connections)`; true if it came.
    pub async fn wait_for(&self, ready: impl Fn(usize) -> bool) -> bool {
        for _ in 0..250 {
            if ready(self.open()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
