//! Why a request to the executor failed. Each message is meant for the person who reads the
//! `msg` of the answer: it says what happened and, where it helps, what to change.

use std::sync::Arc;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("executor is paused: not accepting tasks")]
    Paused,
    #[error("executor is shutting down")]
    ShuttingDown,
    #[error("executor is running: pause it before updating its config")]
    Running,
    #[error("cannot update the config: {0}")]
    StillHeld(String),
    #[error("resource limit exceeds the maximum: {0}")]
    ExceedsMaximum(String),
    #[error("not enough GPU available: {0}")]
    NoGpu(String),
    #[error("{0}")]
    RuntimeUnavailable(String),
    #[error("{0}")]
    SgxUnavailable(String),
    #[error("no room for the task: waited {waited} for {wanted}; the task budget is {total}, of which {reserved} is held by running tasks")]
    QueueTimeout {
        waited: String,
        wanted: String,
        total: String,
        reserved: String,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A cold start failed; the error is shared by every request that waited for it.
    #[error("{0}")]
    StartFailed(Arc<ExecError>),
    /// The start a request waited for ended without a verdict.
    #[error("the task start was cancelled")]
    StartCancelled,
    /// Containers were started for the key, but each was lost before this request could use
    /// it, until the request's time to get one ran out.
    #[error("no task container became available within {0}: the containers started for this task were lost (crashed, removed or stopped) before this request could use one")]
    NoContainer(String),
    /// The call to a ready task failed; the container was removed.
    #[error("{0}")]
    TaskBroken(String),
    /// The task answered with a non-2xx status.
    #[error("task answered HTTP {status}: {body}")]
    TaskStatus { status: u16, body: String },
    #[error("{0}")]
    BadAnswer(String),
    /// The learned keep-alive's parameters are unusable (at start, or in `/update-config`).
    #[error(transparent)]
    KeepAlive(#[from] crate::keepalive::ParamsError),
}

impl ExecError {
    /// The outcome label of this error in the request metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            ExecError::Paused | ExecError::ShuttingDown => "rejected",
            ExecError::Running | ExecError::StillHeld(_) => "rejected",
            ExecError::ExceedsMaximum(_)
            | ExecError::NoGpu(_)
            | ExecError::RuntimeUnavailable(_)
            | ExecError::SgxUnavailable(_)
            | ExecError::KeepAlive(_) => "refused",
            ExecError::QueueTimeout { .. } => "queue_timeout",
            ExecError::StartFailed(inner) => inner.outcome(),
            ExecError::Engine(_) | ExecError::StartCancelled | ExecError::NoContainer(_) => {
                "start_failed"
            }
            ExecError::TaskBroken(_) => "task_broken",
            ExecError::TaskStatus { .. } => "task_error",
            ExecError::BadAnswer(_) => "bad_answer",
        }
    }
}
