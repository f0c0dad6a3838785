//! Seeing a config change without a signal: inotify (through `notify`) on the directories that
//! hold the config file and every file it reads, not on the files themselves, because files
//! change in three ways and only the directory sees all of them:
//! - an in-place edit (the file's own inode is written);
//! - an editor's write-to-temp-and-rename (the watched inode is replaced);
//! - Kubernetes' ConfigMap/Secret update, which swaps the `..data` symlink of the mounted
//!   directory while the file's own path (`tokengate.yaml -> ..data/tokengate.yaml`) never
//!   changes.
//!
//! Only events on an entry a watched file is read through count: the file, and each symlink on
//! the way to its content (`tokengate.yaml`, `..data`); a busy log file beside the config does
//! not hold the reload back. An event only says "look again": the reloader compares the digest
//! of what is on disk with the last one it tried, so a burst of events costs a few reads and no
//! reload. Where inotify cannot be had, the files are polled.

use std::collections::{BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Trigger;

/// Without inotify: how often to look.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Symlinks followed at most when resolving one file (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The watched directories, and the entries in them that matter.
pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    relevant: Arc<RwLock<HashSet<PathBuf>>>,
}

impl Watch {
    /// Starts watching nothing yet; events become `Trigger::Files` on `tx`.
    pub fn start(tx: mpsc::Sender<Trigger>) -> Self {
        let events = tx.clone();
        let relevant: Arc<RwLock<HashSet<PathBuf>>> = Arc::default();
        let ours = relevant.clone();
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(e) => {
                let ours = ours.read().unwrap_or_else(PoisonError::into_inner);
                // An overflowed queue names no path: look, to be safe.
                if e.paths.is_empty() || e.paths.iter().any(|p| ours.contains(p)) {
                    // A full queue already holds a look-again.
                    let _ = events.try_send(Trigger::Files);
                }
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
        Self { watcher, dirs: BTreeSet::new(), relevant }
    }

    /// Watches the entries `files` are read through, and no others. Call it again after a
    /// change: symlinks may point elsewhere now.
    pub fn set(&mut self, files: &[PathBuf]) {
        let Some(watcher) = &mut self.watcher else { return };
        let entries: HashSet<PathBuf> = files.iter().flat_map(|f| resolution(f)).collect();
        let wanted: BTreeSet<PathBuf> = entries.iter().filter_map(|e| e.parent().map(Path::to_path_buf)).collect();
        *self.relevant.write().unwrap_or_else(PoisonError::into_inner) = entries;
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

/// One step of a path being resolved.
enum Step {
    Root,
    Up,
    Name(std::ffi::OsString),
}

/// The steps of `path`, last first (a stack).
fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir | Component::Prefix(_) => Some(Step::Root),
            Component::ParentDir => Some(Step::Up),
            Component::CurDir => None,
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
}

/// Every entry the kernel goes through to open `file`: the path itself, each symlink met on
/// the way, and where the last one leads (absolute, lexically normalised).
fn resolution(file: &Path) -> Vec<PathBuf> {
    let start = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let mut pending: Vec<Step> = steps(&start).collect();
    let (mut current, mut met, mut links) = (PathBuf::new(), vec![start.clone()], 0);
    while let Some(step) = pending.pop() {
        match step {
            Step::Root => current = PathBuf::from("/"),
            Step::Up => {
                current.pop();
            }
            Step::Name(name) => current.push(name),
        }
        let Ok(target) = std::fs::read_link(&current) else { continue };
        links += 1;
        if links > MAX_LINKS {
            break;
        }
        met.push(current.clone());
        current.pop();
        // The link's own path comes next, before the rest of the path.
        pending.extend(steps(&target));
    }
    met.push(current);
    met.dedup();
    met
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_kubernetes_mount_to_its_content() {
        use std::os::unix::fs::symlink;
        let mount = std::env::temp_dir().join(format!("tg-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mount);
        std::fs::create_dir_all(mount.join("..2026_01")).unwrap();
        std::fs::write(mount.join("..2026_01/c.yaml"), "x").unwrap();
        symlink("..2026_01", mount.join("..data")).unwrap();
        symlink("..data/c.yaml", mount.join("c.yaml")).unwrap();
        let met = resolution(&mount.join("c.yaml"));
        std::fs::remove_dir_all(&mount).unwrap();
        assert_eq!(met, [mount.join("c.yaml"), mount.join("..data"), mount.join("..2026_01/c.yaml")]);
    }

    #[test]
    fn a_plain_file_is_itself() {
        assert_eq!(resolution(Path::new("/nonexistent/tg/a.yaml")), [PathBuf::from("/nonexistent/tg/a.yaml")]);
    }
}
