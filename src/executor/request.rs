//! The request path: admission, a warm container or a cold start, the task call, and the
//! request's outcome in the metrics.
//!
//! Owns the order of one request's steps ([`Executor::execute`]), top to bottom; each step
//! is another component's job (`Admission`, `Adaptive`, the pool, `Starter`, `Removals`).
//! It must not remove containers or touch the budget itself.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::container::Lease;
use super::error::ExecError;
use super::outcome::StartOutcome;
use super::pool::Lookup;
use super::{Executor, TaskRequest};
use crate::config::Config;
use crate::task::{Call, TaskKey};
use crate::task_client::CallError;

impl Executor {
    /// Refuses work while stopping or paused, then checks what depends on this host and its
    /// configuration; returns the config to use.
    fn admit(&self, key: &TaskKey) -> Result<Arc<Config>, ExecError> {
        self.starter.check_open()?;
        self.admission.admit(key)
    }

    /// Runs one request: admission, a warm container (or a cold start), the task call.
    /// On success returns the task's answer body, valid UTF-8.
    pub async fn execute(self: &Arc<Self>, request: TaskRequest) -> Result<Bytes, ExecError> {
        let started = Instant::now();
        let (result, path) = self.run(request).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.outcome(),
        };
        match path {
            Some(path) => self.ctx.metrics.request(outcome, path, started.elapsed()),
            None => {
                self.ctx
                    .metrics
                    .requests
                    .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                    .inc();
            }
        }
        result
    }

    /// [`execute`](Self::execute) without the bookkeeping; also says whether the request
    /// found a ready container (`warm`), waited for a start (`cold`), or got neither.
    async fn run(
        self: &Arc<Self>,
        request: TaskRequest,
    ) -> (Result<Bytes, ExecError>, Option<&'static str>) {
        let config = match self.admit(&request.key) {
            Ok(config) => config,
            Err(e) => return (Err(e), None),
        };
        // Declared before the lease, so dropped after it: the request's end is recorded
        // once its container is idle again.
        let _visit = self.adaptive.visit(
            &request.key,
            self.room.pool(),
            self.room.prewarm_signal(),
            config.idle_timeout,
        );
        let (lease, path) = match self.lease(&request.key).await {
            Ok((lease, cold)) => (lease, if cold { "cold" } else { "warm" }),
            Err(e) => return (Err(e), Some("cold")),
        };
        let call = Call::for_input(request.key.use_sgx, &request.input);
        let result = match lease
            .container()
            .client
            .call(call, request.input, config.request_timeout)
            .await
        {
            // `msg` is a JSON string: the answer must be text (a lossy conversion would
            // silently change the task's bytes).
            Ok(answer) if answer.status.is_success() => match std::str::from_utf8(&answer.body) {
                Ok(_) => Ok(answer.body),
                Err(_) => Err(ExecError::BadAnswer(format!(
                    "task answered {} bytes that are not valid UTF-8; the answer must be text",
                    answer.body.len()
                ))),
            },
            Ok(answer) => Err(ExecError::TaskStatus {
                status: answer.status.as_u16(),
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(4096)])
                    .into_owned(),
            }),
            Err(e @ CallError::TooLarge(_)) => Err(ExecError::BadAnswer(e.to_string())),
            Err(e) => Err(ExecError::TaskBroken(
                self.removals.discard_broken(lease, e).await,
            )),
        };
        (result, Some(path))
    }

    /// A lease on a ready container for `key`, starting one if needed (single flight).
    /// The flag says whether the request had to wait for a start. A request that starts a
    /// container gets the first lease on it.
    ///
    /// A request gets a container within pull, queue and start timeouts of its arrival: when
    /// the start it waited for ended with a container that was lost before this request
    /// could use it, it looks again, but no longer than that.
    async fn lease(self: &Arc<Self>, key: &TaskKey) -> Result<(Lease, bool), ExecError> {
        let config = self.config();
        let patience = config.pull_timeout + config.queue_timeout + config.start_timeout;
        let deadline = Instant::now() + patience;
        let gave_up = || {
            tracing::warn!(key = %key, "no container of the key became available to this request within its time; giving up");
            ExecError::NoContainer(humantime::format_duration(patience).to_string())
        };
        // Set once a start this request waited for ended: from then on it is a cold request,
        // and whatever it looks for again is bounded by `deadline`.
        let mut cold = false;
        loop {
            let bound = cold.then_some(deadline);
            // Paused or stopping since admission (or while waiting): start nothing new.
            if cold {
                self.starter.check_open()?;
            }
            let lookup = self.pool.lease_or_claim(key);
            if cold && Instant::now() >= deadline {
                match lookup {
                    Lookup::Leased(lease) => return Ok((lease, cold)),
                    // Requests that came meanwhile look again themselves.
                    Lookup::Claimed(ticket) => ticket.abandon(),
                    Lookup::Wait(_) => {}
                }
                return Err(gave_up());
            }
            let mut outcome = match lookup {
                Lookup::Leased(lease) => return Ok((lease, cold)),
                Lookup::Wait(outcome) => outcome,
                Lookup::Claimed(ticket) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let starter = Arc::clone(&self.starter);
                    // The start logs as part of the request that claimed it.
                    self.starter
                        .spawn_start(starter.cold_start(ticket, tx).in_current_span());
                    // A first start is bounded by its own phases' timeouts; one begun after
                    // an earlier container was lost, by what is left of this request's time.
                    return match within(bound, rx).await.ok_or_else(gave_up)? {
                        Ok(result) => result.map(|lease| (lease, true)),
                        Err(_) => Err(ExecError::StartCancelled),
                    };
                }
            };
            let waited = outcome.wait_for(|o| !matches!(o, StartOutcome::Pending));
            let result = within(bound, waited).await.ok_or_else(gave_up)?;
            cold = true;
            match result {
                Ok(StartOutcome::Failed(e)) => return Err(ExecError::StartFailed(e)),
                Ok(StartOutcome::Refused) => return Err(ExecError::Paused),
                Ok(StartOutcome::Cancelled) => return Err(ExecError::StartCancelled),
                // Ready: lease it on the next turn. (Abandoned, or a closed channel: look
                // again.)
                _ => continue,
            }
        }
    }
}

/// Awaits `future`, until `deadline` when there is one; `None` when the deadline came first.
async fn within<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}
