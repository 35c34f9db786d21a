//! An in-memory [`Engine`] for testing the executor's *policy* (admission, eviction, single
//! flight, queueing, reaping, prewarm) on tokio's virtual clock, with scripted delays and
//! faults. It proves nothing about Docker: what Docker does is tested against a real dockerd,
//! and `tests/engine_contract.rs` holds this engine to what the Docker engine does wherever
//! the executor can see it through the trait (exit states, listings, events, errors).
//!
//! Owns a table of fake images and containers. Every delay is a `tokio::time::sleep`, so
//! under a paused clock (`start_paused`) a scenario of minutes runs in milliseconds, the same
//! way each time. A task's behaviour at start is its image's [`ImageScript`]; its behaviour
//! on a call is chosen by the input ([`TaskInput`]), like the `misbehave` test task's modes.
//! It must not be used by the executor binary.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::{
    ContainerSpec, Engine, EngineError, ExitState, Filesystem, HolderSpec, SandboxRef, StoredImage,
    TaskAddr,
};
use crate::pull_progress::{LayerEvent, PullProgress};
use crate::task::Call;
use crate::task_client::{Answer, CallError, TaskCall};

/// How the task of an image starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScript {
    /// Present on the host at first (else pulled on first use).
    pub present: bool,
    /// How long a pull takes; `None`: the pull fails.
    pub pull: Option<Duration>,
    /// What happens after the container starts.
    pub start: StartScript,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartScript {
    /// Prints the ready line after this long.
    Ready(Duration),
    /// Exits with this code after this long, before the ready line.
    Exit(Duration, i64),
    /// Runs, but never prints the ready line.
    NeverReady,
    /// Prints the ready line after this long, but never listens on its port (so it never
    /// becomes ready: [`MemContainer::became_ready`] stays false).
    ReadyNotListening(Duration),
}

impl Default for ImageScript {
    fn default() -> Self {
        ImageScript {
            present: true,
            pull: Some(Duration::from_secs(1)),
            start: StartScript::Ready(Duration::from_millis(200)),
        }
    }
}

/// What a task does with one call, chosen by its input: `ok`, `slow:<ms>`, `crash`, `oom`,
/// `hang`, or anything else (answered at once, echoing the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskInput {
    /// Answers after this long.
    Answer(Duration),
    /// Exits with code 3 without answering.
    Crash,
    /// Is killed for running out of memory, without answering.
    Oom,
    /// Never answers.
    Hang,
}

impl TaskInput {
    pub fn parse(input: &[u8]) -> TaskInput {
        match input {
            b"crash" => TaskInput::Crash,
            b"oom" => TaskInput::Oom,
            b"hang" => TaskInput::Hang,
            other => {
                let ms = std::str::from_utf8(other)
                    .ok()
                    .and_then(|s| s.strip_prefix("slow:"))
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                TaskInput::Answer(Duration::from_millis(ms))
            }
        }
    }
}

/// One fake container, for the tests to inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct MemContainer {
    pub id: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub milli_cpu: u64,
    pub mem_mb: u64,
    pub state: MemState,
    /// Calls the task received.
    pub calls: u64,
    /// Whether it printed the ready line.
    pub became_ready: bool,
    /// When it was created (virtual time under a paused clock).
    pub created_at: tokio::time::Instant,
    /// A sandbox holder (outside the task budget), not a task.
    pub holder: bool,
    /// The sandbox holder whose network it joined.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemState {
    Created,
    Running,
    Exited(ExitState),
}

/// A container that left the engine, with what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    pub container: MemContainer,
    /// Removed by [`MemoryEngine::kill_from_outside`], not by the executor.
    pub from_outside: bool,
    pub removed_at: tokio::time::Instant,
}

