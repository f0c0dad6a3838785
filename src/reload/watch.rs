//! Seeing a config change without a signal: inotify on the directories that hold the config
//! file and every file it reads, not on the files themselves, because files change in three
//! ways and only the directory sees all of them:
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
//! reload. The inotify descriptor is read by a task on the runtime, not a thread of its own (a
//! one-worker process stays single-threaded, and glibc skips the cancellation bookkeeping of
//! every syscall). Where inotify cannot be had, the files are polled.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Trigger;

/// Without inotify: how often to look.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Symlinks followed at most when resolving one file (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The entries whose changes count (see the module doc).
type Relevant = Arc<RwLock<HashSet<PathBuf>>>;

/// The watched directories, and the entries in them that matter.
pub struct Watch {
    kernel: Option<kernel::Watches>,
    relevant: Relevant,
}

impl Watch {
    /// Starts watching nothing yet; relevant events become `Trigger::Files` on `tx`.
    pub fn start(tx: mpsc::Sender<Trigger>) -> Self {
        let relevant = Relevant::default();
        let kernel = match kernel::Watches::start(tx.clone(), relevant.clone()) {
            Ok(k) => Some(k),
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
        Self { kernel, relevant }
    }

    /// Watches the entries `files` are read through, and no others. Call it again after a
    /// change: symlinks may point elsewhere now.
    pub fn set(&mut self, files: &[PathBuf]) {
        let entries: HashSet<PathBuf> = files.iter().flat_map(|f| resolution(f)).collect();
        let dirs: BTreeSet<PathBuf> = entries.iter().filter_map(|e| e.parent().map(Path::to_path_buf)).collect();
        *self.relevant.write().unwrap_or_else(PoisonError::into_inner) = entries;
        if let Some(kernel) = &mut self.kernel {
            kernel.set(dirs);
        }
    }
}

/// Whether `path` is an entry our files are read through.
fn is_relevant(relevant: &Relevant, path: &Path) -> bool {
    relevant.read().unwrap_or_else(PoisonError::into_inner).contains(path)
}

#[cfg(target_os = "linux")]
mod kernel {
    //! inotify through the `inotify` crate, its descriptor read by a task on the runtime.

    use super::*;
    use futures_util::StreamExt;
    use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

    /// What changes an entry of a directory.
    const MASK: WatchMask = WatchMask::CREATE
        .union(WatchMask::MODIFY)
        .union(WatchMask::CLOSE_WRITE)
        .union(WatchMask::MOVED_TO)
        .union(WatchMask::MOVED_FROM)
        .union(WatchMask::DELETE)
        .union(WatchMask::ATTRIB)
        .union(WatchMask::DELETE_SELF)
        .union(WatchMask::MOVE_SELF);

    type Dirs = Arc<RwLock<HashMap<WatchDescriptor, PathBuf>>>;

    pub struct Watches {
        watches: inotify::Watches,
        by_wd: Dirs,
        by_dir: HashMap<PathBuf, WatchDescriptor>,
    }

    impl Watches {
        pub fn start(tx: mpsc::Sender<Trigger>, relevant: Relevant) -> std::io::Result<Self> {
            let inotify = Inotify::init()?;
            let watches = inotify.watches();
            let events = inotify.into_event_stream([0u8; 4096])?;
            let by_wd = Dirs::default();
            tokio::spawn(read(events, by_wd.clone(), relevant, tx));
            Ok(Self { watches, by_wd, by_dir: HashMap::new() })
        }

        pub fn set(&mut self, wanted: BTreeSet<PathBuf>) {
            let mut by_wd = self.by_wd.write().unwrap_or_else(PoisonError::into_inner);
            self.by_dir.retain(|dir, wd| {
                let keep = wanted.contains(dir);
                if !keep {
                    // Fails when the directory went away and took the watch with it.
                    let _ = self.watches.remove(wd.clone());
                    by_wd.remove(wd);
                }
                keep
            });
            for dir in wanted {
                if self.by_dir.contains_key(&dir) {
                    continue;
                }
                match self.watches.add(&dir, MASK) {
                    Ok(wd) => {
                        by_wd.insert(wd.clone(), dir.clone());
                        self.by_dir.insert(dir, wd);
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a config directory"),
                }
            }
        }
    }

    /// Reads events until the reloader is gone; each relevant one asks it to look again.
    async fn read(mut events: EventStream<[u8; 4096]>, by_wd: Dirs, relevant: Relevant, tx: mpsc::Sender<Trigger>) {
        while let Some(event) = events.next().await {
            let e = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "reading file events failed; no more file-change reloads");
                    return;
                }
            };
            let look = {
                let by_wd = by_wd.read().unwrap_or_else(PoisonError::into_inner);
                // An overflowed queue says nothing of what changed: look, to be safe.
                e.mask.contains(EventMask::Q_OVERFLOW)
                    || match (by_wd.get(&e.wd), &e.name) {
                        (Some(dir), Some(name)) => is_relevant(&relevant, &dir.join(name)),
                        (Some(dir), None) => is_relevant(&relevant, dir),
                        (None, _) => false,
                    }
            };
            // A full queue already holds a look-again.
            if look && tx.try_send(Trigger::Files).is_err() && tx.is_closed() {
                return;
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod kernel {
    //! No inotify: `Watch` polls.

    use super::*;

    pub struct Watches;

    impl Watches {
        pub fn start(_: mpsc::Sender<Trigger>, _: Relevant) -> std::io::Result<Self> {
            Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "inotify is Linux only"))
        }

        pub fn set(&mut self, _: BTreeSet<PathBuf>) {}
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
