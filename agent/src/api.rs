//! The agent's Kubernetes API client. It never goes through the VIP it serves — that would be kube-vip's
//! circular dependency, where the VIP's holder needs the VIP to keep it. It talks to the node-local API
//! server first and falls over to the masters' own addresses (from the member spec), each verified against
//! the cluster CA under one server name that every API server certificate carries (`kubernetes`).
//!
//! Credentials come from the pod's service account, or from `--kubeconfig FILE` outside a pod; the address
//! in a kubeconfig is ignored, only its credentials and CA are used.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

/// How long to wait for a TCP connection to one API server before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The kubeconfig cannot be read or used.
    #[error("--kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Not in a pod and no kubeconfig given.
    #[error("no credentials for the API: outside a pod, pass --kubeconfig FILE (its server address is not used): {0}")]
    NoCredentials(String),
    /// An address that is not an https URL or host:port.
    #[error("API server address {address:?} is not usable: {message} (use https://host:port or host:port)")]
    Address {
        /// The address.
        address: String,
        /// What is wrong.
        message: String,
    },
}

/// The credentials and CA, without an address.
#[derive(Clone)]
pub struct Credentials {
    base: Config,
    server_name: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl Credentials {
    /// From `kubeconfig` when given, else from the pod's service account.
    pub async fn load(kubeconfig: Option<&Path>, server_name: &str) -> Result<Self, ApiError> {
        let base = match kubeconfig {
            Some(path) => {
                let shown = path.display().to_string();
                let bad = |message: String| ApiError::Kubeconfig { path: shown.clone(), message };
                let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| bad(e.to_string()))?
            }
            None => Config::incluster().map_err(|e| ApiError::NoCredentials(e.to_string()))?,
        };
        Ok(Self { base, server_name: server_name.to_string() })
    }

    /// A client for one API server address (`https://host:port` or `host:port`).
    pub fn client(&self, address: &str) -> Result<Client, ApiError> {
        let url = if address.contains("://") { address.to_string() } else { format!("https://{address}") };
        let bad = |message: String| ApiError::Address { address: address.to_string(), message };
        let mut config = self.base.clone();
        config.cluster_url = url.parse::<http::Uri>().map_err(|e| bad(e.to_string()))?;
        config.tls_server_name = Some(self.server_name.clone());
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        kubeha_common::client::client(config).map_err(|e| bad(e.to_string()))
    }
}

/// A set of API servers, tried in order: the node-local one first, then the masters. The one that answered
/// last is used until it fails.
pub struct ApiServers {
    credentials: Credentials,
    local: Vec<String>,
    endpoints: Mutex<Vec<(String, Client)>>,
    current: AtomicUsize,
}

impl std::fmt::Debug for ApiServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServers").field("addresses", &self.addresses()).finish_non_exhaustive()
    }
}