#[derive(Default)]
struct State {
    images: HashMap<String, ImageScript>,
    /// Bytes an image takes on disk, where a test set it ([`DEFAULT_IMAGE_BYTES`] else).
    image_bytes: HashMap<String, u64>,
    containers: HashMap<String, MemContainer>,
    removed: Vec<Removed>,
    next_id: u64,
    unreachable: bool,
    /// Removals that fail from now on, before they succeed again.
    failing_removals: u32,
    /// How long a removal and a kill take.
    remove_delay: Duration,
    kill_delay: Duration,
    pulls_now: usize,
    pulls_max: usize,
    pulls_total: usize,
    /// Tasks created in a sandbox that another task still occupied.
    sandbox_conflicts: u64,
    /// [`Engine::prepare_sandboxes`] was called: holders may start.
    sandboxes_prepared: bool,
}

impl MemContainer {
    /// A container of `image` created now, with no id yet ([`State::add`] gives it one),
    /// no resources, not running.
    fn new(image: &str, labels: &HashMap<String, String>) -> MemContainer {
        MemContainer {
            id: String::new(),
            image: image.to_string(),
            labels: labels.clone(),
            milli_cpu: 0,
            mem_mb: 0,
            state: MemState::Created,
            calls: 0,
            became_ready: false,
            created_at: tokio::time::Instant::now(),
            holder: false,
            sandbox: None,
        }
    }

    /// How it ends with `code` (killed by its memory limit if `oom_killed`): with its memory
    /// limit, as Docker reports it.
    fn ending(&self, code: i64, oom_killed: bool) -> ExitState {
        ExitState {
            code,
            oom_killed,
            memory_limit_mb: (self.mem_mb > 0).then_some(self.mem_mb),
            node_lost: false,
        }
    }
}

impl State {
    /// What `image` takes on disk.
    fn bytes_of(&self, image: &str) -> u64 {
        self.image_bytes
            .get(image)
            .copied()
            .unwrap_or(DEFAULT_IMAGE_BYTES)
    }

    /// Adds `container` under the next id; returns the id.
    fn add(&mut self, mut container: MemContainer) -> String {
        self.next_id += 1;
        let id = format!("mem-{:04}", self.next_id);
        container.id = id.clone();
        self.containers.insert(id.clone(), container);
        id
    }
}

/// What the event stream carries: a container that stopped or left, or a lost connection.
#[derive(Clone, Debug)]
enum Event {
    Exit {
        id: String,
        labels: HashMap<String, String>,
    },
    Disconnected,
}

/// What an image takes on disk unless [`MemoryEngine::set_image_bytes`] says otherwise.
pub const DEFAULT_IMAGE_BYTES: u64 = 10_000_000;
/// The size of the in-memory engine's image filesystem.
pub const DISK_BYTES: u64 = 100_000_000_000;

/// The in-memory engine. Clones share one state.
#[derive(Clone)]
pub struct MemoryEngine {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    runtimes: Vec<String>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine::new()
    }
}

fn unreachable_error() -> EngineError {
    EngineError::Unreachable("the in-memory engine is unreachable (injected)".into())
}

