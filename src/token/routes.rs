//! Every token route, matched by path (exact paths by hash, patterns in order), and the
//! revocation of a user's cached tokens.

use std::collections::HashMap;
use std::sync::Arc;

use super::build::Compiled;
use super::{Route, TokenCache, TokenShape};
use crate::config::{Config, FieldError};
use crate::shelf::Shelf;

/// Every token route, matched by path.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// foldhash, not SipHash: the table is fixed at load, and a look-up of a chosen path can
    /// only ever compare it with the routes there are.
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    patterns: Vec<usize>,
}

impl Routes {
    /// True when the config has no token route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Builds every route; errors carry their key paths. Token caches come from `caches`.
    pub fn build(
        config: &Config,
        compiled: &Compiled<'_>,
        caches: &Shelf<TokenShape, TokenCache>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut routes = Routes::default();
        let mut errors = Vec::new();
        for (i, cfg) in config.routes.iter().enumerate() {
            match Route::build(&format!("routes[{i}]"), cfg, config, compiled, caches) {
                Ok(route) => {
                    let index = routes.routes.len();
                    if route.pattern.is_exact() {
                        routes.exact.insert(cfg.path.clone(), index);
                    } else {
                        routes.patterns.push(index);
                    }
                    routes.routes.push(route);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(routes)
        } else {
            Err(errors)
        }
    }

    /// The route serving `path`, with its captures.
    pub fn find(&self, path: &str) -> Option<(&Route, Vec<(String, String)>)> {
        if self.routes.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(path) {
            return Some((&self.routes[i], Vec::new()));
        }
        self.patterns.iter().find_map(|&i| self.routes[i].pattern.matches(path).map(|c| (&self.routes[i], c)))
    }

    pub fn by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Forgets every token of `user_id` in `cache` (`/admin/revoke`).
pub fn forget_user(cache: &TokenCache, user_id: &str) {
    let marker = format!("\u{0}{user_id}\u{0}");
    let doomed: Vec<Arc<String>> = cache.iter().filter(|(k, _)| k.contains(&marker)).map(|(k, _)| k).collect();
    for k in doomed {
        cache.invalidate(k.as_str());
    }
}
