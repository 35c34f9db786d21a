//! The task budget: how much CPU, memory and which GPUs tasks may hold, and who holds what.
//!
//! Owns the arithmetic of reservations. A [`Reservation`] is an owned value: dropping it
//! gives its resources back and wakes requests waiting for room, so every reservation is
//! released exactly once, on every path. This module never talks to Docker and never
//! decides *what* to evict; the executor does that.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Resources one task container asks for. CPU in milli-cores (1000 = one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Demand {
    pub milli_cpu: u64,
    pub mem_mb: u64,
}

impl std::iter::Sum for Demand {
    fn sum<I: Iterator<Item = Demand>>(demands: I) -> Demand {
        demands.fold(
            Demand {
                milli_cpu: 0,
                mem_mb: 0,
            },
            |d, e| Demand {
                milli_cpu: d.milli_cpu + e.milli_cpu,
                mem_mb: d.mem_mb + e.mem_mb,
            },
        )
    }
}

impl Demand {
    /// What is left of `self` without `other` (never below zero).
    pub fn saturating_sub(self, other: Demand) -> Demand {
        Demand {
            milli_cpu: self.milli_cpu.saturating_sub(other.milli_cpu),
            mem_mb: self.mem_mb.saturating_sub(other.mem_mb),
        }
    }

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
    /// GPUs usable by tasks, and how many of them are reserved.
    pub gpus_total: usize,
    pub gpus_used: usize,
}

#[derive(Debug)]
struct Inner {
    total: Demand,
    used: Demand,
    /// UUIDs of the GPUs tasks may use, in index order.
    gpus: Vec<String>,
    gpus_reserved: HashSet<String>,
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
                gpus: Vec::new(),
                gpus_reserved: HashSet::new(),
            }),
            released: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections below cannot panic, so a poisoned lock still holds sane numbers.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `demand` and `gpus` GPUs could ever fit, with nothing else reserved.
    pub fn can_ever_fit(&self, demand: Demand, gpus: u32) -> bool {
        let inner = self.lock();
        demand.milli_cpu <= inner.total.milli_cpu
            && demand.mem_mb <= inner.total.mem_mb
            && gpus as usize <= inner.gpus.len()
    }

    /// Whether `demand` (no GPUs) fits in the room free now.
    pub fn fits_now(&self, demand: Demand) -> bool {
        let inner = self.lock();
        inner.used.milli_cpu + demand.milli_cpu <= inner.total.milli_cpu
            && inner.used.mem_mb + demand.mem_mb <= inner.total.mem_mb
    }

    /// Reserves `demand` (no GPUs) if it fits now.
    pub fn try_reserve(self: &Arc<Self>, demand: Demand) -> Option<Reservation> {
        self.try_reserve_with_gpus(demand, 0, |_| true)
    }

    /// Reserves `demand` and `gpus` whole GPUs that no task holds and that `gpu_idle` calls
    /// idle (lowest index first), if all of it fits now.
    pub fn try_reserve_with_gpus(
        self: &Arc<Self>,
        demand: Demand,
        gpus: u32,
        gpu_idle: impl Fn(&str) -> bool,
    ) -> Option<Reservation> {
        let mut inner = self.lock();
        let cpu = inner.used.milli_cpu + demand.milli_cpu;
        let mem = inner.used.mem_mb + demand.mem_mb;
        if cpu > inner.total.milli_cpu || mem > inner.total.mem_mb {
            return None;
        }
        let chosen: Vec<String> = inner
            .gpus
            .iter()
            .filter(|uuid| !inner.gpus_reserved.contains(*uuid) && gpu_idle(uuid))
            .take(gpus as usize)
            .cloned()
            .collect();
        if chosen.len() < gpus as usize {
            return None;
        }
        inner.used = Demand {
            milli_cpu: cpu,
            mem_mb: mem,
        };
        inner.gpus_reserved.extend(chosen.iter().cloned());
        Some(Reservation {
            budget: Arc::clone(self),
            demand,
            gpus: chosen,
        })
    }

    /// Sets the GPUs tasks may use (UUIDs in index order). Current reservations stay valid.
    pub fn set_gpus(&self, gpus: Vec<String>) {
        self.lock().gpus = gpus;
        self.released.notify_waiters();
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
            gpus_total: inner.gpus.len(),
            gpus_used: inner.gpus_reserved.len(),
        }
    }
}

/// Resources held by one task container; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    demand: Demand,
    gpus: Vec<String>,
}

impl Reservation {
    pub fn demand(&self) -> Demand {
        self.demand
    }

    /// UUIDs of the reserved GPUs.
    pub fn gpus(&self) -> &[String] {
        &self.gpus
    }

