//! Broken containers: a call to a ready task failed at the transport level (timeout, reset,
//! refused, garbage). Finds out why from the engine, takes the container out of service and
//! removes it, so the next request starts a fresh one.

use std::sync::Arc;
use std::time::Duration;

use super::Executor;
use crate::engine::{EngineError, ExitState};
use crate::pool::Lease;
use crate::task_client::CallError;

impl Executor {
    /// Returns the message for the caller; the container is removed before it returns.
    pub(super) async fn discard_broken(&self, lease: Lease, error: CallError) -> String {
        let container = Arc::clone(lease.container());
        drop(lease);
        let message = if matches!(error, CallError::Timeout(_)) {
            format!("{error}; its container was removed and will not be reused")
        } else {
            match self.exit_state_settled(&container.id).await {
                Ok(Some(state)) => format!("task container {state} while handling the request"),
                Err(EngineError::NoSuchContainer(_)) => {
                    "task container was stopped or removed outside the executor while handling \
                     the request"
                        .to_string()
                }
                _ => format!("{error}; its container was removed"),
            }
        };
        tracing::warn!(container = %container.id, key = %container.key, %message, "discarding task container");
        if self.pool.take_if_current(&container) {
            self.retire(container, Duration::ZERO).await;
        }
        message
    }

    /// The container's exit state, allowing Docker a moment to notice an exit that just broke
    /// a connection: its state lags the process by a few milliseconds, and the OOM flag can lag
    /// the exit itself.
    async fn exit_state_settled(&self, id: &str) -> Result<Option<ExitState>, EngineError> {
        let mut state = None;
        for _ in 0..10 {
            state = self.engine.exit_state(id).await?;
            match state {
                None => {}
                // Killed by SIGKILL without the OOM flag (yet): look once more shortly.
                Some(s) if s.code == 137 && !s.oom_killed => {}
                Some(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(state)
    }
}
