//! A shelf of values that must outlive the compiled config: limit counters, caches, connection
//! pools. A config build *takes* what it needs by key, the key being the value's name and every
//! setting that shapes it: the value already on the shelf under that key, or a new one. Once the
//! new config is in service, `commit` leaves on the shelf exactly what that build took, so what
//! changed starts fresh, what disappeared is dropped (when the last request holding it ends),
//! and a build that fails changes nothing.
//!
//! ```
//! use tokengate::shelf::Shelf;
//! let shelf: Shelf<&str, u32> = Shelf::default();
//! assert_eq!(shelf.take("a", || 1), 1);
//! shelf.commit();
//! assert_eq!(shelf.take("a", || 2), 1, "the same key keeps its value");
//! shelf.commit();
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Long-lived values by key. `V` is a cheap handle (an `Arc`, a moka cache, a pool).
pub struct Shelf<K, V> {
    slots: Mutex<Slots<K, V>>,
}

struct Slots<K, V> {
    /// What the config in service uses.
    live: HashMap<K, V>,
    /// What the build in progress has taken.
    taken: HashMap<K, V>,
}

impl<K, V> Default for Shelf<K, V> {
    fn default() -> Self {
        Self { slots: Mutex::new(Slots { live: HashMap::new(), taken: HashMap::new() }) }
    }
}

/// What a commit kept and what it started fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turnover {
    pub kept: usize,
    pub fresh: usize,
    pub dropped: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Shelf<K, V> {
    fn slots(&self) -> MutexGuard<'_, Slots<K, V>> {
        // The maps stay consistent whatever panicked while holding the lock.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value under `key` for the build in progress: the live one, or `make()`.
    pub fn take(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.try_take(key, || Ok::<_, std::convert::Infallible>(make())).unwrap_or_else(|never| match never {})
    }

    /// Like `take`, for values whose making can fail.
    pub fn try_take<E>(&self, key: K, make: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        {
            let mut slots = self.slots();
            if let Some(v) = slots.taken.get(&key) {
                return Ok(v.clone());
            }
            if let Some(v) = slots.live.get(&key).cloned() {
                slots.taken.insert(key, v.clone());
                return Ok(v);
            }
        }
        // Made outside the lock; builds are serialised by `Stores::begin`.
        let made = make()?;
        self.slots().taken.insert(key, made.clone());
        Ok(made)
    }

    /// Puts the build's values in service: the shelf now holds exactly those.
    pub fn commit(&self) -> Turnover {
        let mut slots = self.slots();
        let taken = std::mem::take(&mut slots.taken);
        let kept = taken.keys().filter(|k| slots.live.contains_key(*k)).count();
        let turnover = Turnover { kept, fresh: taken.len() - kept, dropped: slots.live.len() - kept };
        slots.live = taken;
        turnover
    }

    /// Forgets what a failed build took; the live values stay as they were.
    pub fn abandon(&self) {
        self.slots().taken.clear();
    }

    /// Every value in service.
    pub fn live(&self) -> Vec<V> {
        self.slots().live.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_fresh_and_dropped() {
        let shelf: Shelf<&str, u32> = Shelf::default();
        shelf.take("a", || 1);
        shelf.take("b", || 2);
        assert_eq!(shelf.commit(), Turnover { kept: 0, fresh: 2, dropped: 0 });
        assert_eq!(shelf.take("a", || 10), 1);
        assert_eq!(shelf.take("c", || 3), 3);
        assert_eq!(shelf.take("c", || 30), 3, "taken twice in one build: one value");
        assert_eq!(shelf.commit(), Turnover { kept: 1, fresh: 1, dropped: 1 });
        let mut live = shelf.live();
        live.sort();
        assert_eq!(live, [1, 3]);
    }

    #[test]
    fn an_abandoned_build_changes_nothing() {
        let shelf: Shelf<&str, u32> = Shelf::default();
        shelf.take("a", || 1);
        shelf.commit();
        shelf.take("b", || 2);
        shelf.abandon();
        assert_eq!(shelf.live(), [1]);
        assert_eq!(shelf.take("b", || 20), 20, "nothing of the abandoned build is reused");
    }
}