    /// Changes what this reservation holds to `demand`, atomically: what it gives back is
    /// released, what it takes in addition must fit now. False (nothing changed) otherwise.
    pub fn resize(&mut self, demand: Demand) -> bool {
        let mut inner = self.budget.lock();
        let cpu = inner.used.milli_cpu - self.demand.milli_cpu + demand.milli_cpu;
        let mem = inner.used.mem_mb - self.demand.mem_mb + demand.mem_mb;
        let grows = demand.milli_cpu > self.demand.milli_cpu || demand.mem_mb > self.demand.mem_mb;
        if grows && (cpu > inner.total.milli_cpu || mem > inner.total.mem_mb) {
            return false;
        }
        let shrinks =
            demand.milli_cpu < self.demand.milli_cpu || demand.mem_mb < self.demand.mem_mb;
        inner.used = Demand {
            milli_cpu: cpu,
            mem_mb: mem,
        };
        drop(inner);
        self.demand = demand;
        if shrinks {
            self.budget.released.notify_waiters();
        }
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut inner = self.budget.lock();
            inner.used.milli_cpu -= self.demand.milli_cpu;
            inner.used.mem_mb -= self.demand.mem_mb;
            for uuid in &self.gpus {
                inner.gpus_reserved.remove(uuid);
            }
        }
        self.budget.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_grows_only_into_free_room_and_gives_back_what_it_shrinks() {
        let budget = Budget::new(Demand {
            milli_cpu: 2000,
            mem_mb: 1000,
        });
        let mut r = budget
            .try_reserve(Demand {
                milli_cpu: 1000,
                mem_mb: 500,
            })
            .unwrap();
        let _other = budget
            .try_reserve(Demand {
                milli_cpu: 500,
                mem_mb: 250,
            })
            .unwrap();
        // 500 m and 250 MB are free: growing past that fails and changes nothing.
        assert!(!r.resize(Demand {
            milli_cpu: 1600,
            mem_mb: 500
        }));
        assert_eq!(budget.snapshot().used.milli_cpu, 1500);
        assert!(r.resize(Demand {
            milli_cpu: 1500,
            mem_mb: 750
        }));
        assert_eq!(
            budget.snapshot().used,
            Demand {
                milli_cpu: 2000,
                mem_mb: 1000
            }
        );
        // Shrinking always fits, even in a full budget.
        assert!(r.resize(Demand {
            milli_cpu: 100,
            mem_mb: 10
        }));
        assert_eq!(r.demand().mem_mb, 10);
        drop(r);
        assert_eq!(budget.snapshot().used.mem_mb, 250);
    }

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
        assert!(b.can_ever_fit(d(2000, 1024), 0));
        assert!(!b.can_ever_fit(d(2001, 1), 0));
        assert!(!b.can_ever_fit(d(1, 1025), 0));
        assert!(!b.can_ever_fit(d(1, 1), 1), "no GPUs");
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

    fn gpu_budget() -> Arc<Budget> {
        let b = Budget::new(d(8000, 8192));
        b.set_gpus(vec!["GPU-a".into(), "GPU-b".into(), "GPU-c".into()]);
        b
    }

    #[test]
    fn gpus_are_reserved_whole_by_uuid_lowest_index_first() {
        let b = gpu_budget();
        let r1 = b.try_reserve_with_gpus(d(100, 1), 2, |_| true).unwrap();
        assert_eq!(r1.gpus(), ["GPU-a", "GPU-b"]);
        let r2 = b.try_reserve_with_gpus(d(100, 1), 1, |_| true).unwrap();
        assert_eq!(r2.gpus(), ["GPU-c"]);
        assert!(
            b.try_reserve_with_gpus(d(100, 1), 1, |_| true).is_none(),
            "all reserved"
        );
        assert_eq!(b.snapshot().gpus_used, 3);
        drop(r1);
        assert_eq!(b.snapshot().gpus_used, 1);
        let r3 = b.try_reserve_with_gpus(d(100, 1), 2, |_| true).unwrap();
        assert_eq!(r3.gpus(), ["GPU-a", "GPU-b"], "released GPUs are reused");
    }

    #[test]
    fn busy_gpus_are_skipped() {
        let b = gpu_budget();
        let r = b
            .try_reserve_with_gpus(d(100, 1), 2, |uuid| uuid != "GPU-a")
            .unwrap();
        assert_eq!(r.gpus(), ["GPU-b", "GPU-c"]);
        assert!(b
            .try_reserve_with_gpus(d(100, 1), 1, |uuid| uuid != "GPU-a")
            .is_none());
    }

    #[test]
    fn a_failed_gpu_reservation_holds_nothing() {
        let b = gpu_budget();
        assert!(b.try_reserve_with_gpus(d(100, 1), 4, |_| true).is_none());
        assert!(!b.can_ever_fit(d(100, 1), 4));
        let snap = b.snapshot();
        assert_eq!((snap.used, snap.gpus_used), (d(0, 0), 0));
        // CPU that does not fit also reserves no GPU.
        assert!(b.try_reserve_with_gpus(d(9000, 1), 1, |_| true).is_none());
        assert_eq!(b.snapshot().gpus_used, 0);
    }
}
