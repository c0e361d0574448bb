//! Kubernetes API clients whose connections notice when the API server's host is gone.
//!
//! kube's default client opens plain TCP connections with no keepalive and no read timeout. When a master
//! loses power or its link, nothing tells the client: an idle watch on that API server waits for events
//! that never come until kube-runtime's idle timeout (the watch timeout, 290 s, plus a margin), and pooled
//! connections wait to fail the next request sent on them. For an operator whose job is to react to a
//! master going away, five blind minutes are too many. Here the kernel probes an idle connection after
//! [`KEEPALIVE_IDLE`] and gives up after [`KEEPALIVE_RETRIES`] unanswered probes [`KEEPALIVE_INTERVAL`]
//! apart: a dead peer is noticed within about 20 s, the watch errors out and the watcher starts again on
//! another API server. client-go does the same (its dialer's 30 s keepalive, HTTP/2 pings on top).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt as _;
use kube::client::retry::RetryPolicy;
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// How long a connection may be silent before the kernel sends the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between keepalive probes that go unanswered.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// Unanswered probes after which the kernel closes the connection.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// How long a pooled connection may sit unused before the client closes it.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Unused connections the client keeps per API server address; more are closed as they come back.
pub const POOL_MAX_IDLE: usize = 4;

/// A client for `config` built the way kube builds its default one (base URI, retries of 429/503/504 when
/// `config.default_retry`, authentication, extra headers, TLS with rustls), except that its TCP connections
/// carry keepalive probes (see the module docs) and disable Nagle's algorithm, and its pool keeps at most
/// [`POOL_MAX_IDLE`] unused connections for at most [`POOL_IDLE_TIMEOUT`].
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    let https = config.rustls_https_connector_with_connector(http)?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                // Without a timer hyper never closes an idle pooled connection, and with no cap it keeps every
                // one it ever opened: each request that waits on a stalled API server (etcd without quorum)
                // opens another, and once they all return the pool holds them for good (the unit test below:
                // 12 of 12). client-go closes idle ones after 90 s.
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(POOL_MAX_IDLE)
                .build(https),
        );
    Ok(kube::Client::new(service, config.default_namespace))
}

/// [`client`] for the configuration kube infers: `KUBECONFIG` or `~/.kube/config`, else the pod's service
/// account.
pub async fn infer() -> Result<kube::Client, kube::Error> {
    client(kube::Config::infer().await.map_err(kube::Error::InferConfig)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// The kernel state of the client's end of a connection to `server_port` on loopback: the timer column
    /// of /proc/net/tcp (`02:…` is the keepalive timer, its value in hundredths of a second).
    fn client_timer(server_port: u16) -> Option<String> {
        let table = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
        let remote = format!("0100007F:{server_port:04X}");
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(2) == Some(&remote.as_str()) && f.get(3) == Some(&"01")).then(|| f[5].to_string())
        })
    }

    #[tokio::test]
    async fn an_idle_connection_to_the_api_server_is_probed_by_keepalive() {
        // An API server that accepts the request and never answers: the connection sits idle.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = super::client(config).unwrap();
        let request = tokio::spawn(async move { client.apiserver_version().await });

        let mut timer = None;
        for _ in 0..100 {
            timer = client_timer(port);
            if timer.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let timer = timer.expect("the client's connection in /proc/self/net/tcp");
        let (kind, when) = timer.split_once(':').unwrap();
        assert_eq!(kind, "02", "keepalive timer armed on the idle connection: {timer}");
        let when = u64::from_str_radix(when, 16).unwrap();
        assert!(when <= super::KEEPALIVE_IDLE.as_millis() as u64 / 10, "first probe within the idle time: {timer}");
        request.abort();
        server.abort();
    }

    #[tokio::test]
    async fn connections_opened_for_a_burst_are_not_all_kept() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // An API server that holds each request 300 ms (a stalled etcd), answers /version and keeps the
        // connection open as long as the client does.
        let server = crate::testing::CountingServer::start(|mut socket| async move {
            let mut buf = vec![0u8; 4096];
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let body = r#"{"major":"1","minor":"34","gitVersion":"v1.34.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                if socket.write_all(head.as_bytes()).await.is_err() || socket.write_all(body.as_bytes()).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let port = server.port;
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = super::client(config).unwrap();
        let burst: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn({
                    let client = client.clone();
                    async move { client.apiserver_version().await }
                })
            })
            .collect();
        for r in burst {
            r.await.unwrap().expect("/version through the pool");
        }
        assert_eq!(server.open(), 12, "the burst needed a connection per waiting request");
        // Back in the pool, the connections beyond the cap are closed.
        let kept = server.wait_for(|n| n <= super::POOL_MAX_IDLE).await;
        assert!(kept, "{} connections kept after the burst, cap {}", server.open(), super::POOL_MAX_IDLE);
        // And still usable.
        client.apiserver_version().await.expect("/version after the burst");
    }
}
