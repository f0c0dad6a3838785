//! PKCS#11 modules: each loaded and initialized once per process (`C_Initialize` may not be
//! called twice), kept across reloads in `Stores`. A module whose state broke (the token went
//! away: SoftHSM answers `CKR_GENERAL_ERROR` until it is initialized again) is restarted —
//! `C_Finalize` then `C_Initialize` — under a lock no other call holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

/// A module may be restarted at most this often, whoever asks.
const RESTART_EVERY: Duration = Duration::from_secs(2);
/// How long `close` waits for the calls running at exit.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Every module this process loaded, by path. Process-wide, as the modules' own state is: one
/// `C_Initialize` per process, whatever number of configs (or in-process apps) use it.
#[derive(Default)]
pub struct Modules {
    loaded: Mutex<HashMap<PathBuf, Arc<Module>>>,
}

static PROCESS: std::sync::OnceLock<Modules> = std::sync::OnceLock::new();

impl Modules {
    /// This process's modules.
    pub fn process() -> &'static Modules {
        PROCESS.get_or_init(Modules::default)
    }

    /// The module at `path`, loaded and initialized on first use.
    pub fn get(&self, path: &Path) -> Result<Arc<Module>, String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = loaded.get(path) {
            return Ok(module.clone());
        }
        let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        initialize(&ctx).map_err(|e| format!("{} does not initialize: {}", path.display(), describe(&e)))?;
        let module = Arc::new(Module {
            ctx,
            closed: RwLock::new(false),
            epoch: AtomicU64::new(0),
            restarted: Mutex::new(Instant::now()),
        });
        loaded.insert(path.to_owned(), module.clone());
        Ok(module)
    }

    /// Finalizes every module once no call is running; later calls find them closed. The last
    /// thing the process does (`main`): a module's own teardown at exit must not run beside a
    /// signer thread's call.
    ///
    /// A call that does not return (a network HSM gone silent) must not keep the process from
    /// exiting: after `CLOSE_WAIT` the module is left as it is.
    pub fn close(&self) {
        for (path, module) in self.loaded.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let deadline = Instant::now() + CLOSE_WAIT;
            let mut closed = loop {
                match module.closed.try_write() {
                    Ok(guard) => break Some(guard),
                    Err(std::sync::TryLockError::Poisoned(e)) => break Some(e.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(std::sync::TryLockError::WouldBlock) => break None,
                }
            };
            match closed.as_deref_mut() {
                Some(closed) if !*closed => {
                    *closed = true;
                    let _ = module.ctx.clone().finalize();
                }
                Some(_) => {}
                None => {
                    tracing::warn!(module = %path.display(), "a PKCS#11 call did not return: exiting without C_Finalize")
                }
            }
        }
    }
}

/// One initialized PKCS#11 module.
pub struct Module {
    pub ctx: Pkcs11,
    /// Held (shared) by every call into the module; held alone by a restart and by `close`,
    /// which sets it.
    closed: RwLock<bool>,
    /// Incremented by each restart: sessions opened before it are gone.
    epoch: AtomicU64,
    restarted: Mutex<Instant>,
}

impl Module {
    /// Held across each call into the module, so that a restart never runs beside one; None
    /// once the module is closed.
    pub fn call(&self) -> Option<RwLockReadGuard<'_, bool>> {
        Some(self.closed.read().unwrap_or_else(PoisonError::into_inner)).filter(|closed| !**closed)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Finalizes and initializes the module again, unless it was restarted since `seen` or
    /// less than `RESTART_EVERY` ago. Every session of every key on it is gone after this.
    pub fn restart(&self, seen: u64) {
        let mut last = self.restarted.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch() != seen || last.elapsed() < RESTART_EVERY {
            return;
        }
        let closed = self.closed.write().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return;
        }
        // C_Finalize failing means the module was not initialized: initializing is all we want.
        let _ = self.ctx.clone().finalize();
        if let Err(e) = initialize(&self.ctx) {
            tracing::warn!(error = %describe(&e), "the PKCS#11 module does not initialize again");
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *last = Instant::now();
    }
}

fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        other => other,
    }
}

/// A PKCS#11 error in a few words: the `CKR_` name's CamelCase and the function, never the
/// module's long prose (and never a PIN, which no error carries).
pub fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

#[cfg(all(test, feature = "services"))]
mod tests {
    use super::*;

    /// Debian's SoftHSM2 (`.ci/run` installs it): a module that loads and initializes without
    /// any token.
    const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

    #[test]
    fn close_never_waits_for_a_call_that_does_not_return_and_closes_once_it_did() {
        let modules = Modules::default();
        let module = modules.get(Path::new(SOFTHSM)).expect("softhsm2 loads");
        let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let busy = module.clone();
        let caller = std::thread::spawn(move || {
            let _call = busy.call().expect("open");
            held.0.send(()).unwrap();
            release.1.recv().unwrap();
        });
        held.1.recv().unwrap();
        let started = Instant::now();
        modules.close();
        assert!(started.elapsed() < CLOSE_WAIT + Duration::from_secs(5), "close waited on the stuck call");
        assert!(module.call().is_some(), "left open while a call ran");
        release.0.send(()).unwrap();
        caller.join().unwrap();
        modules.close();
        assert!(module.call().is_none(), "closed once no call ran: later calls find it closed");
    }
}
