//! The last-known-good store: every member spec the agent applies is written here atomically (temporary
//! file, fsync, rename, fsync of the directory), so that an agent that starts while no API server answers —
//! a node reboot during a control-plane outage — runs what it ran before instead of nothing.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use kubeha_crds::HighAvailabilityMemberSpec;
use serde::{Deserialize, Serialize};

/// One saved member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    /// The member's name.
    pub name: String,
    /// Its cluster (the kubeha.io/cluster label).
    pub cluster: String,
    /// The metadata.generation of the spec.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: HighAvailabilityMemberSpec,
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a file.
    #[error("state directory {path}: {source} (check the agent's hostPath volume and that it runs as root)")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The directory `<state dir>/members`, one JSON file per member.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (and creates) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("members");
        std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
        Ok(Self { dir })
    }

    /// The store under `state_dir` for reading only (the proxy container, which runs without privilege and
    /// with the directory mounted read-only): nothing is created, and a store that does not exist yet is
    /// empty.
    pub fn read_only(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("members") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Saves `member`, replacing what was saved for it, atomically: a crash leaves the old file or the new.
    pub fn save(&self, member: &Saved) -> Result<(), StateError> {
        let path = self.path(&member.name);
        let tmp = self.dir.join(format!(".{}.tmp", member.name));
        let body = serde_json::to_vec_pretty(member).map_err(|e| io(&tmp, e.into()))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| io(&path, source))
    }

    /// Forgets a member (deleted from the cluster).
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Every saved member of `node`. A file that cannot be read is skipped with a warning, not fatal: one
    /// damaged file must not keep the others from running.
    pub fn load(&self, node: &str) -> Result<Vec<Saved>, StateError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            entries => entries.map_err(|source| io(&self.dir, source))?,
        };
        for entry in entries {
            let path = entry.map_err(|source| io(&self.dir, source))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Saved>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(s) if s.spec.node_name == node => out.push(s),
                Ok(s) => tracing::warn!(file = %path.display(), node = %s.spec.node_name,
                    "a saved member of another node is ignored"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "a saved member cannot be read; ignored"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn io(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io { path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(name: &str, node: &str) -> Saved {
        let spec =
            crate::config::parse(&format!("nodeName: {node}\nvip: 198.51.100.10/24\nvrid: 51\ninterface: eth0\n"))
                .unwrap();
        Saved { name: name.into(), cluster: "c".into(), generation: Some(3), spec }
    }

    #[test]
    fn saved_members_come_back_and_removed_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("kubeha-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.save(&saved("c-n1", "n1")).unwrap();
        store.save(&saved("d-n1", "n1")).unwrap();
        store.save(&saved("c-n2", "n2")).unwrap();
        let mut newer = saved("c-n1", "n1");
        newer.generation = Some(4);
        store.save(&newer).unwrap();
        std::fs::write(dir.join("members/broken.json"), b"{not json").unwrap();
        let loaded = store.load("n1").unwrap();
        assert_eq!(loaded, vec![newer, saved("d-n1", "n1")], "the newest save wins; other nodes and junk are skipped");
        store.remove("d-n1").unwrap();
        store.remove("never-saved").unwrap();
        assert_eq!(store.load("n1").unwrap().len(), 1);
        assert!(
            std::fs::read_dir(dir.join("members")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
        assert_eq!(Store::read_only(&dir).load("n1").unwrap().len(), 1, "what the other container saved");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Store::read_only(&dir).load("n1").unwrap().is_empty(), "no store yet: nothing saved");
        assert!(!dir.exists(), "reading creates nothing");
    }
}
