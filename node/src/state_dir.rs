//! What a node keeps in its state dir to come back after a restart (kill -9
//! included) with no new join: its identity, certificates and the managers
//! it last knew. Files are written atomically (temp file, fsync, rename).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    pub raft_id: u64,
    pub hostname: String,
    /// Underlay address other nodes reach this one on.
    pub advertise_addr: String,
    /// Where 2377 listens when this node is a manager.
    pub listen_addr: String,
    pub control_port: u16,
    pub gossip_port: u16,
    /// Control addresses of the managers, last known.
    pub managers: Vec<String>,
}

/// Paths inside the state dir.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// Task directories (the runtime's root).
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }

    pub fn create(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create state dir {}", self.root.display()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict state dir {}", self.root.display()))
    }

    pub fn load(&self) -> anyhow::Result<Option<(NodeState, Certs)>> {
        let path = self.node_file();
        if !path.exists() {
            // A fresh node has none of it; a node whose identity file went (a bad copy, a
            // disk error) must not start afresh beside its own certificates and store.
            if let Some(left) = [self.certs(), self.raft_dir()].iter().find(|p| p.exists()) {
                anyhow::bail!(
                    "damaged state: {} is missing but {} exists; restore it, or remove {} to start this node afresh",
                    path.display(),
                    left.display(),
                    self.root.display()
                );
            }
            return Ok(None);
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let state: NodeState = serde_json::from_str(&text)
            .with_context(|| format!("corrupt node state in {}", path.display()))?;
        let read = |name: &str| {
            let p = self.certs().join(name);
            fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        let certs = Certs {
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        };
        Ok(Some((state, certs)))
    }

    pub fn save_state(&self, state: &NodeState) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(state).context("cannot encode node state")?;
        write_atomic(&self.node_file(), &json, 0o600)
    }

    pub fn save_certs(&self, certs: &Certs) -> anyhow::Result<()> {
        let dir = self.certs();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("ca.pem"), certs.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join("node.key"), certs.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join("node.pem"), certs.cert_pem.as_bytes(), 0o644)
    }

    /// Forgets the cluster: removes the node state, certificates and raft
    /// store, and nothing else (the dir may hold a socket or logs too).
    pub fn wipe(&self) -> anyhow::Result<()> {
        for path in [self.node_file(), self.node_file().with_extension("tmp")] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
                _ => {}
            }
        }
        for dir in [self.certs(), self.raft_dir(), self.tasks_dir()] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", dir.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Holds an exclusive lock on the state dir for the daemon's lifetime.
    pub fn lock(&self) -> anyhow::Result<fs::File> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "state dir {} is in use by another mesh daemon",
                self.root.display()
            )
        })?;
        Ok(file)
    }
}

/// PEM files of a node.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_wipe_keeps_lock() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("s"));
        sd.create().unwrap();
        let _lock = sd.lock().unwrap();
        assert!(
            sd.lock().is_err(),
            "second lock on the same state dir must fail"
        );
        assert!(sd.load().unwrap().is_none());
        let st = NodeState {
            node_id: "n".into(),
            cluster_id: "c".into(),
            raft_id: 3,
            hostname: "h".into(),
            advertise_addr: "10.0.0.1".into(),
            listen_addr: "0.0.0.0:2377".into(),
            control_port: 2377,
            gossip_port: 7946,
            managers: vec!["10.0.0.1:2377".into()],
        };
        sd.save_state(&st).unwrap();
        sd.save_certs(&Certs {
            ca_pem: "a".into(),
            cert_pem: "b".into(),
            key_pem: "c".into(),
        })
        .unwrap();
        let (back, certs) = sd.load().unwrap().unwrap();
        assert_eq!(back, st);
        assert_eq!(certs.key_pem, "c");
        std::fs::write(dir.path().join("s/daemon.log"), "keep me").unwrap();
        sd.wipe().unwrap();
        assert!(sd.load().unwrap().is_none());
        assert!(dir.path().join("s/lock").exists());
        assert!(
            dir.path().join("s/daemon.log").exists(),
            "wipe removed a file it does not own"
        );
    }
}
