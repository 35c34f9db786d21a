//! Network sandboxes: small holder containers that own a task's network namespace and the
//! only way into it. Every task container joins one (`container:<holder>`). Under
//! `task_network: isolated` a holder has no network but loopback, so its task can open no
//! connection to anything; under `internet` it sits on a bridge with every private,
//! link-local and host destination unroutable (set by the holder before any task joins).
//! The executor reaches a task only through its holder's relay, a Unix socket in this
//! instance's socket directory. Holders are kept started ahead (`sandbox_pool`), so a cold
//! start also skips Docker's network setup (the Kubernetes pod-sandbox pattern), and reused
//! by the next task once their task is removed.
//!
//! Owns the socket directory of this instance, the free holders, which holders are in use,
//! and the keeper that refills the pool in the background (one holder at a time, up to
//! `sandbox_pool`, each in its turn among the refills: never begun while a request's start
//! is in flight, see `refills`) and removes holders that are discarded. A start that finds
//! no free holder starts one of its own ([`Sandboxes::start_own`]). A holder is handed out as a
//! [`SandboxLease`] that the task's container keeps; it goes back to the pool only when the
//! engine removed that task container ([`SandboxLease::mark_reusable`]), so a holder never
//! serves two live tasks at once. A holder whose state is unknown (its task failed to start,
//! its removal failed or was retried, the holder itself died) is removed instead. Holders
//! are outside the task budget: each is limited to `sandbox_memory_mb`. They carry the
//! executor's labels, so the stop sweep and the start-up orphan cleanup remove them like
//! tasks. This module never touches the pool or the budget.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::context::Context;
use super::error::ExecError;
use crate::config::TaskNetwork;
use crate::engine::{
    HolderSpec, SandboxNetwork, SandboxRef, TaskAddr, LABEL_EXECUTOR, LABEL_INSTANCE, LABEL_ROLE,
    ROLE_SANDBOX,
};

/// After the holder image or a holder fails to start, wait before trying again: 1 s,
/// doubling with each failure in a row, at most 30 s.
const FAILURE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    free: Vec<SandboxRef>,
    in_use: HashSet<String>,
    /// Holders in use that the engine reported gone: discarded when their task leaves.
    gone: HashSet<String>,
    /// Holders to remove (the keeper does).
    discard: Vec<SandboxRef>,
    /// Holder starts in progress.
    starting: usize,
    /// False while paused or stopping: nothing is handed out or started, returns are removed.
    enabled: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the keeper: a holder was taken or discarded, or the pool was re-enabled.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section below can panic half-way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A holder lent to one task container. Dropping it gives the holder back to the pool if
/// [`mark_reusable`](Self::mark_reusable) was called (the task container is gone), and has
/// it removed otherwise.
#[derive(Debug)]
pub struct SandboxLease {
    holder: SandboxRef,
    home: Arc<Shared>,
    reusable: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandboxes")
    }
}

impl SandboxLease {
    pub fn holder(&self) -> &SandboxRef {
        &self.holder
    }

    /// The engine removed the task container that used this holder: its namespace holds
    /// no process and no socket of that task any more.
    pub fn mark_reusable(&self) {
        self.reusable.store(true, Ordering::Release);
    }
}

impl Drop for SandboxLease {
    fn drop(&mut self) {
        let mut state = self.home.lock();
        let id = &self.holder.id;
        state.in_use.remove(id);
        let gone = state.gone.remove(id);
        if self.reusable.load(Ordering::Acquire) && state.enabled && !gone {
            state.free.push(self.holder.clone());
        } else {
            state.discard.push(self.holder.clone());
        }
        drop(state);
        self.home.wake.notify_one();
    }
}

pub(super) struct Sandboxes {
    ctx: Context,
    shared: Arc<Shared>,
    /// Holder starts in progress; pause and stop wait for them.
    starts: TaskTracker,
    /// The holder image is present (imported once).
    image_ready: AtomicBool,
    /// The holder image's name.
    image: String,
    /// This instance's socket directory (removed at shutdown).
    dir: PathBuf,
    /// What every holder's namespace is connected to.
    network: SandboxNetwork,
}

/// FNV-1a: a stable fingerprint, not a security measure.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The holder image's name: its tag is derived from the holder program, so a changed
/// program is imported afresh.
fn holder_image() -> String {
    let hash = fingerprint(crate::engine::holder::holder_program());
    format!("mecanywhere-executor-sandbox:{hash:016x}")
}