impl MemoryEngine {
    pub fn new() -> MemoryEngine {
        MemoryEngine {
            state: Arc::new(Mutex::new(State::default())),
            events: broadcast::channel(4096).0,
            runtimes: vec!["runc".into()],
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares an image and how its task starts.
    pub fn add_image(&self, image: &str, script: ImageScript) {
        self.lock().images.insert(image.to_string(), script);
    }

    /// Sets what `image` takes on disk.
    pub fn set_image_bytes(&self, image: &str, bytes: u64) {
        self.lock().image_bytes.insert(image.to_string(), bytes);
    }

    /// Makes every engine call fail (and the event stream break) until called with false.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
        if unreachable {
            let _ = self.events.send(Event::Disconnected);
        }
    }

    /// Makes removals take `remove` and kills `kill` (Docker: tens of ms to seconds).
    pub fn set_delays(&self, remove: Duration, kill: Duration) {
        let mut state = self.lock();
        state.remove_delay = remove;
        state.kill_delay = kill;
    }

    /// Makes the next `n` removals fail (the container stays).
    pub fn fail_removals(&self, n: u32) {
        self.lock().failing_removals = n;
    }

    /// Removes a container as `docker rm -f` from outside would. False if there was none.
    pub fn kill_from_outside(&self, id: &str) -> bool {
        let mut state = self.lock();
        let Some(container) = state.containers.remove(id) else {
            return false;
        };
        let labels = container.labels.clone();
        state.removed.push(Removed {
            container,
            from_outside: true,
            removed_at: tokio::time::Instant::now(),
        });
        drop(state);
        let _ = self.events.send(Event::Exit {
            id: id.to_string(),
            labels,
        });
        true
    }

    /// The containers in the engine now (any state).
    pub fn containers(&self) -> Vec<MemContainer> {
        let mut list: Vec<MemContainer> = self.lock().containers.values().cloned().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Every container removed so far, in order.
    pub fn removed(&self) -> Vec<Removed> {
        self.lock().removed.clone()
    }

    /// Pulls running now, the most that ever ran at once, and how many there were.
    pub fn pulls(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.pulls_now, state.pulls_max, state.pulls_total)
    }

    /// How often a task was created in a sandbox another task still occupied (never, if
    /// the executor's sandbox pool is right).
    pub fn sandbox_conflicts(&self) -> u64 {
        self.lock().sandbox_conflicts
    }

    /// Milli-cores and MB of the live task containers: created or running, not exited (a
    /// killed container holds no resources, even before it is removed). Sandbox holders are
    /// outside the task budget and not counted.
    pub fn live_demand(&self) -> (u64, u64) {
        self.lock()
            .containers
            .values()
            .filter(|x| !x.holder && !matches!(x.state, MemState::Exited(_)))
            .fold((0, 0), |(c, m), x| (c + x.milli_cpu, m + x.mem_mb))
    }

    fn check_reachable(&self) -> Result<(), EngineError> {
        if self.lock().unreachable {
            Err(unreachable_error())
        } else {
            Ok(())
        }
    }

    /// Marks a running container exited with `code` (killed by its memory limit if
    /// `oom_killed`) and tells the event stream; returns how it ended.
    fn exit(&self, id: &str, code: i64, oom_killed: bool) -> Option<ExitState> {
        let mut guard = self.lock();
        let container = guard.containers.get_mut(id)?;
        let state = container.ending(code, oom_killed);
        container.state = MemState::Exited(state);
        let labels = container.labels.clone();
        drop(guard);
        let _ = self.events.send(Event::Exit {
            id: id.to_string(),
            labels,
        });
        Some(state)
    }

    fn running(&self, id: &str) -> bool {
        matches!(
            self.lock().containers.get(id).map(|c| c.state),
            Some(MemState::Running)
        )
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        self.check_reachable()?;
        Ok(self.lock().images.get(image).is_some_and(|s| s.present))
    }

    async fn pull(&self, image: &str, progress: &PullProgress) -> Result<(), EngineError> {
        self.check_reachable()?;
        let script = self.lock().images.get(image).cloned();
        let unavailable = |detail: &str| EngineError::ImageUnavailable {
            image: image.to_string(),
            detail: detail.to_string(),
        };
        let Some(script) = script else {
            return Err(unavailable("no such image in the registry"));
        };
        {
            let mut state = self.lock();
            state.pulls_now += 1;
            state.pulls_total += 1;
            state.pulls_max = state.pulls_max.max(state.pulls_now);
        }
        struct Done<'a>(&'a MemoryEngine);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.lock().pulls_now -= 1;
            }
        }
        let _done = Done(self);
        match script.pull {
            Some(after) => {
                // One layer, known at once, in place when the pull ends.
                progress.layer("layer-0", LayerEvent::Known);
                tokio::time::sleep(after).await;
                progress.layer("layer-0", LayerEvent::Done);
                if let Some(s) = self.lock().images.get_mut(image) {
                    s.present = true;
                }
                Ok(())
            }
            None => Err(unavailable("pull refused (scripted)")),
        }
    }

    async fn stored_images(&self) -> Result<Vec<StoredImage>, EngineError> {
        self.check_reachable()?;
        let state = self.lock();
        let mut stored: Vec<StoredImage> = state
            .images
            .iter()
            .filter(|(_, script)| script.present)
            .map(|(name, _)| StoredImage {
                id: format!("sha256:mem-{name}"),
                names: vec![name.clone()],
                size: state.bytes_of(name),
                shared: 0,
                containers: state
                    .containers
                    .values()
                    .filter(|c| &c.image == name)
                    .count() as u64,
                created: 0,
            })
            .collect();
        stored.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(stored)
    }

    async fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        self.check_reachable()?;
        let mut state = self.lock();
        if state.containers.values().any(|c| c.image == name) {
            return Err(EngineError::ImageInUse(name.to_string()));
        }
        if let Some(script) = state.images.get_mut(name) {
            script.present = false;
        }
        Ok(())
    }

    async fn image_root(&self) -> Result<PathBuf, EngineError> {
        self.check_reachable()?;
        Ok(PathBuf::from("/var/lib/docker"))
    }

    async fn image_filesystem(
        &self,
        holder_image: &str,
        _labels: &HashMap<String, String>,
    ) -> Result<Filesystem, EngineError> {
        self.check_reachable()?;
        let state = self.lock();
        if !state.images.get(holder_image).is_some_and(|s| s.present) {
            return Err(EngineError::Api(format!("No such image: {holder_image}")));
        }
        let held: u64 = state
            .images
            .iter()
            .filter(|(_, script)| script.present)
            .map(|(name, _)| state.bytes_of(name))
            .sum();
        Ok(Filesystem {
            total_bytes: DISK_BYTES,
            free_bytes: DISK_BYTES.saturating_sub(held),
            available_bytes: DISK_BYTES.saturating_sub(held),
            fsid: 1,
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.check_reachable()?;
        let mut state = self.lock();
        if !state.images.get(&spec.image).is_some_and(|s| s.present) {
            return Err(EngineError::Api(format!("No such image: {}", spec.image)));
        }
        let sandbox = &spec.sandbox.id;
        if !state
            .containers
            .get(sandbox)
            .is_some_and(|h| h.holder && h.state == MemState::Running)
        {
            return Err(EngineError::Api(format!("no such sandbox {sandbox}")));
        }
        if state
            .containers
            .values()
            .any(|c| c.sandbox.as_ref() == Some(sandbox))
        {
            state.sandbox_conflicts += 1;
            return Err(EngineError::Api(format!(
                "sandbox {sandbox} already holds a task"
            )));
        }
        let sandbox = Some(sandbox.clone());
        Ok(state.add(MemContainer {
            milli_cpu: (spec.nano_cpus / 1_000_000) as u64,
            mem_mb: (spec.memory_bytes / (1024 * 1024)) as u64,
            state: MemState::Created,
            became_ready: false,
            holder: false,
            sandbox,
            ..MemContainer::new(&spec.image, &spec.labels)
        }))
    }

    async fn start_and_wait_ready(
        &self,
        id: &str,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<TaskAddr, EngineError> {
        self.check_reachable()?;
        let script = {
            let mut state = self.lock();
            let script = state.images.get(&spec.image).cloned().unwrap_or_default();
            match state.containers.get_mut(id) {
                Some(c) => c.state = MemState::Running,
                None => return Err(EngineError::NoSuchContainer(id.to_string())),
            }
            script
        };
        let gone = || EngineError::Api("the container was removed while it started".into());
        match script.start {
            StartScript::Ready(after) if after <= deadline => {
                tokio::time::sleep(after).await;
                let mut state = self.lock();
                match state.containers.get_mut(id) {
                    Some(c) if c.state == MemState::Running => c.became_ready = true,
                    _ => return Err(gone()),
                }
                // Where its sandbox says a task answers (calls stay in memory).
                Ok(spec.sandbox.addr.clone())
            }
            StartScript::Exit(after, code) if after <= deadline => {
                tokio::time::sleep(after).await;
                if !self.running(id) {
                    return Err(gone());
                }
                let state = self.exit(id, code, false).ok_or_else(gone)?;
                Err(EngineError::ExitedBeforeReady {
                    state,
                    output: "exiting on purpose (scripted)".into(),
                })
            }
            StartScript::ReadyNotListening(after) if after <= deadline => {
                tokio::time::sleep(deadline).await;
                Err(EngineError::NotListening(deadline))
            }
            _ => {
                tokio::time::sleep(deadline).await;
                Err(EngineError::ReadyTimeout(deadline))
            }
        }
    }

    async fn exit_state(&self, id: &str) -> Result<Option<ExitState>, EngineError> {
        self.check_reachable()?;
        match self.lock().containers.get(id).map(|c| c.state) {
            Some(MemState::Exited(state)) => Ok(Some(state)),
            Some(_) => Ok(None),
            None => Err(EngineError::NoSuchContainer(id.to_string())),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let delay = self.lock().remove_delay;
        tokio::time::sleep(delay).await;
        let mut state = self.lock();
        if state.unreachable {
            return Err(unreachable_error());
        }
        if state.failing_removals > 0 {
            state.failing_removals -= 1;
            return Err(EngineError::Api("removal failed (injected)".into()));
        }
        let Some(container) = state.containers.remove(id) else {
            return Ok(());
        };
        let labels = container.labels.clone();
        state.removed.push(Removed {
            container,
            from_outside: false,
            removed_at: tokio::time::Instant::now(),
        });
        drop(state);
        let _ = self.events.send(Event::Exit {
            id: id.to_string(),
            labels,
        });
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        self.check_reachable()?;
        let delay = self.lock().kill_delay;
        tokio::time::sleep(delay).await;
        if self.running(id) {
            self.exit(id, 137, false);
        }
        Ok(())
    }

    async fn ensure_holder_image(&self, name: &str) -> Result<(), EngineError> {
        self.check_reachable()?;
        let mut state = self.lock();
        let image = state.images.entry(name.to_string()).or_default();
        image.present = true;
        Ok(())
    }

    async fn start_holder(&self, spec: &HolderSpec) -> Result<SandboxRef, EngineError> {
        self.check_reachable()?;
        let mut state = self.lock();
        if !state.sandboxes_prepared {
            return Err(EngineError::Api(
                "sandboxes were not prepared (no socket directory)".into(),
            ));
        }
        if !state.images.get(&spec.image).is_some_and(|s| s.present) {
            return Err(EngineError::Api(format!("No such image: {}", spec.image)));
        }
        let id = state.add(MemContainer {
            mem_mb: (spec.memory_bytes / (1024 * 1024)) as u64,
            state: MemState::Running,
            became_ready: true,
            holder: true,
            ..MemContainer::new(&spec.image, &spec.labels)
        });
        let n: u16 = state.next_id.try_into().unwrap_or(0);
        Ok(SandboxRef {
            id,
            addr: TaskAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, n))),
        })
    }

    async fn update_limits(
        &self,
        id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> Result<(), EngineError> {
        self.check_reachable()?;
        let mut state = self.lock();
        // Docker changes a stopped (or never started) container's configuration too.
        match state.containers.get_mut(id) {
            Some(c) => {
                c.milli_cpu = (nano_cpus / 1_000_000) as u64;
                c.mem_mb = (memory_bytes / (1024 * 1024)) as u64;
                Ok(())
            }
            None => Err(EngineError::NoSuchContainer(id.to_string())),
        }
    }

    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        self.check_reachable()?;
        let state = self.lock();
        let mut ids: Vec<String> = state
            .containers
            .values()
            .filter(|c| c.labels.get(key).map(String::as_str) == Some(value))
            .map(|c| c.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn running_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        self.check_reachable()?;
        let state = self.lock();
        let mut ids: Vec<String> = state
            .containers
            .values()
            .filter(|c| c.state == MemState::Running)
            .filter(|c| c.labels.get(key).map(String::as_str) == Some(value))
            .map(|c| c.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn container_exits(
        &self,
        key: &str,
        value: &str,
    ) -> BoxStream<'static, Result<String, EngineError>> {
        let (key, value) = (key.to_string(), value.to_string());
        if self.lock().unreachable {
            return futures_util::stream::once(async { Err(unreachable_error()) }).boxed();
        }
        let receiver = self.events.subscribe();
        futures_util::stream::unfold(Some(receiver), move |receiver| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Ok(Event::Exit { id, labels }) => {
                            if labels.get(&key) == Some(&value) {
                                return Some((Ok(id), Some(receiver)));
                            }
                        }
                        Ok(Event::Disconnected) => return Some((Err(unreachable_error()), None)),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Err(unreachable_error()), None))
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed()
    }

    async fn runtimes(&self) -> Result<Vec<String>, EngineError> {
        self.check_reachable()?;
        Ok(self.runtimes.clone())
    }

    async fn prepare_sandboxes(&self, _dir: &Path) -> Result<(), EngineError> {
        self.check_reachable()?;
        self.lock().sandboxes_prepared = true;
        Ok(())
    }

    fn sockets_on_disk(&self) -> bool {
        false
    }

    async fn host_addresses(
        &self,
        _holder_image: &str,
        _labels: &HashMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        self.check_reachable()?;
        Ok(vec!["192.0.2.1".to_string()])
    }

    fn task_client(&self, id: &str, addr: &TaskAddr, _max: usize) -> Arc<dyn TaskCall> {
        Arc::new(MemTask {
            engine: self.clone(),
            id: id.to_string(),
            addr: addr.clone(),
            closed: AtomicBool::new(false),
        })
    }
}

/// Calls to a task of the in-memory engine.
struct MemTask {
    engine: MemoryEngine,
    id: String,
    addr: TaskAddr,
    /// [`TaskCall::close`] was called: no more calls.
    closed: AtomicBool,
}

impl std::fmt::Debug for MemTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTask").field("id", &self.id).finish()
    }
}

#[async_trait]
impl TaskCall for MemTask {
    fn addr(&self) -> &TaskAddr {
        &self.addr
    }

    async fn call(
        &self,
        _call: Call,
        input: Bytes,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::Transport(
                "the connection to the task was closed for its removal".into(),
            ));
        }
        {
            let mut state = self.engine.lock();
            match state.containers.get_mut(&self.id) {
                Some(c) if c.state == MemState::Running => c.calls += 1,
                _ => return Err(CallError::Transport("connection refused".into())),
            }
        }
        let refused = || CallError::Transport("connection reset by peer".into());
        let exchange = async {
            match TaskInput::parse(&input) {
                TaskInput::Answer(after) => {
                    tokio::time::sleep(after).await;
                    if !self.engine.running(&self.id) {
                        return Err(refused());
                    }
                    Ok(Answer {
                        status: hyper::StatusCode::OK,
                        body: input.clone(),
                    })
                }
                TaskInput::Crash | TaskInput::Oom => {
                    let oom = TaskInput::parse(&input) == TaskInput::Oom;
                    self.engine.exit(&self.id, if oom { 137 } else { 3 }, oom);
                    Err(refused())
                }
                TaskInput::Hang => std::future::pending().await,
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(timeout))?
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
