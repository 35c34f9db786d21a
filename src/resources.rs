//! The task budget: how much CPU and memory tasks may hold, and who holds what.
//!
//! Owns the arithmetic of reservations. A [`Reservation`] is an owned value: dropping it
//! gives its resources back and wakes requests waiting for room, so every reservation is
//! released exactly once, on every path. This module never talks to Docker and never
//! decides *what* to evict; the executor does that.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Resources one task container asks for. CPU in milli-cores (1000 = one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Demand {
    pub milli_cpu: u64,
    pub mem_mb: u64,
}

impl Demand {
    /// The demand in cores, as a float.
    pub fn cores(&self) -> f64 {
        self.milli_cpu as f64 / 1000.0
    }
}

/// Converts cores (e.g. `0.5`) to milli-cores, rounding to the nearest milli-core.
pub fn cores_to_milli(cores: f64) -> u64 {
    (cores * 1000.0).round().max(0.0) as u64
}

/// A point-in-time view of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSnapshot {
    pub total: Demand,
    pub used: Demand,
}

#[derive(Debug)]
struct Inner {
    total: Demand,
    used: Demand,
}

/// The shared budget. Cheap to clone through `Arc`.
#[derive(Debug)]
pub struct Budget {
    inner: Mutex<Inner>,
    released: Notify,
}

impl Budget {
    pub fn new(total: Demand) -> Arc<Budget> {
        Arc::new(Budget {
            inner: Mutex::new(Inner {
                total,
                used: Demand {
                    milli_cpu: 0,
                    mem_mb: 0,
                },
            }),
            released: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections below cannot panic, so a poisoned lock still holds sane numbers.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `demand` could ever fit, with nothing else reserved.
    pub fn can_ever_fit(&self, demand: Demand) -> bool {
        let inner = self.lock();
        demand.milli_cpu <= inner.total.milli_cpu && demand.mem_mb <= inner.total.mem_mb
    }

    /// Reserves `demand` if it fits now.
    pub fn try_reserve(self: &Arc<Self>, demand: Demand) -> Option<Reservation> {
        let mut inner = self.lock();
        let cpu = inner.used.milli_cpu + demand.milli_cpu;
        let mem = inner.used.mem_mb + demand.mem_mb;
        if cpu > inner.total.milli_cpu || mem > inner.total.mem_mb {
            return None;
        }
        inner.used = Demand {
            milli_cpu: cpu,
            mem_mb: mem,
        };
        Some(Reservation {
            budget: Arc::clone(self),
            demand,
        })
    }

    /// A future that completes at the next release. Create it *before* a failed
    /// [`try_reserve`](Self::try_reserve) and await it after, so no release is missed.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Changes the totals (while paused). Current reservations stay valid.
    pub fn set_total(&self, total: Demand) {
        self.lock().total = total;
        self.released.notify_waiters();
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let inner = self.lock();
        BudgetSnapshot {
            total: inner.total,
            used: inner.used,
        }
    }
}

/// Resources held by one task container; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    demand: Demand,
}

impl Reservation {
    pub fn demand(&self) -> Demand {
        self.demand
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut inner = self.budget.lock();
            inner.used.milli_cpu -= self.demand.milli_cpu;
            inner.used.mem_mb -= self.demand.mem_mb;
        }
        self.budget.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(milli_cpu: u64, mem_mb: u64) -> Demand {
        Demand { milli_cpu, mem_mb }
    }

    #[test]
    fn reserve_until_full_then_release_on_drop() {
        let b = Budget::new(d(2000, 1024));
        let a = b.try_reserve(d(1500, 512)).unwrap();
        assert!(b.try_reserve(d(1000, 128)).is_none(), "cpu would overflow");
        let c = b.try_reserve(d(500, 512)).unwrap();
        assert!(b.try_reserve(d(1, 1)).is_none(), "budget is full");
        assert_eq!(b.snapshot().used, d(2000, 1024));
        drop(a);
        assert_eq!(b.snapshot().used, d(500, 512));
        drop(c);
        assert_eq!(b.snapshot().used, d(0, 0));
    }

    #[test]
    fn fractional_cores() {
        assert_eq!(cores_to_milli(0.5), 500);
        assert_eq!(cores_to_milli(1.1), 1100);
        let b = Budget::new(d(cores_to_milli(1.0), 256));
        let _x = b.try_reserve(d(500, 128)).unwrap();
        let _y = b.try_reserve(d(500, 128)).unwrap();
        assert!(b.try_reserve(d(100, 0)).is_none());
    }

    #[test]
    fn can_ever_fit_compares_with_total() {
        let b = Budget::new(d(2000, 1024));
        assert!(b.can_ever_fit(d(2000, 1024)));
        assert!(!b.can_ever_fit(d(2001, 1)));
        assert!(!b.can_ever_fit(d(1, 1025)));
    }

    #[tokio::test]
    async fn release_wakes_a_waiter() {
        let b = Budget::new(d(1000, 100));
        let held = b.try_reserve(d(1000, 100)).unwrap();
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move {
            loop {
                let released = b2.released();
                tokio::pin!(released);
                released.as_mut().enable();
                if let Some(r) = b2.try_reserve(d(1000, 100)) {
                    return r.demand();
                }
                released.await;
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert_eq!(got, d(1000, 100));
        assert_eq!(b.snapshot().used, d(0, 0));
    }

    #[test]
    fn shrinking_total_keeps_reservations() {
        let b = Budget::new(d(4000, 4096));
        let r = b.try_reserve(d(3000, 1024)).unwrap();
        b.set_total(d(2000, 2048));
        assert!(b.try_reserve(d(100, 1)).is_none());
        drop(r);
        assert!(b.try_reserve(d(2000, 2048)).is_some());
    }
}