/// The longest socket path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Destinations a task never reaches under `task_network: internet` (IPv4; IPv6 is off in
/// its namespace): this network, the private, shared and link-local ranges, loopback (of
/// the host: the namespace's own loopback stays), multicast, and the reserved ones.
pub const BLOCKED_FOR_INTERNET: [&str; 12] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
];

impl Sandboxes {
    /// Makes the sandboxes ready, or says why this engine cannot isolate tasks as
    /// configured: creates this instance's socket directory (removing those that earlier
    /// instances of the same name left), has the engine share it, imports the holder image,
    /// and starts one holder to prove the whole path; it becomes the pool's first. Under
    /// `internet`, the host's own addresses are asked of the engine: unreachable too.
    /// The holder image's name (never removed by image_gc).
    pub(super) fn holder_image(&self) -> &str {
        &self.image
    }

    pub(super) async fn prepare(ctx: Context) -> Result<Sandboxes, ExecError> {
        let config = ctx.config();
        let base = config
            .socket_dir
            .clone()
            .unwrap_or_else(crate::config::default_socket_dir);
        let prefix = format!("{:08x}.", fingerprint(config.name.as_bytes()) as u32);
        let dir = base.join(format!("{prefix}{}", &ctx.instance[..8]));
        let refused = |what: String| {
            ExecError::Engine(crate::engine::EngineError::Api(format!(
                "cannot isolate tasks (task_network: {}): {what}",
                config.task_network
            )))
        };
        // A holder's socket path: the directory, '/', and 8 hex digits.
        if dir.as_os_str().len() + 9 > MAX_SOCKET_PATH {
            return Err(refused(format!(
                "socket_dir {} is too long for Unix socket paths: use a shorter one",
                base.display()
            )));
        }
        let on_disk = ctx.engine.sockets_on_disk();
        if on_disk {
            remove_stale_dirs(&base, &prefix);
            create_private_dir(&dir)
                .map_err(|e| refused(format!("socket directory {}: {e}", dir.display())))?;
        }
        let image = holder_image();
        let network = match config.task_network {
            TaskNetwork::Isolated => SandboxNetwork::None,
            TaskNetwork::Internet => {
                let host_addrs = async {
                    ctx.engine.ensure_holder_image(&image).await?;
                    ctx.engine.host_addresses(&image, &ctx.own_labels()).await
                };
                let host_addrs = host_addrs
                    .await
                    .map_err(|e| refused(format!("the host's addresses: {e}")))?;
                let mut blocked: Vec<String> =
                    BLOCKED_FOR_INTERNET.iter().map(|p| p.to_string()).collect();
                blocked.extend(host_addrs.iter().map(|a| format!("{a}/32")));
                SandboxNetwork::Egress {
                    network: config.network.clone(),
                    blocked,
                }
            }
        };
        let sandboxes = Sandboxes {
            ctx,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    enabled: true,
                    ..State::default()
                }),
                wake: Notify::new(),
            }),
            starts: TaskTracker::new(),
            image_ready: AtomicBool::new(false),
            image,
            dir,
            network,
        };
        let engine = &sandboxes.ctx.engine;
        let proven = async {
            engine.prepare_sandboxes(&sandboxes.dir).await?;
            engine.ensure_holder_image(&sandboxes.image).await?;
            sandboxes.image_ready.store(true, Ordering::Release);
            engine.start_holder(&sandboxes.holder_spec()).await
        };
        match proven.await {
            Ok(holder) => {
                let mut state = sandboxes.shared.lock();
                if config.sandbox_pool > 0 {
                    state.free.push(holder);
                } else {
                    state.discard.push(holder);
                }
            }
            Err(e) => {
                sandboxes.remove_dir();
                return Err(refused(e.to_string()));
            }
        }
        tracing::info!(
            task_network = %config.task_network,
            dir = %sandboxes.dir.display(),
            "tasks are isolated: each in a sandbox {}, reached by the executor only through \
             the sandbox's socket",
            match config.task_network {
                TaskNetwork::Isolated => "with no network but loopback",
                TaskNetwork::Internet => "that reaches the public internet only",
            }
        );
        Ok(sandboxes)
    }

    /// Removes this instance's socket directory (at shutdown).
    pub(super) fn remove_dir(&self) {
        if !self.ctx.engine.sockets_on_disk() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the socket directory");
            }
        }
    }

    /// A holder started for one start, when none is free: lent like a pooled one.
    pub(super) async fn start_own(&self) -> Result<SandboxLease, ExecError> {
        if !self.shared.lock().enabled {
            return Err(ExecError::Paused);
        }
        if !self.image_ready.load(Ordering::Acquire) {
            self.ctx.engine.ensure_holder_image(&self.image).await?;
            self.image_ready.store(true, Ordering::Release);
        }
        let engine = Arc::clone(&self.ctx.engine);
        let spec = self.holder_spec();
        // Tracked, so that pause and stop wait for it.
        let started = self
            .starts
            .spawn(async move { engine.start_holder(&spec).await })
            .await
            .map_err(|e| {
                ExecError::Engine(crate::engine::EngineError::Api(format!(
                    "sandbox holder start ended abnormally: {e}"
                )))
            })??;
        let mut state = self.shared.lock();
        if !state.enabled {
            state.discard.push(started);
            drop(state);
            self.shared.wake.notify_one();
            return Err(ExecError::Paused);
        }
        state.in_use.insert(started.id.clone());
        drop(state);
        Ok(SandboxLease {
            holder: started,
            home: Arc::clone(&self.shared),
            reusable: AtomicBool::new(false),
        })
    }

    /// A free holder, if one is free.
    pub(super) fn take(&self) -> Option<SandboxLease> {
        let mut state = self.shared.lock();
        if !state.enabled {
            return None;
        }
        let holder = state.free.pop()?;
        state.in_use.insert(holder.id.clone());
        drop(state);
        // Refill.
        self.shared.wake.notify_one();
        Some(SandboxLease {
            holder,
            home: Arc::clone(&self.shared),
            reusable: AtomicBool::new(false),
        })
    }

    /// Free holders and holders in use, for `/metrics`.
    pub(super) fn counts(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.free.len(), state.in_use.len())
    }

    /// The engine says container `id` stopped or left: if it is a holder, it is dropped
    /// from the pool (free) or discarded when its task leaves (in use).
    pub(super) fn holder_gone(&self, id: &str) {
        let mut state = self.shared.lock();
        if let Some(at) = state.free.iter().position(|h| h.id == id) {
            tracing::warn!(container = %id, "sandbox holder stopped outside the executor; dropping it");
            let holder = state.free.swap_remove(at);
            state.discard.push(holder);
            drop(state);
            self.shared.wake.notify_one();
        } else if state.in_use.contains(id) {
            tracing::warn!(container = %id, "sandbox holder stopped outside the executor while its task runs");
            state.gone.insert(id.to_string());
        }
    }

    /// Ids of the free holders now (reconciliation candidates).
    pub(super) fn free_ids(&self) -> BTreeSet<String> {
        self.shared
            .lock()
            .free
            .iter()
            .map(|h| h.id.clone())
            .collect()
    }

    /// Reconciliation: drops the free holders among `candidates` that are not `running`.
    pub(super) fn drop_unless_running(
        &self,
        candidates: &BTreeSet<String>,
        running: &BTreeSet<String>,
    ) {
        for id in candidates.difference(running) {
            self.holder_gone(id);
        }
    }

    /// Pause and stop, first half: nothing is handed out or started any more, and holders
    /// given back are discarded.
    pub(super) fn disable(&self) {
        self.shared.lock().enabled = false;
    }

    /// Pause and stop, second half: waits for holder starts in progress, and removes every
    /// free and discarded holder. Holders in use are removed after their task container.
    pub(super) async fn drain(&self) {
        self.starts.close();
        self.starts.wait().await;
        self.starts.reopen();
        let holders: Vec<SandboxRef> = {
            let mut state = self.shared.lock();
            let mut holders = std::mem::take(&mut state.discard);
            holders.append(&mut state.free);
            holders
        };
        self.remove_all(holders).await;
    }

    /// Unpause: the pool is refilled.
    pub(super) fn enable(&self) {
        self.shared.lock().enabled = true;
        self.shared.wake.notify_one();
    }

    /// Removes holders one at a time: in one run, dockerd 20.10 stopped answering for two
    /// minutes when eight holders were removed at once right after their tasks.
    async fn remove_all(&self, holders: Vec<SandboxRef>) {
        for holder in holders {
            let id = &holder.id;
            match self.ctx.engine.remove(id).await {
                Ok(()) => {
                    if let TaskAddr::Relay(socket) = &holder.addr {
                        let _ = std::fs::remove_file(socket);
                    }
                    tracing::debug!(container = %id, "sandbox holder removed");
                }
                // The stop sweep (by label) removes it at the latest.
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not remove sandbox holder")
                }
            }
        }
    }

    fn holder_spec(&self) -> HolderSpec {
        let config = self.ctx.config();
        let token = uuid::Uuid::new_v4().simple().to_string();
        HolderSpec {
            image: self.image.clone(),
            labels: HashMap::from([
                (LABEL_EXECUTOR.to_string(), config.name.clone()),
                (LABEL_INSTANCE.to_string(), self.ctx.instance.to_string()),
                (LABEL_ROLE.to_string(), ROLE_SANDBOX.to_string()),
            ]),
            network: self.network.clone(),
            socket: self.dir.join(&token[..8]),
            memory_bytes: config.sandbox_memory_mb as i64 * 1024 * 1024,
        }
    }

    /// The keeper: removes discarded holders (and free ones beyond `sandbox_pool`) and keeps
    /// `sandbox_pool` holders free, one start at a time, each in its refill turn. Sleeps
    /// until woken (a holder taken, returned or discarded; unpause); after a failure,
    /// retries after a backoff.
    pub(super) async fn keep_filled(self: Arc<Self>) {
        let image = self.image.clone();
        let mut failed = false;
        let mut backoff_delay = FAILURE_BACKOFF_FIRST;
        loop {
            let woken = self.shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.ctx.closing.is_cancelled() {
                return;
            }
            let target = self.ctx.config().sandbox_pool as usize;
            let discard = {
                let mut state = self.shared.lock();
                // Holders given back beyond the pool's size (their tasks left after the
                // refill) go, oldest first: at most `sandbox_pool` are kept free.
                let surplus = state.free.len().saturating_sub(target);
                let trimmed: Vec<SandboxRef> = state.free.drain(..surplus).collect();
                let mut discard = std::mem::take(&mut state.discard);
                discard.extend(trimmed);
                discard
            };
            self.remove_all(discard).await;
            if target > 0 && !failed && !self.image_ready.load(Ordering::Acquire) {
                match self.ctx.engine.ensure_holder_image(&image).await {
                    Ok(()) => self.image_ready.store(true, Ordering::Release),
                    Err(e) => {
                        tracing::warn!(error = %e, "sandbox holder image unavailable; starts start holders of their own until it is");
                        failed = true;
                    }
                }
            }
            if !failed && self.image_ready.load(Ordering::Acquire) {
                let wanted = |state: &State| {
                    state.enabled
                        && !self.ctx.closing.is_cancelled()
                        && state.free.len() + state.starting < target
                };
                // A refill gives way to requests' starts (see `refills`): it waits for its
                // turn, then checks again whether it is still wanted.
                let turn = if wanted(&self.shared.lock()) {
                    tokio::select! {
                        biased; // In the order written, not at random: a simulated run replays.
                        _ = self.ctx.closing.cancelled() => return,
                        turn = self.ctx.refills.turn() => Some(turn),
                    }
                } else {
                    None
                };
                // Checked and spawned under the lock, so `drain` either waits for this start
                // or keeps it from beginning.
                let start = turn.as_ref().and_then(|_| {
                    let mut state = self.shared.lock();
                    wanted(&state).then(|| {
                        state.starting += 1;
                        let engine = Arc::clone(&self.ctx.engine);
                        let spec = self.holder_spec();
                        self.starts
                            .spawn(async move { engine.start_holder(&spec).await })
                    })
                });
                if let Some(start) = start {
                    let result = start.await;
                    let mut state = self.shared.lock();
                    state.starting -= 1;
                    match result {
                        Ok(Ok(holder)) if state.enabled && state.free.len() < target => {
                            tracing::debug!(container = %holder.id, addr = %holder.addr, "sandbox holder ready");
                            state.free.push(holder);
                            backoff_delay = FAILURE_BACKOFF_FIRST;
                        }
                        Ok(Ok(holder)) => state.discard.push(holder),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not start a sandbox holder; retrying later");
                            // The image may have been removed from outside: imported again.
                            self.image_ready.store(false, Ordering::Release);
                            failed = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "sandbox holder start ended abnormally");
                            failed = true;
                        }
                    }
                    continue;
                }
            }
            let wake_at = failed.then(|| tokio::time::Instant::now() + backoff_delay);
            let backoff = super::background::sleep_until_or_forever(wake_at);
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                _ = self.ctx.closing.cancelled() => return,
                _ = woken => {}
                _ = backoff => {
                    if failed {
                        backoff_delay = (backoff_delay * 2).min(FAILURE_BACKOFF_MAX);
                    }
                    failed = false;
                }
            }
        }
    }
}

/// Creates `dir` (and its parents), readable by this user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes the socket directories in `base` named `prefix*`: left by earlier instances of
/// this name (after a SIGKILL), whose holders the start-up cleanup removes.
fn remove_stale_dirs(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            tracing::info!(dir = %entry.path().display(), "removing a socket directory left by an earlier instance");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
