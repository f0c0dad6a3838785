//! Process state: what lives as long as the process, across every reload. The compiled config
//! in service (swapped whole), the long-lived stores it borrows from, metrics, readiness, open
//! connections and tunnels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::server::{ConnSettings, Settings, Slots};
use crate::stores::Stores;

/// State shared by every connection, for the life of the process.
pub struct State {
    /// The compiled config in service. A request loads it once and keeps that one.
    pub gateway: ArcSwap<Gateway>,
    pub stores: Stores,
    pub metrics: Metrics,
    /// `/readyz`: true while listening, false once shutdown starts.
    pub ready: AtomicBool,
    /// Upgraded connections (WebSockets), drained on shutdown like requests.
    pub tunnels: TaskTracker,
    /// Open public connections, all workers together (`limits.max_connections`).
    pub public_slots: Arc<Slots>,
    pub admin_slots: Arc<Slots>,
    /// Where traced requests' spans go (SPEC §9); idle until a config turns tracing on.
    pub exporter: Arc<crate::trace::Exporter>,
}

impl State {
    /// Process state around a first compiled config (built from `stores`, and committed).
    pub fn new(gateway: Gateway, stores: Stores, metrics: Metrics) -> Self {
        let public_slots = Arc::new(Slots::counted(metrics.open_connections.clone()));
        Self {
            gateway: ArcSwap::from_pointee(gateway),
            stores,
            ready: AtomicBool::new(false),
            tunnels: TaskTracker::new(),
            public_slots,
            admin_slots: Arc::default(),
            exporter: Arc::new(crate::trace::Exporter::new(metrics.tracing_spans_total.clone())),
            metrics,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// The public listener's settings, from the config in service.
pub struct PublicSettings(pub Arc<State>);

impl Settings for PublicSettings {
    fn current(&self) -> Arc<ConnSettings> {
        self.0.gateway.load().public.clone()
    }
}

/// The admin listener's settings, from the config in service.
pub struct AdminSettings(pub Arc<State>);

impl Settings for AdminSettings {
    fn current(&self) -> Arc<ConnSettings> {
        self.0.gateway.load().admin.clone()
    }
}
