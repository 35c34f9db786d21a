//! The idle reaper: removes warm containers that served nothing for the idle timeout.
//!
//! It sleeps until the earliest possible expiry (no polling) and wakes early only when the
//! pool gains a container or the config changes. A container with a request in flight is
//! never taken (the pool guarantees it).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Executor;

impl Executor {
    pub(super) async fn reap_idle(self: Arc<Self>) {
        loop {
            let idle_timeout = self.config().idle_timeout;
            let (expired, next) = self.pool.take_expired(Instant::now(), idle_timeout);
            for container in expired {
                self.metrics.reaped.inc();
                tracing::info!(container = %container.id, key = %container.key, "removing idle container");
                let executor = Arc::clone(&self);
                self.work
                    .spawn(async move { executor.retire(container, Duration::ZERO).await });
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.closing.cancelled() => return,
                _ = self.pool.changed.notified() => {}
                _ = sleep => {}
            }
        }
    }
}
