//! Seeing a config change without a signal: inotify (through `notify`) on the directories that
//! hold the config file and every file it reads, not on the files themselves, because files
//! change in three ways and only the directory sees all of them:
//! - an in-place edit (the file's own inode is written);
//! - an editor's write-to-temp-and-rename (the watched inode is replaced);
//! - Kubernetes' ConfigMap/Secret update, which swaps the `..data` symlink of the mounted
//!   directory while the file's own path (`tokengate.yaml -> ..data/tokengate.yaml`) never
//!   changes.
//!
//! An event only says "look again": the reloader compares the digest of what is on disk with
//! the last one it tried, so a burst of events, or a change to an unrelated file beside ours,
//! costs a few reads and no reload. Where inotify cannot be had, the directories are polled.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Trigger;

/// Without inotify: how often to look.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The watched directories.
pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
}

impl Watch {
    /// Starts watching nothing yet; events become `Trigger::Files` on `tx`.
    pub fn start(tx: mpsc::Sender<Trigger>) -> Self {
        let events = tx.clone();
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            // A full queue already holds a look-again.
            Ok(_) => {
                let _ = events.try_send(Trigger::Files);
            }
            Err(e) => tracing::debug!(error = %e, "file watch error"),
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, every_s = POLL_EVERY.as_secs(), "cannot watch files; polling them instead");
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(POLL_EVERY);
                    loop {
                        tick.tick().await;
                        if tx.send(Trigger::Files).await.is_err() {
                            return;
                        }
                    }
                });
                None
            }
        };
        Self { watcher, dirs: BTreeSet::new() }
    }

    /// Watches the directories of `files` (and, for symlinks, of what they point to), and no
    /// others.
    pub fn set(&mut self, files: &[PathBuf]) {
        let Some(watcher) = &mut self.watcher else { return };
        let wanted = directories(files);
        for gone in self.dirs.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a config directory");
            }
        }
        self.dirs = wanted;
    }
}

/// The directories whose entries decide what `files` read.
fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for file in files {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        dirs.extend(absolute.parent().map(Path::to_path_buf));
        // A symlink's target may live elsewhere (an edit there changes nothing here).
        if let Ok(real) = std::fs::canonicalize(&absolute) {
            dirs.extend(real.parent().map(Path::to_path_buf));
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_each_directory_once() {
        let dirs = directories(&["/etc/tg/a.yaml".into(), "/etc/tg/b.pem".into(), "/run/secrets/k".into()]);
        assert_eq!(dirs.into_iter().collect::<Vec<_>>(), [PathBuf::from("/etc/tg"), PathBuf::from("/run/secrets")]);
    }
}