impl ApiServers {
    /// The node-local addresses (`--api-server`), always first.
    pub fn new(credentials: Credentials, local: Vec<String>) -> Result<Self, ApiError> {
        let endpoints =
            local.iter().map(|a| Ok((a.clone(), credentials.client(a)?))).collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Self { credentials, local, endpoints: Mutex::new(endpoints), current: AtomicUsize::new(0) })
    }

    /// The client of the first node-local address: the one writes that need this node's own API server and
    /// its etcd quorum go through (the heartbeat Lease).
    pub fn local(&self) -> Client {
        self.lock()[0].1.clone()
    }

    /// Sets the masters' addresses (host:port of every kube-apiserver) after the node-local ones. Clients of
    /// addresses that stay are kept; a bad address is skipped with a warning.
    pub fn set_masters(&self, masters: &[String]) {
        let mut endpoints = self.lock();
        let mut next: Vec<(String, Client)> = endpoints.iter().take(self.local.len()).cloned().collect();
        for address in masters {
            if next.iter().any(|(a, _)| same_address(a, address)) {
                continue;
            }
            if let Some(kept) = endpoints.iter().find(|(a, _)| a == address) {
                next.push(kept.clone());
                continue;
            }
            match self.credentials.client(address) {
                Ok(c) => next.push((address.clone(), c)),
                Err(e) => tracing::warn!(error = %e, "an API server address from the member spec is skipped"),
            }
        }
        let current = endpoints.get(self.current.load(Ordering::Relaxed)).map(|(a, _)| a.clone());
        let index = current.and_then(|c| next.iter().position(|(a, _)| *a == c)).unwrap_or(0);
        *endpoints = next;
        self.current.store(index, Ordering::Relaxed);
    }

    /// The client to use now, and its address.
    pub fn current(&self) -> (String, Client) {
        let endpoints = self.lock();
        endpoints[self.current.load(Ordering::Relaxed) % endpoints.len()].clone()
    }

    /// Goes back to the node's own API server after a failover moved away from it; whether it moved. Called
    /// when a request through it succeeded again (the heartbeat renews through it every retryPeriod).
    /// Without it a member stayed on another master's API server for good once its own had failed, and when
    /// that master was cut off later, every status write waited out a timeout there first: the member's new
    /// `holdsVIP` reached the others seconds late, and a peer preempted it as if the stale holder still held
    /// the VIP (a full test run of the fencing test).
    pub fn home(&self) -> bool {
        let len = self.lock().len();
        !self.current.swap(0, Ordering::Relaxed).is_multiple_of(len)
    }

    /// Moves on to the next address after `failed` did not answer; returns the new one. A no-op if another
    /// task has moved on already.
    pub fn failed(&self, failed: &str) -> String {
        let endpoints = self.lock();
        let now = self.current.load(Ordering::Relaxed) % endpoints.len();
        if endpoints[now].0 == failed {
            let next = (now + 1) % endpoints.len();
            self.current.store(next, Ordering::Relaxed);
            endpoints[next].0.clone()
        } else {
            endpoints[now].0.clone()
        }
    }

    /// Every address, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.lock().iter().map(|(a, _)| a.clone()).collect()
    }

    /// How many addresses there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Never: there is at least one node-local address.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Client)>> {
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `https://198.51.100.11:6443` and `198.51.100.11:6443` are one server.
fn same_address(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.strip_prefix("https://").unwrap_or(s).trim_end_matches('/').to_string();
    strip(a) == strip(b)
}

/// Whether an error means "this API server is not reachable or not serving" (try another), as opposed to an
/// answer (a conflict, not found, forbidden) that another server would give too.
pub fn is_unreachable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 503 || status.code == 504 || status.code == 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => true,
        _ => false,
    }
}

/// Runs `call` against the current API server, and against each of the others in turn while it fails with
/// an unreachable-server error; gives up after one round with the last error. `timeout` bounds each try.
pub async fn with_failover<T, F, Fut>(servers: &ApiServers, timeout: Duration, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut last = None;
    for _ in 0..servers.len() {
        let (address, client) = servers.current();
        match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !is_unreachable(&e) => return Err(e),
            Ok(Err(e)) => {
                tracing::debug!(api_server = %address, error = %e, "API server unreachable; trying the next");
                last = Some(e);
            }
            Err(_) => {
                tracing::debug!(api_server = %address, "API server did not answer in time; trying the next");
                last = Some(kube::Error::Service(format!("{address} did not answer within {timeout:?}").into()));
            }
        }
        servers.failed(&address);
    }
    Err(last.unwrap_or_else(|| kube::Error::Service("no API server address".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn after_a_failover_the_node_s_own_api_server_is_used_again_once_it_answers() {
        let credentials = Credentials {
            base: Config::new("https://127.0.0.1:6443".parse().unwrap()),
            server_name: "kubernetes".into(),
        };
        let servers = ApiServers::new(credentials, vec!["https://127.0.0.1:6443".into()]).unwrap();
        servers.set_masters(&["198.51.100.12:6443".into(), "198.51.100.13:6443".into()]);
        assert!(!servers.home(), "already home");
        assert_eq!(servers.failed("https://127.0.0.1:6443"), "198.51.100.12:6443");
        assert_eq!(servers.current().0, "198.51.100.12:6443", "stays on the other master while nothing says more");
        assert!(servers.home());
        assert_eq!(servers.current().0, "https://127.0.0.1:6443");
    }

    #[test]
    fn addresses_with_and_without_a_scheme_are_one_server() {
        assert!(same_address("https://198.51.100.11:6443", "198.51.100.11:6443"));
        assert!(!same_address("198.51.100.11:6443", "198.51.100.12:6443"));
    }
}
