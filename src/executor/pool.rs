//! The warm pool: at most one container per task key, in state `Starting` or `Ready`.
//!
//! Owns the map from [`TaskKey`] to container and who may lease a container ([`Lease`],
//! counted by the container itself, `super::container`) or start one ([`StartTicket`]).
//! Every method is synchronous and holds the pool lock only for map operations: the pool
//! never awaits, never calls the engine, and never blocks one key on another. Removing a
//! container from the engine is `super::removals`' job: the pool only hands containers out
//! of the map (`take_*`), after which nobody can lease them any more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::container::{Container, Lease};
use super::error::ExecError;
use super::outcome::{outcome_channel, OutcomeReceiver, OutcomeSender, StartOutcome};
use crate::task::TaskKey;

enum Slot {
    Starting {
        ticket: u64,
        outcome: OutcomeReceiver,
    },
    Ready(Arc<Container>),
}

struct Inner {
    /// By key, in key order: whatever is taken from it (idle ties in eviction, expired
    /// containers, all at pause) comes out in the same order in every run.
    slots: BTreeMap<TaskKey, Slot>,
    next_ticket: u64,
    /// Bumped by [`Pool::take_all`]: starts claimed before it must not enter the pool.
    generation: u64,
}

/// The warm pool.
pub struct Pool {
    inner: Mutex<Inner>,
    /// Woken when a container enters the pool (the reaper may need an earlier deadline).
    pub(crate) changed: Notify,
    /// Woken when a container becomes idle: its last request ended, or it became ready.
    idle: Arc<Notify>,
}

/// Result of [`Pool::lease_or_claim`].
pub enum Lookup {
    /// A ready container, now leased.
    Leased(Lease),
    /// Another request is starting a container for this key: wait, then look again.
    Wait(OutcomeReceiver),
    /// Nobody is: the caller must start one and report through the ticket.
    Claimed(StartTicket),
}

/// The right and duty to start the container of one key. Dropping it without
/// [`StartTicket::ready`] frees the key and tells waiters the start failed.
pub struct StartTicket {
    pool: Arc<Pool>,
    key: TaskKey,
    ticket: u64,
    generation: u64,
    outcome: Option<OutcomeSender>,
}

impl StartTicket {
    pub fn key(&self) -> &TaskKey {
        &self.key
    }

    /// Puts the started container in the pool, leased to the request that started it (so
    /// nothing can evict or reap it before that request used it); the caller hands the
    /// lease on, or drops it (prewarm). If the pool was emptied (paused, stopping) since the
    /// claim, the container is handed back for removal instead.
    pub fn ready(mut self, container: Arc<Container>) -> Result<Lease, Arc<Container>> {
        let tx = self.outcome.take().expect("ticket used once");
        let mut inner = self.pool.lock();
        let current = matches!(inner.slots.get(&self.key),
            Some(Slot::Starting { ticket, .. }) if *ticket == self.ticket);
        if !current || inner.generation != self.generation {
            if current {
                inner.slots.remove(&self.key);
            }
            drop(inner);
            tx.send(StartOutcome::Refused);
            return Err(container);
        }
        container.touch();
        // Leased before anyone can see it: it is not idle, so it wakes no start waiting
        // for room; it becomes idle when the starter's lease ends.
        let lease = Container::lease(&container);
        inner.slots.insert(self.key.clone(), Slot::Ready(container));
        drop(inner);
        tx.send(StartOutcome::Ready);
        self.pool.changed.notify_one();
        Ok(lease)
    }

    /// Reports a failed start to every waiting request and frees the key.
    pub fn fail(mut self, reason: Arc<ExecError>) {
        let tx = self.outcome.take().expect("ticket used once");
        self.release_slot();
        tx.send(StartOutcome::Failed(reason));
    }

    /// Frees the key without a verdict: waiting requests start a container themselves.
    pub fn abandon(mut self) {
        let tx = self.outcome.take().expect("ticket used once");
        self.release_slot();
        tx.send(StartOutcome::Abandoned);
    }

