//! The handles every part of the executor shares: the engine, the configuration, the
//! metrics, the stop signal, the tracker of work that shutdown waits for, this process's
//! instance id, and the gate that orders refills behind requests' starts.
//!
//! Owns nothing but these handles; cloning a [`Context`] clones `Arc`s and tokens. It makes
//! no decision and holds no policy state (the pool, the budget, pauses and pulls belong to
//! the components that use them). The configuration is replaced whole (by
//! `/update-config`), never changed in place, so a reader's snapshot stays consistent.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::refills::Refills;
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;

#[derive(Clone)]
pub(super) struct Context {
    pub(super) engine: Arc<dyn Engine>,
    config: Arc<RwLock<Arc<Config>>>,
    pub(super) metrics: Arc<Metrics>,
    /// Cancelled at shutdown: refuse new work, background loops end.
    pub(super) closing: CancellationToken,
    /// Cold starts and removals in progress; shutdown waits for them.
    pub(super) work: TaskTracker,
    /// This process's id, on the label of every container it creates.
    pub(super) instance: Arc<str>,
    /// Requests' starts in flight, which background refills give way to.
    pub(super) refills: Arc<Refills>,
}

impl Context {
    pub(super) fn new(engine: Arc<dyn Engine>, config: Config) -> Context {
        let refills = Arc::new(Refills::new(config.refills_wait_for_requests));
        Context {
            engine,
            config: Arc::new(RwLock::new(Arc::new(config))),
            metrics: Arc::new(Metrics::new()),
            closing: CancellationToken::new(),
            work: TaskTracker::new(),
            instance: uuid::Uuid::new_v4().to_string().into(),
            refills,
        }
    }

    /// The labels of everything this instance creates: its name and its instance id (a
    /// container's role and key come on top).
    pub(super) fn own_labels(&self) -> std::collections::HashMap<String, String> {
        std::collections::HashMap::from([
            (
                crate::engine::LABEL_EXECUTOR.to_string(),
                self.config().name.clone(),
            ),
            (
                crate::engine::LABEL_INSTANCE.to_string(),
                self.instance.to_string(),
            ),
        ])
    }

    /// The current configuration (a shared snapshot: cheap on the request path).
    pub(super) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the configuration with a copy changed by `change`, under the write lock (so
    /// two updates cannot lose each other's changes); returns what `change` returns.
    pub(super) fn update_config<R>(&self, change: impl FnOnce(&mut Config) -> R) -> R {
        let mut shared = self.config.write().unwrap_or_else(|e| e.into_inner());
        let mut config = Config::clone(&shared);
        let result = change(&mut config);
        *shared = Arc::new(config);
        result
    }
}
