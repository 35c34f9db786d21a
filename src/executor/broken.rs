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
    /// Takes the container out of service at once (no new request gets it), then finds out
    /// why it failed and removes it. That work runs as a tracked task of its own, so it
    /// completes even if the caller goes away. Returns the message for the caller.
    pub(super) async fn discard_broken(self: &Arc<Self>, lease: Lease, error: CallError) -> String {
        let container = Arc::clone(lease.container());
        drop(lease);
        let ours = self.pool.take_if_current(&container);
        let executor = Arc::clone(self);
        let diagnosis = self.work.spawn(async move {
            let message = if matches!(error, CallError::Timeout(_)) {
                format!("{error}; its container was removed and will not be reused")
            } else {
                match executor.exit_state_settled(&container.id).await {
                    Ok(Some(state)) => {
                        format!("task container {state} while handling the request")
                    }
                    Err(EngineError::NoSuchContainer(_)) => {
                        "task container was stopped or removed outside the executor while \
                         handling the request"
                            .to_string()
                    }
                    _ => format!("{error}; its container was removed"),
                }
            };
            tracing::warn!(container = %container.id, key = %container.key, %message, "discarding task container");
            // Only one of the requests that saw it break removes it.
            if ours {
                executor.retire(container, Duration::ZERO).await;
            }
            message
        });
        diagnosis
            .await
            .unwrap_or_else(|e| format!("the task container failed ({e})"))
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