    fn release_slot(&self) {
        let mut inner = self.pool.lock();
        if matches!(inner.slots.get(&self.key),
            Some(Slot::Starting { ticket, .. }) if *ticket == self.ticket)
        {
            inner.slots.remove(&self.key);
        }
    }
}

impl Drop for StartTicket {
    fn drop(&mut self) {
        if let Some(tx) = self.outcome.take() {
            self.release_slot();
            tx.send(StartOutcome::Cancelled);
        }
    }
}

/// Counts for `/stats` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub starting: usize,
    pub ready: usize,
    pub busy: usize,
}

impl Pool {
    pub fn new() -> Arc<Pool> {
        Arc::new(Pool {
            inner: Mutex::new(Inner {
                slots: BTreeMap::new(),
                next_ticket: 0,
                generation: 0,
            }),
            changed: Notify::new(),
            idle: Arc::new(Notify::new()),
        })
    }

    /// The signal to hand to containers of this pool ([`Container::new`]).
    pub fn idle_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.idle)
    }

    /// A future that completes when a container next becomes idle. Enable it before
    /// looking at the pool, so no wake-up is missed.
    pub fn became_idle(&self) -> tokio::sync::futures::Notified<'_> {
        self.idle.notified()
    }

    /// The resources held by idle ready containers (what eviction could free).
    pub fn idle_demand(&self) -> crate::resources::Demand {
        let inner = self.lock();
        let mut total = crate::resources::Demand {
            milli_cpu: 0,
            mem_mb: 0,
        };
        for slot in inner.slots.values() {
            if let Slot::Ready(c) = slot {
                if c.in_flight() == 0 {
                    total.milli_cpu += c.key.demand.milli_cpu;
                    total.mem_mb += c.key.demand.mem_mb;
                }
            }
        }
        total
    }

    /// The images of the keys in the pool now, starting or ready.
    pub fn images(&self) -> BTreeSet<String> {
        self.lock()
            .slots
            .keys()
            .map(|key| key.image.clone())
            .collect()
    }

    /// Ids of the ready containers now.
    pub fn ready_ids(&self) -> BTreeSet<String> {
        self.lock()
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Ready(c) => Some(c.id.clone()),
                _ => None,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No critical section below can panic half-way.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The warm path: lease the ready container of `key`, or learn who starts it.
    pub fn lease_or_claim(self: &Arc<Self>, key: &TaskKey) -> Lookup {
        let mut inner = self.lock();
        match inner.slots.get(key) {
            Some(Slot::Ready(c)) => return Lookup::Leased(Container::lease(c)),
            Some(Slot::Starting { outcome, .. }) => return Lookup::Wait(outcome.clone()),
            None => {}
        }
        Lookup::Claimed(self.claim(&mut inner, key))
    }

    /// Puts a `Starting` slot for `key` (which has none) and returns its ticket.
    fn claim(self: &Arc<Self>, inner: &mut Inner, key: &TaskKey) -> StartTicket {
        inner.next_ticket += 1;
        let ticket = inner.next_ticket;
        let (tx, rx) = outcome_channel();
        inner.slots.insert(
            key.clone(),
            Slot::Starting {
                ticket,
                outcome: rx,
            },
        );
        StartTicket {
            pool: Arc::clone(self),
            key: key.clone(),
            ticket,
            generation: inner.generation,
            outcome: Some(tx),
        }
    }

    /// Takes out of the map every ready container that `take` selects.
    fn take_ready_where(
        inner: &mut Inner,
        take: impl Fn(&Arc<Container>) -> bool,
    ) -> Vec<Arc<Container>> {
        let keys: Vec<TaskKey> = inner
            .slots
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ready(c) if take(c) => Some(k.clone()),
                _ => None,
            })
            .collect();
        keys.into_iter()
            .filter_map(|k| match inner.slots.remove(&k) {
                Some(Slot::Ready(c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Takes `container` out of the pool if it is still the one serving its key (a broken
    /// container). Returns whether it was.
    pub fn take_if_current(&self, container: &Arc<Container>) -> bool {
        !Self::take_ready_where(&mut self.lock(), |c| Arc::ptr_eq(c, container)).is_empty()
    }

    /// Takes the ready container with engine id `id` out of the pool, if it is there.
    pub fn take_by_id(&self, id: &str) -> Option<Arc<Container>> {
        Self::take_ready_where(&mut self.lock(), |c| c.id == id).pop()
    }

    /// Reconciliation: takes out the containers of `candidates` (ready before the engine
    /// was asked) that are not among the `running` ones. A container that became ready
    /// after the engine's answer is not a candidate, so it is never taken by mistake.
    pub fn take_unless_running(
        &self,
        candidates: &BTreeSet<String>,
        running: &BTreeSet<String>,
    ) -> Vec<Arc<Container>> {
        Self::take_ready_where(&mut self.lock(), |c| {
            candidates.contains(&c.id) && !running.contains(&c.id)
        })
    }

    /// Starts a claim on `key` only when the pool has nothing for it (prewarming).
    pub fn claim_if_absent(self: &Arc<Self>, key: &TaskKey) -> Option<StartTicket> {
        let mut inner = self.lock();
        if inner.slots.contains_key(key) {
            return None;
        }
        Some(self.claim(&mut inner, key))
    }

    /// Takes an idle container out of the pool (eviction): prewarmed ones first, then the
    /// least recently used; of those used last at the same instant, the smallest key.
    pub fn take_lru_idle(&self) -> Option<Arc<Container>> {
        let mut inner = self.lock();
        let key = inner
            .slots
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ready(c) if c.in_flight() == 0 => Some(((!c.prewarmed, c.last_used()), k)),
                _ => None,
            })
            .min_by_key(|(order, _)| *order)
            .map(|(_, k)| k.clone())?;
        match inner.slots.remove(&key) {
            Some(Slot::Ready(c)) => Some(c),
            _ => unreachable!("slot chosen above is ready"),
        }
    }

    /// Takes out every idle container unused for `idle_timeout`; also returns when the
    /// next one could expire (busy containers count as used now).
    pub fn take_expired(
        &self,
        now: Instant,
        idle_timeout: Duration,
    ) -> (Vec<Arc<Container>>, Option<Instant>) {
        self.take_expired_at(now, idle_timeout, |c| c.last_used() + idle_timeout)
    }

    /// Takes out every idle container whose expiry (`expires`, asked of idle containers
    /// only, under the pool lock: it must not lock the pool) has come; also returns when the
    /// next one could expire (busy containers count as expiring `idle_timeout` from now).
    pub fn take_expired_at(
        &self,
        now: Instant,
        idle_timeout: Duration,
        mut expires: impl FnMut(&Container) -> Instant,
    ) -> (Vec<Arc<Container>>, Option<Instant>) {
        let mut inner = self.lock();
        let mut expired_keys = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, slot) in &inner.slots {
            let Slot::Ready(c) = slot else { continue };
            if c.prewarmed {
                continue;
            }
            let expires = if c.in_flight() == 0 {
                expires(c)
            } else {
                now + idle_timeout
            };
            if expires <= now {
                expired_keys.push(key.clone());
            } else {
                next = Some(next.map_or(expires, |n| n.min(expires)));
            }
        }
        let expired = expired_keys
            .into_iter()
            .filter_map(|k| match inner.slots.remove(&k) {
                Some(Slot::Ready(c)) => Some(c),
                _ => None,
            })
            .collect();
        (expired, next)
    }

    /// Takes out every ready container, and makes starts in progress end up removed
    /// instead of pooled (pause, stop).
    pub fn take_all(&self) -> Vec<Arc<Container>> {
        let mut inner = self.lock();
        inner.generation += 1;
        // Starts in progress lose their slot: requests after this start afresh.
        inner
            .slots
            .retain(|_, s| !matches!(s, Slot::Starting { .. }));
        Self::take_ready_where(&mut inner, |_| true)
    }

    pub fn counts(&self) -> PoolCounts {
        let inner = self.lock();
        let mut counts = PoolCounts::default();
        for slot in inner.slots.values() {
            match slot {
                Slot::Starting { .. } => counts.starting += 1,
                Slot::Ready(c) => {
                    counts.ready += 1;
                    if c.in_flight() > 0 {
                        counts.busy += 1;
                    }
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Budget, Demand};
    use crate::task::Runtime;

    fn key(image: &str) -> TaskKey {
        TaskKey {
            image: image.into(),
            runtime: Runtime::Container,
            demand: Demand {
                milli_cpu: 1000,
                mem_mb: 128,
            },
            gpu_count: 0,
            use_sgx: false,
        }
    }

    fn container(budget: &Arc<Budget>, k: &TaskKey) -> Arc<Container> {
        let r = budget.try_reserve(k.demand).unwrap();
        Arc::new(Container::new(
            format!("id-{}", k.image),
            k.clone(),
            Arc::new(crate::task_client::TaskClient::new(
                crate::engine::TaskAddr::Tcp("127.0.0.1:8080".parse().unwrap()),
                1024,
            )),
            r,
            k.image.starts_with("pre"),
            Arc::new(Notify::new()),
            None,
        ))
    }

    fn claim(pool: &Arc<Pool>, k: &TaskKey) -> StartTicket {
        match pool.lease_or_claim(k) {
            Lookup::Claimed(t) => t,
            _ => panic!("expected a claim"),
        }
    }

    fn budget() -> Arc<Budget> {
        Budget::new(Demand {
            milli_cpu: 8000,
            mem_mb: 8192,
        })
    }

    #[test]
    fn single_flight_then_lease() {
        let pool = Pool::new();
        let b = budget();
        let k = key("a");
        let ticket = claim(&pool, &k);
        let Lookup::Wait(rx) = pool.lease_or_claim(&k) else {
            panic!("second request must wait")
        };
        // Another key is independent.
        assert!(matches!(pool.lease_or_claim(&key("b")), Lookup::Claimed(_)));
        ticket.ready(container(&b, &k)).unwrap();
        assert!(matches!(rx.current(), StartOutcome::Ready));
        let Lookup::Leased(l1) = pool.lease_or_claim(&k) else {
            panic!("ready")
        };
        let Lookup::Leased(l2) = pool.lease_or_claim(&k) else {
            panic!("ready")
        };
        assert!(Arc::ptr_eq(l1.container(), l2.container()));
        assert_eq!(l1.container().in_flight(), 2);
        drop(l1);
        drop(l2);
        assert_eq!(pool.counts().ready, 1);
    }

    #[test]
    fn dropped_ticket_frees_key_and_fails_waiters() {
        let pool = Pool::new();
        let k = key("a");
        let ticket = claim(&pool, &k);
        let Lookup::Wait(rx) = pool.lease_or_claim(&k) else {
            panic!()
        };
        drop(ticket);
        assert!(matches!(rx.current(), StartOutcome::Cancelled));
        assert!(matches!(pool.lease_or_claim(&k), Lookup::Claimed(_)));
    }

    #[test]
    fn busy_containers_are_never_taken_for_eviction_or_expiry() {
        let pool = Pool::new();
        let b = budget();
        let k = key("a");
        claim(&pool, &k).ready(container(&b, &k)).unwrap();
        let Lookup::Leased(lease) = pool.lease_or_claim(&k) else {
            panic!()
        };
        assert!(pool.take_lru_idle().is_none());
        let later = Instant::now() + Duration::from_secs(3600);
        let (expired, next) = pool.take_expired(later, Duration::from_secs(1));
        assert!(expired.is_empty());
        assert!(next.is_some());
        drop(lease);
        let (expired, _) = pool.take_expired(later, Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
    }

    #[test]
    fn lru_idle_is_evicted_first_and_reservation_follows_container() {
        let pool = Pool::new();
        let b = budget();
        for name in ["old", "new"] {
            let k = key(name);
            claim(&pool, &k).ready(container(&b, &k)).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Using "old" makes "new" the least recently used.
        drop(match pool.lease_or_claim(&key("old")) {
            Lookup::Leased(l) => l,
            _ => panic!(),
        });
        let victim = pool.take_lru_idle().unwrap();
        assert_eq!(victim.key.image, "new");
        assert_eq!(b.snapshot().used.milli_cpu, 2000);
        drop(victim);
        assert_eq!(b.snapshot().used.milli_cpu, 1000);
    }

    #[test]
    fn each_idle_container_expires_when_its_own_expiry_says() {
        let pool = Pool::new();
        let b = budget();
        for name in ["short", "long", "busy"] {
            let k = key(name);
            claim(&pool, &k).ready(container(&b, &k)).unwrap();
        }
        let Lookup::Leased(lease) = pool.lease_or_claim(&key("busy")) else {
            panic!()
        };
        let now = Instant::now();
        let timeout = Duration::from_secs(600);
        let expiry = |c: &Container| {
            assert_ne!(c.key.image, "busy", "asked only of idle containers");
            match c.key.image.as_str() {
                "short" => now,
                _ => now + Duration::from_secs(5),
            }
        };
        let (expired, next) = pool.take_expired_at(now, timeout, expiry);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].key.image, "short");
        assert_eq!(next, Some(now + Duration::from_secs(5)));
        drop(lease);
    }

    #[test]
    fn prewarmed_containers_are_evicted_first_and_never_expire() {
        let pool = Pool::new();
        let b = budget();
        for name in ["pre-a", "plain"] {
            let k = key(name);
            claim(&pool, &k).ready(container(&b, &k)).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        // "plain" is the least recently used, yet the prewarmed one goes first...
        drop(match pool.lease_or_claim(&key("pre-a")) {
            Lookup::Leased(l) => l,
            _ => panic!(),
        });
        let later = Instant::now() + Duration::from_secs(3600);
        // ...and idle expiry never takes it.
        let (expired, _) = pool.take_expired(later, Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].key.image, "plain");
        assert!(pool.claim_if_absent(&key("pre-a")).is_none(), "present");
        assert_eq!(pool.take_lru_idle().unwrap().key.image, "pre-a");
        assert!(pool.claim_if_absent(&key("pre-a")).is_some(), "absent now");
    }

    #[test]
    fn start_finishing_after_take_all_is_handed_back() {
        let pool = Pool::new();
        let b = budget();
        let k = key("a");
        let ticket = claim(&pool, &k);
        assert!(pool.take_all().is_empty());
        let back = ticket.ready(container(&b, &k)).unwrap_err();
        assert_eq!(back.key, k);
        assert_eq!(pool.counts(), PoolCounts::default());
        drop(back);
        assert_eq!(b.snapshot().used.milli_cpu, 0);
    }

    #[test]
    fn reconciliation_takes_only_containers_that_stopped() {
        let pool = Pool::new();
        let b = budget();
        for name in ["a", "b"] {
            let k = key(name);
            claim(&pool, &k).ready(container(&b, &k)).unwrap();
        }
        let running = BTreeSet::from(["id-a".to_string()]);
        let candidates = pool.ready_ids();
        let gone = pool.take_unless_running(&candidates, &running);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, "id-b");
        assert!(pool.take_by_id("id-b").is_none());
        assert_eq!(pool.take_by_id("id-a").unwrap().id, "id-a");
        assert_eq!(pool.counts(), PoolCounts::default());
    }

    #[test]
    fn broken_container_taken_once() {
        let pool = Pool::new();
        let b = budget();
        let k = key("a");
        claim(&pool, &k).ready(container(&b, &k)).unwrap();
        let Lookup::Leased(lease) = pool.lease_or_claim(&k) else {
            panic!()
        };
        assert!(pool.take_if_current(lease.container()));
        assert!(!pool.take_if_current(lease.container()));
        assert!(matches!(pool.lease_or_claim(&k), Lookup::Claimed(_)));
    }
}
