//! The executor's side of `keep_alive: adaptive` and `keep_alive: priced`: feeds the
//! policy ([`KeepAlive`]) the arrivals and ends of requests, tells the reaper when each idle
//! container expires and the prewarm keeper which keys to start ahead of their next
//! request, and wakes either when the policy moves one of their deadlines earlier.
//!
//! Owns the policy in force (none under `keep_alive: fixed`: then the reaper's look is the
//! pool's fixed one and nothing is predicted), which `/update-config` swaps while the
//! executor is paused (a request still ending then records its end in the policy that saw
//! it arrive), and the reaper's next planned look (so that the end of a request wakes
//! the reaper only when it must look earlier). Time is the runtime's (`tokio::time`, paused
//! in simulations), handed to the policy as `std` instants. Recording a request is a map
//! update under the policy's short lock and, when the key's container then expires earlier
//! than the reaper planned, one notification; no engine call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::container::Container;
use super::pool::Pool;
use crate::config::KeepAlivePolicy;
use crate::keepalive::{Due, KeepAlive, ParamsError, Rule};
use crate::task::TaskKey;

/// The reaper is looking (or has nothing to wait for): any earlier expiry must wake it.
const LOOKING: u64 = u64::MAX;

pub(super) struct Adaptive {
    /// The learned policy in force; `None` under `keep_alive: fixed`.
    policy: RwLock<Option<Arc<KeepAlive>>>,
    /// The origin of `reaper_next`.
    base: Instant,
    /// When the reaper looks next, in nanoseconds since `base`; [`LOOKING`] while it looks.
    reaper_next: AtomicU64,
}

impl Adaptive {
    pub(super) fn new(policy: &KeepAlivePolicy) -> Result<Adaptive, ParamsError> {
        Ok(Adaptive {
            policy: RwLock::new(Adaptive::build(policy)?),
            base: Instant::now(),
            reaper_next: AtomicU64::new(LOOKING),
        })
    }

    /// A fresh policy for `keep_alive` (`None`: fixed), its parameters checked.
    pub(super) fn build(policy: &KeepAlivePolicy) -> Result<Option<Arc<KeepAlive>>, ParamsError> {
        let built = match *policy {
            KeepAlivePolicy::Fixed => return Ok(None),
            KeepAlivePolicy::Adaptive(params) => KeepAlive::new(params)?,
            KeepAlivePolicy::Priced { params, price } => {
                KeepAlive::with_rule(params, Rule::Priced { price })?
            }
        };
        Ok(Some(Arc::new(built)))
    }

    /// Puts `policy` (from [`build`](Self::build)) in force, forgetting what the one before
    /// learned; the caller wakes the reaper and the prewarm keeper.
    pub(super) fn install(&self, policy: Option<Arc<KeepAlive>>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        self.reaper_next.store(LOOKING, Ordering::SeqCst);
    }

    fn current(&self) -> Option<Arc<KeepAlive>> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base)
            .as_nanos()
            .min(u128::from(LOOKING - 1)) as u64
    }

    /// Records a request for `key` now; its end is recorded when the returned guard drops
    /// (answered, failed, or the request abandoned). The end wakes the reaper (through
    /// `pool`) when it moves an expiry earlier, and the pre-warm keeper (`prewarm`) when it
    /// sets a pre-warm time.
    pub(super) fn visit<'a>(
        &'a self,
        key: &'a TaskKey,
        pool: &'a Pool,
        prewarm: &'a Notify,
        idle_timeout: Duration,
    ) -> Visit<'a> {
        let policy = self.current();
        if let Some(policy) = &policy {
            policy.arrived(key, Instant::now().into_std());
        }
        Visit {
            adaptive: self,
            policy,
            key,
            pool,
            prewarm,
            idle_timeout,
        }
    }

    /// The reaper's look: takes out the idle containers whose expiry came (with whether each
    /// is a pre-warm that never served) and says when to look next.
    pub(super) fn take_expired(
        &self,
        pool: &Pool,
        now: Instant,
        idle_timeout: Duration,
    ) -> (Vec<(Arc<Container>, bool)>, Option<Instant>) {
        let Some(policy) = self.current() else {
            let (expired, next) = pool.take_expired(now, idle_timeout);
            return (expired.into_iter().map(|c| (c, false)).collect(), next);
        };
        // Requests that end while it looks wake it again.
        self.reaper_next.store(LOOKING, Ordering::SeqCst);
        let mut unused = Vec::new();
        let (expired, next) = pool.take_expired_at(now, idle_timeout, |c| {
            let expiry = policy.expiry(&c.key, c.last_used().into_std(), idle_timeout);
            let at = Instant::from_std(expiry.at);
            if at <= now && expiry.unused_prewarm {
                unused.push(c.id.clone());
            }
            at
        });
        if let Some(at) = next {
            self.reaper_next.store(self.nanos(at), Ordering::SeqCst);
        }
        let expired = expired
            .into_iter()
            .map(|c| {
                let was_unused = unused.contains(&c.id);
                (c, was_unused)
            })
            .collect();
        (expired, next)
    }

    /// The keys whose pre-warm time has come (claimed: each is started once), and when the
    /// next one comes.
    pub(super) fn take_due(&self, idle_timeout: Duration) -> (Vec<TaskKey>, Option<Instant>) {
        let Some(policy) = self.current() else {
            return (Vec::new(), None);
        };
        let Due { keys, next } = policy.take_due(Instant::now().into_std(), idle_timeout);
        (keys, next.map(Instant::from_std))
    }

    /// A claimed pre-warm of `key` found no free room: due again when room frees.
    pub(super) fn unclaim(&self, key: &TaskKey) {
        if let Some(policy) = self.current() {
            policy.unclaim(key);
        }
    }
}

/// One request seen by the policy; dropping it records the request's end.
pub(super) struct Visit<'a> {
    adaptive: &'a Adaptive,
    /// The policy that saw the request arrive (`None`: fixed).
    policy: Option<Arc<KeepAlive>>,
    key: &'a TaskKey,
    pool: &'a Pool,
    prewarm: &'a Notify,
    idle_timeout: Duration,
}

impl Drop for Visit<'_> {
    fn drop(&mut self) {
        let Some(policy) = &self.policy else {
            return;
        };
        let ended = policy.ended(self.key, Instant::now().into_std(), self.idle_timeout);
        if let Some(at) = ended.expires {
            let at = self.adaptive.nanos(Instant::from_std(at));
            if at < self.adaptive.reaper_next.load(Ordering::SeqCst) {
                self.pool.changed.notify_one();
            }
        }
        if ended.prewarm_at.is_some() {
            self.prewarm.notify_one();
        }
    }
}
