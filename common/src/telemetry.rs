//! Logs, metrics and health probes, set up the same way in both binaries.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("log format '{other}' is not json or text")),
        }
    }
}

/// Installs the global tracing subscriber: level from `RUST_LOG` (default `info`), to stderr.
pub fn init_logging(format: LogFormat) {
    // kube's client logs every failed request at ERROR; the callers log what matters once, with context.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube_client::client::builder=off"));
    use std::io::IsTerminal as _;
    // Colour only for a person at a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A registry that can gain metrics while it is served (the agent adds a set per member it runs).
pub type SharedRegistry = Arc<std::sync::RwLock<Registry>>;

/// Wraps a registry for [`serve_probes`].
pub fn shared(registry: Registry) -> SharedRegistry {
    Arc::new(std::sync::RwLock::new(registry))
}

#[derive(Clone)]
struct Probes {
    registry: SharedRegistry,
    ready: watch::Receiver<bool>,
}

/// Serves `/metrics` (Prometheus text format), `/healthz` (200 while the process serves) and `/readyz` (200
/// while `ready` is true, 503 otherwise) on `listener` until `shutdown` resolves.
pub async fn serve_probes(
    listener: tokio::net::TcpListener,
    registry: SharedRegistry,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Probes { registry, ready };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds the probe listener, naming the address in the error (a port in use is a common mistake).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} for metrics and probes: {e}")))?;
    // The bound address: with port 0 the kernel picked one, and this line is how to find it.
    let listen = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
    tracing::info!(%listen, "metrics and probes listening");
    Ok(listener)
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let registry = p.registry.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if *p.ready.borrow() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}
