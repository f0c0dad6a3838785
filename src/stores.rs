//! What outlives a config: one shelf per kind of long-lived store (limit counters, auth caches,
//! IdPs' key sets, token caches, upstream connection pools, the ledger). A config build takes its stores
//! from here by name and shape (see `shelf`); the reload that puts the build in service commits
//! it, and a failed one leaves every store as it was.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::auth::jwks::JwksKeys;
use crate::auth::{AuthCache, AuthShape, HookStores, JwksShape};
use crate::ledger::{Ledger, LedgerShape};
use crate::proxy::pool::{Pool, PoolKey};
use crate::ratelimit::{LimitShape, LimitStore};
use crate::shared::{Shared, SharedShape};
use crate::shelf::{Shelf, Turnover};
use crate::token::{TokenCache, TokenShape};

/// Every long-lived store of the process.
#[derive(Default)]
pub struct Stores {
    pub limits: Shelf<LimitShape, Arc<LimitStore>>,
    pub auth: Shelf<AuthShape, Arc<AuthCache>>,
    pub jwks: Shelf<JwksShape, Arc<JwksKeys>>,
    pub tokens: Shelf<TokenShape, TokenCache>,
    pub pools: Shelf<PoolKey, Pool>,
    /// The ledger: its queue, writer task and database connections.
    pub ledgers: Shelf<LedgerShape, Ledger>,
    /// The Redis connection of `shared_state`, and its circuit breaker.
    pub shared: Shelf<SharedShape, Shared>,
    /// One build at a time: a shelf tells the takes of one build from those of another only
    /// by time.
    building: Mutex<()>,
}

/// What a commit did to each kind of store, for the reload's log line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub limits: Turnover,
    pub auth_caches: Turnover,
    pub token_caches: Turnover,
    pub pools: Turnover,
}

impl Stores {
    /// Starts a build: the returned guard hands out stores and, dropped without `commit`,
    /// forgets what it handed out.
    pub fn begin(&self) -> Build<'_> {
        let guard = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        Build { stores: self, _one_at_a_time: guard, committed: false }
    }

    /// The shelves auth hooks take from, and the shared state their caches use.
    pub fn hooks<'a>(&'a self, shared: Option<&'a Shared>) -> HookStores<'a> {
        HookStores { caches: &self.auth, pools: &self.pools, jwks: &self.jwks, shared }
    }

    /// Forgets every cached identity and token of `user_id` on this replica (logout,
    /// `/admin/revoke`; with `shared_state`, every replica does on the revocation message).
    pub fn forget_user(&self, user_id: &str) {
        for cache in self.auth.live() {
            cache.forget_user(user_id);
        }
        for cache in self.tokens.live() {
            crate::token::forget_user(&cache, user_id);
        }
    }

    fn abandon(&self) {
        self.limits.abandon();
        self.auth.abandon();
        self.jwks.abandon();
        self.tokens.abandon();
        self.pools.abandon();
        self.ledgers.abandon();
        self.shared.abandon();
    }
}

/// A build in progress (see `Stores::begin`).
pub struct Build<'a> {
    stores: &'a Stores,
    _one_at_a_time: MutexGuard<'a, ()>,
    committed: bool,
}

impl Build<'_> {
    /// Puts what the build took in service; the rest is dropped from the shelves.
    pub fn commit(mut self) -> Summary {
        self.committed = true;
        let s = self.stores;
        s.jwks.commit();
        s.ledgers.commit();
        s.shared.commit();
        Summary {
            limits: s.limits.commit(),
            auth_caches: s.auth.commit(),
            token_caches: s.tokens.commit(),
            pools: s.pools.commit(),
        }
    }
}

impl Deref for Build<'_> {
    type Target = Stores;
    fn deref(&self) -> &Stores {
        self.stores
    }
}

impl Drop for Build<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.stores.abandon();
        }
    }
}
