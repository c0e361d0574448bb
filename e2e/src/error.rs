use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, starting, faulting or inspecting the test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper program (`ip`, a build script, kubectl, …) exited unsuccessfully.
    #[error("`{cmd}` failed: {detail}")]
    Command {
        /// The command line, for a person to rerun.
        cmd: String,
        /// Exit status and the tail of its standard error.
        detail: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path involved.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Something did not become true in time.
    #[error("timed out after {after:?} waiting for {what}; logs are in {logs}")]
    Timeout {
        /// The condition that was waited for.
        what: String,
        /// How long it was waited for.
        after: Duration,
        /// Where the component logs are.
        logs: PathBuf,
    },
    /// The Kubernetes API answered with an error or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The generated kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Certificate generation failed.
    #[error("PKI: {0}")]
    Pki(#[from] rcgen::Error),
    /// A TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM file could not be read.
    #[error("PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The caller asked for something the cluster does not have.
    #[error("{0}")]
    Usage(String),
}

/// The result of every fallible operation in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { what: what(), source })
    }
}
