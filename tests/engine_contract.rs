//! The engine contract: what the executor relies on from an [`Engine`], written once against
//! the trait and run on every engine: the Docker engine on the real dockerd, and the
//! in-memory engine the policy tests (simulator, policy) run on. A case that passes on one
//! engine and fails on the other is a place where the policy tests would prove something the
//! real engine does not do. Each case is one test per engine, `<engine>::<case>`:
//!
//! - start: a task created and started in a sandbox becomes ready at the sandbox's address
//!   and answers through the engine's task client; also under `task_network: internet`, and
//!   under the strictest hardening; a task that exits before its ready line fails with its
//!   exit code and output, one that never prints it or prints it and never listens fails at
//!   the deadline saying which;
//! - ends: an exit after ready, an OOM kill (with its limit), a kill, a removal and a removal
//!   from outside are seen as the executor sees them (exit state, the exit stream, listings);
//!   removing or killing what is gone is no error, an unknown id is "no such container";
//! - labels: `list_labelled` finds exactly the containers of a label's value, any state;
//!   `running_labelled` the running ones; the exit stream only its label's;
//! - limits: `update_limits` changes a running task (as the engine's own tooling shows), and
//!   a stopped one is no error;
//! - sandboxes: holders start only once prepared, their image is imported when absent, they
//!   are separate, a task cannot join one that is gone (removed or stopped);
//! - the rest of the trait: an absent image is named by pull and create, the host's
//!   addresses, the runtimes, a closed task client calls no more.
//!
//! The third engine is Docker Swarm ([`SwarmSubject`]), on the 3-node swarm of nested
//! dockerds that `scripts/test-swarm.sh` brings up (and `scripts/test.sh` runs): its cases are
//! ignored by a plain `cargo test` and run there with `--ignored`. Where a swarm cannot do
//! what Docker does, the case asserts the refusal instead ([`Subject::can`]): it changes no
//! running task's limits, has no internet sandboxes, cannot tell an OOM kill from another
//! SIGKILL, and its nodes pull a task's image at its start.
//!
//! Adding an engine: implement [`Subject`] for it (how to make the engine for one test, an
//! image for each [`Behaviour`], how the engine's own tooling shows a container's limits and
//! removes one from outside, and removing what the test created in `Drop`), and add one
//! line, `contract!(name: NameSubject);`, at the end. Adding a case: an `async fn` in
//! [`cases`] taking `&Fixture<S>`, and its name in the list of [`contract!`].
//!
//! Every test has a label value of its own (`org.mecanywhere.executor=<unique>`) on all it
//! creates, so the tests run in parallel; its subject removes everything with that label
//! when it is dropped, also when the test fails, and then its socket directory goes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use mecanywhere_executor::engine::docker::DockerEngine;
use mecanywhere_executor::engine::memory::{ImageScript, MemoryEngine, StartScript};
use mecanywhere_executor::engine::swarm::{SwarmEngine, ROLE_SANDBOX_NETWORK};
use mecanywhere_executor::engine::{
    ContainerSpec, Engine, EngineError, ExitState, Hardening, HolderSpec, SandboxNetwork,
    SandboxRef, TaskAddr, LABEL_CPU, LABEL_EXECUTOR, LABEL_INSTANCE, LABEL_MEM, LABEL_ROLE,
    LABEL_TASK_KEY, ROLE_SANDBOX,
};
use mecanywhere_executor::image_ref::canonical;
use mecanywhere_executor::pull_progress::PullProgress;
use mecanywhere_executor::task::Call;
use mecanywhere_executor::task_client::CallError;

use common::unique_name;

/// How long a task that should become ready may take (Docker on a busy 2-core machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// The start deadline of the tasks that must not become ready.
const SHORT_DEADLINE: Duration = Duration::from_secs(2);
/// How long an engine may take to show what happened (an exit, an event).
const SETTLE: Duration = Duration::from_secs(15);
/// How long one case may take in all.
const CASE_LIMIT: Duration = Duration::from_secs(180);
/// A task's limits in the cases, as the executor asks for them.
const CPU_NANOS: i64 = 500_000_000;
const MEM_MB: i64 = 64;
const MIB: i64 = 1024 * 1024;

/// How a task of an image behaves; a [`Subject`] gives an image for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Becomes ready (ready line, then listening on its port) and answers a call with its
    /// input.
    Echo,
    /// Prints something and exits with [`Task::code`] before its ready line.
    ExitsBeforeReady,
    /// Runs, but never prints the ready line.
    NeverReady,
    /// Prints the ready line but never listens on its port.
    ReadyNotListening,
    /// Ready; exits with [`Task::code`] on a call ([`Task::input`]), without answering.
    CrashesOnCall,
    /// Ready; on a call allocates memory until its memory limit kills it.
    OomOnCall,
}

impl Behaviour {
    const ALL: [Behaviour; 6] = [
        Behaviour::Echo,
        Behaviour::ExitsBeforeReady,
        Behaviour::NeverReady,
        Behaviour::ReadyNotListening,
        Behaviour::CrashesOnCall,
        Behaviour::OomOnCall,
    ];
}

/// An image that behaves as asked, on one engine.
#[derive(Debug, Clone)]
struct Task {
    image: String,
    /// The input of a call (what makes it crash, for [`Behaviour::CrashesOnCall`]).
    input: Bytes,
    /// The exit code it exits with by itself, if it does.
    code: Option<i64>,
}

/// One engine under contract, for one test.
trait Subject: Sized {
    /// Connects to or makes the engine for one test whose containers all carry
    /// `LABEL_EXECUTOR=label` (unique to the test).
    async fn new(label: &str) -> Self;
    fn engine(&self) -> Arc<dyn Engine>;
    /// An image whose task behaves as `behaviour` says.
    fn task(&self, behaviour: Behaviour) -> Task;
    /// The image of the sandbox holders (present or imported by `ensure_holder_image`).
    fn holder_image(&self) -> String;
    /// A holder image name the engine does not have yet (the subject removes it at the end).
    fn fresh_holder_image(&self) -> String;
    /// An image the engine does not have and cannot pull (asking for it sends nothing
    /// beyond loopback).
    fn absent_image(&self) -> String;
    /// The CPU quota (10⁻⁹ cores) and memory limit (bytes) of container `id`, as the
    /// engine's own tooling shows them (not through the trait).
    fn limits(&self, id: &str) -> (i64, i64);
    /// Removes container `id` as someone outside the executor would (`docker rm -f`).
    fn remove_from_outside(&self, id: &str);
    /// Where the test's socket directory is made (`None`: the system's temp directory).
    fn socket_parent(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Whether the engine does what `ability` names (every engine but Swarm does all).
    fn can(&self, _ability: Ability) -> bool {
        true
    }
}

/// What an engine may be unable to do; a case asserts the refusal where it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ability {
    /// Change a running task's limits (`update_limits`).
    UpdateLimits,
    /// Sandboxes with egress (`task_network: internet`).
    InternetSandboxes,
    /// Tell an OOM kill from another SIGKILL.
    TellOom,
}

/// Whether `addr` (where a started task answers) is through `sandbox` (its holder's relay,
/// or a holder forwarding to the task's own address on a cluster).
fn through(addr: &TaskAddr, sandbox: &TaskAddr) -> bool {
    match (addr, sandbox) {
        (TaskAddr::Forward { relay, .. }, TaskAddr::Relay(holder)) => relay == holder,
        _ => addr == sandbox,
    }
}

// ---------------------------------------------------------------------------------------
// The subjects.

/// The Docker engine on the real dockerd, with the `meca-*` test images
/// (`scripts/build-task-images.sh`).
struct DockerSubject {
    engine: Arc<DockerEngine>,
    label: String,
    /// A holder image this test imported, removed at the end.
    fresh_image: String,
}

fn docker_cli(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl DockerSubject {
    /// The test image of `behaviour`.
    fn task_of(behaviour: Behaviour) -> Task {
        // The misbehave task's modes (tasks/misbehave).
        let (image, input, code) = match behaviour {
            Behaviour::Echo => ("meca-echo:latest", "contract says hello", None),
            Behaviour::ExitsBeforeReady => ("meca-test-exit-at-start:latest", "", Some(2)),
            Behaviour::NeverReady => ("meca-test-never-ready:latest", "", None),
            Behaviour::ReadyNotListening => ("meca-test-mark-no-listen:latest", "", None),
            Behaviour::CrashesOnCall => ("meca-test-crash:latest", "any", Some(3)),
            Behaviour::OomOnCall => ("meca-test-oom:latest", "eat", None),
        };
        Task {
            image: image.to_string(),
            input: Bytes::from(input),
            code,
        }
    }

    /// The executor's holder image name.
    fn holder_image_name() -> String {
        // The executor's own name for it (executor/sandboxes.rs): shared with its runs.
        let hash = fnv(mecanywhere_executor::engine::holder::holder_program());
        format!("mecanywhere-executor-sandbox:{hash:016x}")
    }
}

impl Subject for DockerSubject {
    async fn new(label: &str) -> Self {
        let engine = DockerEngine::connect()
            .await
            .expect("the Docker daemon answers");
        let subject = DockerSubject {
            engine: Arc::new(engine),
            label: label.to_string(),
            fresh_image: format!("meca-contract-holder:{label}"),
        };
        for behaviour in Behaviour::ALL {
            let image = subject.task(behaviour).image;
            assert!(
                docker_cli(&["image", "inspect", &image]).is_ok(),
                "test image {image} is missing: run scripts/build-task-images.sh"
            );
        }
        subject
    }

    fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    fn task(&self, behaviour: Behaviour) -> Task {
        Self::task_of(behaviour)
    }

    fn holder_image(&self) -> String {
        Self::holder_image_name()
    }

    fn fresh_holder_image(&self) -> String {
        self.fresh_image.clone()
    }

    fn absent_image(&self) -> String {
        // A registry on loopback where nothing listens: the pull fails at once, no traffic
        // leaves the host.
        format!("127.0.0.1:9/meca-contract-absent/{}:v1", self.label)
    }

    fn limits(&self, id: &str) -> (i64, i64) {
        let format = "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}";
        let out = docker_cli(&["inspect", "-f", format, id]).unwrap();
        let values: Vec<i64> = out.split(' ').map(|v| v.parse().unwrap()).collect();
        // The trait's promise: no swap beyond the memory limit.
        assert_eq!(values[2], values[1], "swap limit of {id}: {out}");
        (values[0], values[1])
    }

    fn remove_from_outside(&self, id: &str) {
        docker_cli(&["rm", "-f", id]).unwrap();
    }
}

impl Drop for DockerSubject {
    /// Removes every container of the test, then the holder image it imported.
    fn drop(&mut self) {
        let filter = format!("label={LABEL_EXECUTOR}={}", self.label);
        let left = docker_cli(&["ps", "-aq", "--filter", &filter]).unwrap_or_default();
        let left: Vec<&str> = left.split_whitespace().collect();
        if !left.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(&left);
            let _ = docker_cli(&args);
        }
        if docker_cli(&["image", "inspect", &self.fresh_image]).is_ok() {
            let _ = docker_cli(&["rmi", "-f", &self.fresh_image]);
        }
    }
}

/// The in-memory engine (`engine/memory.rs`), on the real clock.
struct MemorySubject {
    engine: MemoryEngine,
}

impl MemorySubject {
    const ECHO: &'static str = "contract-echo:latest";
    const EARLY_EXIT: &'static str = "contract-exit-at-start:latest";
    const NEVER_READY: &'static str = "contract-never-ready:latest";
    const NO_LISTEN: &'static str = "contract-mark-no-listen:latest";
    const HOLDER: &'static str = "contract-holder:latest";
    /// The code the early-exit image exits with (any: the case checks the subject's).
    const EARLY_EXIT_CODE: i64 = 5;
}

impl Subject for MemorySubject {
    async fn new(_label: &str) -> Self {
        let engine = MemoryEngine::new();
        let start = Duration::from_millis(20);
        for (image, start) in [
            (Self::ECHO, StartScript::Ready(start)),
            (
                Self::EARLY_EXIT,
                StartScript::Exit(start, Self::EARLY_EXIT_CODE),
            ),
            (Self::NEVER_READY, StartScript::NeverReady),
            (Self::NO_LISTEN, StartScript::ReadyNotListening(start)),
            (Self::HOLDER, StartScript::NeverReady),
        ] {
            let script = ImageScript {
                present: true,
                start,
                ..ImageScript::default()
            };
            engine.add_image(image, script);
        }
        MemorySubject { engine }
    }

    fn engine(&self) -> Arc<dyn Engine> {
        Arc::new(self.engine.clone())
    }

    fn task(&self, behaviour: Behaviour) -> Task {
        // A call's behaviour is chosen by its input (`memory::TaskInput`).
        let (image, input, code) = match behaviour {
            Behaviour::Echo => (Self::ECHO, "contract says hello", None),
            Behaviour::ExitsBeforeReady => (Self::EARLY_EXIT, "", Some(Self::EARLY_EXIT_CODE)),
            Behaviour::NeverReady => (Self::NEVER_READY, "", None),
            Behaviour::ReadyNotListening => (Self::NO_LISTEN, "", None),
            Behaviour::CrashesOnCall => (Self::ECHO, "crash", Some(3)),
            Behaviour::OomOnCall => (Self::ECHO, "oom", None),
        };
        Task {
            image: image.to_string(),
            input: Bytes::from(input),
            code,
        }
    }

    fn holder_image(&self) -> String {
        Self::HOLDER.to_string()
    }

    fn fresh_holder_image(&self) -> String {
        "contract-holder-fresh:latest".to_string()
    }

    fn absent_image(&self) -> String {
        "contract-absent:v1".to_string()
    }

    fn limits(&self, id: &str) -> (i64, i64) {
        let container = self
            .engine
            .containers()
            .into_iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no container {id}"));
        (
            container.milli_cpu as i64 * 1_000_000,
            container.mem_mb as i64 * MIB,
        )
    }

    fn remove_from_outside(&self, id: &str) {
        assert!(self.engine.kill_from_outside(id), "no container {id}");
    }
}

// ---------------------------------------------------------------------------------------
// What every case works with.

/// The Swarm engine on the 3-node swarm of `scripts/test-swarm.sh`
/// (`MECA_TEST_SWARM`: its directory; node N's daemon at `nodeN/docker.sock` there), with
/// the `meca-*` test images loaded on every node.
struct SwarmSubject {
    engine: Arc<SwarmEngine>,
    label: String,
    dir: std::path::PathBuf,
    fresh_image: String,
}

impl SwarmSubject {
    /// The swarm's directory, or a panic saying how to get one.
    fn swarm_dir() -> std::path::PathBuf {
        std::env::var_os("MECA_TEST_SWARM")
            .map(std::path::PathBuf::from)
            .expect(
                "MECA_TEST_SWARM is not set: the swarm cases run in scripts/test-swarm.sh \
                 (part of scripts/test.sh), which brings up a 3-node swarm for them",
            )
    }

    /// `docker` against the manager.
    fn manager(&self, args: &[&str]) -> Result<String, String> {
        let host = format!("unix://{}/node1/docker.sock", self.dir.display());
        let out = std::process::Command::new("docker")
            .args(["-H", &host])
            .args(args)
            .output()
            .map_err(|e| format!("docker CLI: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Subject for SwarmSubject {
    async fn new(label: &str) -> Self {
        let dir = Self::swarm_dir();
        let manager = format!("unix://{}/node1/docker.sock", dir.display());
        let docker = DockerEngine::connect_to(&manager)
            .await
            .expect("the swarm manager answers");
        let engine = SwarmEngine::connect(
            docker,
            Default::default(),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
        .await
        .expect("the manager is a swarm manager");
        SwarmSubject {
            engine: Arc::new(engine),
            label: label.to_string(),
            dir,
            fresh_image: format!("meca-contract-holder:{label}"),
        }
    }

    fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    fn task(&self, behaviour: Behaviour) -> Task {
        // The same images as on Docker, loaded on every node.
        DockerSubject::task_of(behaviour)
    }

    fn holder_image(&self) -> String {
        DockerSubject::holder_image_name()
    }

    fn fresh_holder_image(&self) -> String {
        self.fresh_image.clone()
    }

    fn absent_image(&self) -> String {
        // Each node asks its own loopback, where nothing listens.
        format!("127.0.0.1:9/meca-contract-absent/{}:v1", self.label)
    }

    fn limits(&self, id: &str) -> (i64, i64) {
        let format = "{{.Spec.TaskTemplate.Resources.Limits.NanoCPUs}} \
                      {{.Spec.TaskTemplate.Resources.Limits.MemoryBytes}} \
                      {{.Spec.TaskTemplate.Resources.Reservations.NanoCPUs}} \
                      {{.Spec.TaskTemplate.Resources.Reservations.MemoryBytes}}";
        let out = self
            .manager(&["service", "inspect", "-f", format, id])
            .unwrap();
        let values: Vec<i64> = out.split(' ').map(|v| v.parse().unwrap()).collect();
        // The engine's promise: limits are reservations, so a node is chosen with room.
        assert_eq!(
            (values[2], values[3]),
            (values[0], values[1]),
            "{id}: {out}"
        );
        (values[0], values[1])
    }

    fn remove_from_outside(&self, id: &str) {
        self.manager(&["service", "rm", id]).unwrap();
    }

    fn socket_parent(&self) -> Option<std::path::PathBuf> {
        // A path the manager's daemon sees as this process does.
        Some(self.dir.clone())
    }

    fn can(&self, ability: Ability) -> bool {
        match ability {
            Ability::UpdateLimits | Ability::InternetSandboxes | Ability::TellOom => false,
        }
    }
}

impl Drop for SwarmSubject {
    /// Removes the test's services, holders and sandbox networks, then its holder image.
    fn drop(&mut self) {
        let filter = format!("label={LABEL_EXECUTOR}={}", self.label);
        let ids = |args: &[&str]| -> Vec<String> {
            self.manager(args)
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        let remove = |command: &[&str], ids: Vec<String>| {
            if !ids.is_empty() {
                let mut args: Vec<&str> = command.to_vec();
                args.extend(ids.iter().map(String::as_str));
                let _ = self.manager(&args);
            }
        };
        remove(
            &["service", "rm"],
            ids(&["service", "ls", "-q", "--filter", &filter]),
        );
        remove(&["rm", "-f"], ids(&["ps", "-aq", "--filter", &filter]));
        let networks = format!("label={LABEL_ROLE}={ROLE_SANDBOX_NETWORK}");
        let listed = ids(&[
            "network", "ls", "-q", "--filter", &filter, "--filter", &networks,
        ]);
        // A network stays in use until its tasks' containers are gone from their nodes.
        for _ in 0..60 {
            remove(&["network", "rm"], listed.clone());
            if ids(&["network", "ls", "-q", "--filter", &filter]).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if self
            .manager(&["image", "inspect", &self.fresh_image])
            .is_ok()
        {
            let _ = self.manager(&["rmi", "-f", &self.fresh_image]);
        }
    }
}

/// One test: its subject, engine, unique label value and socket directory. Dropped (also
/// when the test panics), the subject removes what the test created; then the directory
/// goes.
struct Fixture<S: Subject> {
    subject: S,
    engine: Arc<dyn Engine>,
    /// This test's `LABEL_EXECUTOR` value.
    label: String,
    dir: tempfile::TempDir,
}

impl<S: Subject> Fixture<S> {
    async fn new(case: &str) -> Fixture<S> {
        let label = unique_name(&format!("contract-{}", case.replace('_', "-")));
        let subject = S::new(&label).await;
        let subject_parent = subject.socket_parent();
        Fixture {
            engine: subject.engine(),
            subject,
            label,
            dir: match subject_parent {
                Some(parent) => tempfile::tempdir_in(parent).unwrap(),
                None => tempfile::tempdir().unwrap(),
            },
        }
    }

    /// The labels of this test's executor (its name, an instance of it).
    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_EXECUTOR.to_string(), self.label.clone()),
            (LABEL_INSTANCE.to_string(), self.instance("main")),
        ])
    }

    /// A value of `LABEL_INSTANCE` (or any label) of this test only.
    fn instance(&self, name: &str) -> String {
        format!("{}-{name}", self.label)
    }

    /// The labels the executor gives a task container of `instance` and `key`
    /// (`executor/start.rs`).
    fn task_labels(&self, instance: &str, key: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_EXECUTOR.to_string(), self.label.clone()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_TASK_KEY.to_string(), key.to_string()),
            (LABEL_CPU.to_string(), "0.5".to_string()),
            (LABEL_MEM.to_string(), MEM_MB.to_string()),
        ])
    }

    /// A task container's spec as the executor makes it, for `image` in `sandbox`.
    fn spec(&self, image: &str, sandbox: &SandboxRef, instance: &str, key: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.to_string(),
            nano_cpus: CPU_NANOS,
            memory_bytes: MEM_MB * MIB,
            runtime: None,
            labels: self.task_labels(instance, key),
            sgx: None,
            gpus: Vec::new(),
            hardening: Hardening::default(),
            tty: true,
            sandbox: sandbox.clone(),
        }
    }

    /// The socket directory, made ready as `Sandboxes::prepare` does.
    async fn prepare(&self) {
        self.engine
            .prepare_sandboxes(self.dir.path())
            .await
            .expect("sandboxes prepared");
    }

    /// A holder's spec as `Sandboxes` makes it (`task_network: isolated`).
    fn holder_spec(&self, image: &str, instance: &str) -> HolderSpec {
        let token = unique_name("contract-socket");
        let token = format!("{:08x}", fnv(token.as_bytes()) as u32);
        HolderSpec {
            image: image.to_string(),
            labels: HashMap::from([
                (LABEL_EXECUTOR.to_string(), self.label.clone()),
                (LABEL_INSTANCE.to_string(), instance.to_string()),
                (LABEL_ROLE.to_string(), ROLE_SANDBOX.to_string()),
            ]),
            network: SandboxNetwork::None,
            socket: self.dir.path().join(token),
            memory_bytes: 16 * MIB,
        }
    }

    /// A started sandbox holder of `instance`, as `Sandboxes` starts one.
    async fn sandbox(&self, instance: &str) -> SandboxRef {
        self.prepare().await;
        let image = self.subject.holder_image();
        self.engine
            .ensure_holder_image(&image)
            .await
            .expect("holder image present");
        self.engine
            .start_holder(&self.holder_spec(&image, instance))
            .await
            .expect("holder started")
    }

    /// A task of `behaviour` created and started in a sandbox of its own: its id and what
    /// the start gave.
    async fn started(
        &self,
        behaviour: Behaviour,
        key: &str,
        deadline: Duration,
    ) -> (String, Result<TaskAddr, EngineError>) {
        let instance = self.instance("main");
        let sandbox = self.sandbox(&instance).await;
        let task = self.subject.task(behaviour);
        let spec = self.spec(&task.image, &sandbox, &instance, key);
        let id = self.engine.create(&spec).await.expect("task created");
        let started = self.engine.start_and_wait_ready(&id, &spec, deadline).await;
        (id, started)
    }

    /// A ready task of `behaviour`: its id and address.
    async fn ready(&self, behaviour: Behaviour, key: &str) -> (String, TaskAddr) {
        let (id, started) = self.started(behaviour, key, START_DEADLINE).await;
        let addr = started.unwrap_or_else(|e| panic!("{behaviour:?} task not ready: {e}"));
        (id, addr)
    }

    /// Calls the task `id` at `addr` once, with `input`.
    async fn call(&self, id: &str, addr: &TaskAddr, input: &Bytes) -> Result<Bytes, CallError> {
        let client = self.engine.task_client(id, addr, 1 << 20);
        let answer = client
            .call(Call::Run, input.clone(), Duration::from_secs(30))
            .await?;
        assert_eq!(answer.status, 200, "{answer:?}");
        Ok(answer.body)
    }

    async fn listed(&self, key: &str, value: &str) -> BTreeSet<String> {
        let ids = self.engine.list_labelled(key, value).await.unwrap();
        let set: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(set.len(), ids.len(), "listed twice: {ids:?}");
        set
    }

    async fn running(&self, key: &str, value: &str) -> BTreeSet<String> {
        let ids = self.engine.running_labelled(key, value).await.unwrap();
        ids.into_iter().collect()
    }

    /// The exit state of `id` once the engine shows it, as the executor waits for it
    /// (`Removals::exit_state_settled`: a SIGKILL's OOM flag may lag the exit).
    async fn exit_settled(&self, id: &str) -> ExitState {
        let started = Instant::now();
        loop {
            let state = self.engine.exit_state(id).await.unwrap();
            match state {
                Some(s) if s.code != 137 || s.oom_killed => return s,
                Some(s) if started.elapsed() > Duration::from_secs(2) => return s,
                None if started.elapsed() > SETTLE => panic!("{id} still running"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// FNV-1a (the executor's fingerprint of the holder program; short names).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn set<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

/// The next id the exit stream yields, within [`SETTLE`].
async fn next_exit(exits: &mut BoxStream<'static, Result<String, EngineError>>) -> String {
    match tokio::time::timeout(SETTLE, exits.next()).await {
        Ok(Some(Ok(id))) => id,
        Ok(other) => panic!("the exit stream ended or failed: {other:?}"),
        Err(_) => panic!("no exit event within {SETTLE:?}"),
    }
}

/// Waits until the exit stream yields `id` (an engine may report one container twice: it
/// stopped, then it was removed).
async fn exit_seen(exits: &mut BoxStream<'static, Result<String, EngineError>>, id: &str) {
    loop {
        if next_exit(exits).await == id {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cases.

mod cases {
    use super::*;

    /// A created and started task becomes ready at its sandbox's address, answers through
    /// the engine's task client, runs and is listed by its labels.
    pub async fn ready_task_answers_at_its_sandbox_address<S: Subject>(f: &Fixture<S>) {
        let instance = f.instance("main");
        let sandbox = f.sandbox(&instance).await;
        let task = f.subject.task(Behaviour::Echo);
        let key = f.instance("key");
        let spec = f.spec(&task.image, &sandbox, &instance, &key);
        let id = f.engine.create(&spec).await.unwrap();
        let addr = f
            .engine
            .start_and_wait_ready(&id, &spec, START_DEADLINE)
            .await
            .unwrap();
        assert!(
            through(&addr, &sandbox.addr),
            "a task answers through its sandbox: {addr} vs {}",
            sandbox.addr
        );
        assert_eq!(f.call(&id, &addr, &task.input).await.unwrap(), task.input);
        assert_eq!(f.engine.exit_state(&id).await.unwrap(), None, "running");
        assert_eq!(f.listed(LABEL_TASK_KEY, &key).await, set([&id]));
        assert_eq!(f.running(LABEL_TASK_KEY, &key).await, set([&id]));
        assert_eq!(
            f.listed(LABEL_INSTANCE, &instance).await,
            set([&id, &sandbox.id])
        );
    }

    /// `list_labelled` finds exactly the containers with a label's value (any state),
    /// `running_labelled` only the running ones: what the orphan cleanup and the stop sweep
    /// rely on.
    pub async fn labels_select_exactly_their_containers<S: Subject>(f: &Fixture<S>) {
        let (a, b) = (f.instance("a"), f.instance("b"));
        let (holder_a, holder_b) = (f.sandbox(&a).await, f.sandbox(&b).await);
        let task = f.subject.task(Behaviour::Echo);
        // Created only, in instance a; created and started in instance b.
        let spec_a = f.spec(&task.image, &holder_a, &a, &f.instance("key-a"));
        let created = f.engine.create(&spec_a).await.unwrap();
        let spec_b = f.spec(&task.image, &holder_b, &b, &f.instance("key-b"));
        let started = f.engine.create(&spec_b).await.unwrap();
        f.engine
            .start_and_wait_ready(&started, &spec_b, START_DEADLINE)
            .await
            .unwrap();

        assert_eq!(
            f.listed(LABEL_EXECUTOR, &f.label).await,
            set([&holder_a.id, &holder_b.id, &created, &started])
        );
        assert_eq!(
            f.listed(LABEL_INSTANCE, &a).await,
            set([&holder_a.id, &created])
        );
        assert_eq!(
            f.listed(LABEL_INSTANCE, &b).await,
            set([&holder_b.id, &started])
        );
        assert_eq!(
            f.listed(LABEL_TASK_KEY, &f.instance("key-a")).await,
            set([&created])
        );
        assert!(f
            .listed(LABEL_INSTANCE, &f.instance("nobody"))
            .await
            .is_empty());
        let holders = f.listed(LABEL_ROLE, ROLE_SANDBOX).await;
        assert!(holders.contains(&holder_a.id) && holders.contains(&holder_b.id));
        assert!(!holders.contains(&created) && !holders.contains(&started));
        // A created container does not run.
        assert_eq!(
            f.running(LABEL_EXECUTOR, &f.label).await,
            set([&holder_a.id, &holder_b.id, &started])
        );
        assert_eq!(f.running(LABEL_INSTANCE, &a).await, set([&holder_a.id]));
    }

    /// A task that exits before its ready line is reported with its exit code and output;
    /// the container stays, stopped, until it is removed.
    pub async fn exit_before_ready_reports_its_code<S: Subject>(f: &Fixture<S>) {
        let key = f.instance("key");
        let (id, started) = f
            .started(Behaviour::ExitsBeforeReady, &key, START_DEADLINE)
            .await;
        let code = f.subject.task(Behaviour::ExitsBeforeReady).code.unwrap();
        let state = match started {
            Err(EngineError::ExitedBeforeReady { state, output }) => {
                assert!(!output.is_empty(), "the task printed something");
                state
            }
            other => panic!("expected ExitedBeforeReady, got {other:?}"),
        };
        let expected = ExitState {
            code,
            oom_killed: false,
            memory_limit_mb: Some(MEM_MB as u64),
            node_lost: false,
        };
        assert_eq!(state, expected);
        assert_eq!(f.engine.exit_state(&id).await.unwrap(), Some(expected));
        assert_eq!(f.listed(LABEL_TASK_KEY, &key).await, set([&id]));
        assert!(f.running(LABEL_TASK_KEY, &key).await.is_empty());
        f.engine.remove(&id).await.unwrap();
        assert!(f.listed(LABEL_TASK_KEY, &key).await.is_empty());
    }

    /// A task that never prints its ready line fails with the start deadline, after it; its
    /// container is still running (the executor removes it).
    pub async fn never_ready_fails_at_the_deadline<S: Subject>(f: &Fixture<S>) {
        let key = f.instance("key");
        let began = Instant::now();
        let (id, started) = f.started(Behaviour::NeverReady, &key, SHORT_DEADLINE).await;
        let took = began.elapsed();
        assert!(
            matches!(started, Err(EngineError::ReadyTimeout(d)) if d == SHORT_DEADLINE),
            "{started:?}"
        );
        assert!(took >= SHORT_DEADLINE, "failed early: {took:?}");
        assert!(took < SHORT_DEADLINE + SETTLE, "failed late: {took:?}");
        assert_eq!(f.engine.exit_state(&id).await.unwrap(), None, "still runs");
        assert_eq!(f.running(LABEL_TASK_KEY, &key).await, set([&id]));
        f.engine.remove(&id).await.unwrap();
        assert!(f.listed(LABEL_TASK_KEY, &key).await.is_empty());
    }

    /// A task that prints its ready line but never listens is not ready: it fails at the
    /// deadline saying so.
    pub async fn ready_line_without_listening_fails<S: Subject>(f: &Fixture<S>) {
        let key = f.instance("key");
        let (id, started) = f
            .started(Behaviour::ReadyNotListening, &key, SHORT_DEADLINE)
            .await;
        assert!(
            matches!(started, Err(EngineError::NotListening(d)) if d == SHORT_DEADLINE),
            "{started:?}"
        );
        assert_eq!(f.engine.exit_state(&id).await.unwrap(), None, "still runs");
    }

    /// A ready task that exits on a call is seen: the call fails, the exit stream names it,
    /// its exit state has its code, and it is listed but not running.
    pub async fn exit_after_ready_is_seen<S: Subject>(f: &Fixture<S>) {
        let mut exits = f.engine.container_exits(LABEL_EXECUTOR, &f.label);
        let key = f.instance("key");
        let (id, addr) = f.ready(Behaviour::CrashesOnCall, &key).await;
        let task = f.subject.task(Behaviour::CrashesOnCall);
        let call = f.call(&id, &addr, &task.input).await;
        assert!(call.is_err(), "a crashing task answered: {call:?}");
        exit_seen(&mut exits, &id).await;
        let state = f.exit_settled(&id).await;
        assert_eq!(
            state,
            ExitState {
                code: task.code.unwrap(),
                oom_killed: false,
                memory_limit_mb: Some(MEM_MB as u64),
                node_lost: false,
            }
        );
        assert_eq!(f.listed(LABEL_TASK_KEY, &key).await, set([&id]));
        assert!(f.running(LABEL_TASK_KEY, &key).await.is_empty());
        // Killing what already exited keeps its code.
        f.engine.kill(&id).await.unwrap();
        assert_eq!(f.engine.exit_state(&id).await.unwrap(), Some(state));
    }

    /// A task killed by its memory limit is reported as out of memory, with the limit.
    pub async fn memory_limit_kill_is_reported_as_oom<S: Subject>(f: &Fixture<S>) {
        let (id, addr) = f.ready(Behaviour::OomOnCall, &f.instance("key")).await;
        let task = f.subject.task(Behaviour::OomOnCall);
        assert!(f.call(&id, &addr, &task.input).await.is_err());
        let state = f.exit_settled(&id).await;
        if !f.subject.can(Ability::TellOom) {
            // Killed at its limit: SIGKILL, with the limit named.
            assert_eq!(state.code, 137, "{state:?}");
            assert_eq!(state.memory_limit_mb, Some(MEM_MB as u64));
            return;
        }
        assert!(state.oom_killed, "{state:?}");
        assert_eq!(state.memory_limit_mb, Some(MEM_MB as u64));
        assert!(
            state
                .to_string()
                .starts_with(&format!("ran out of memory (limit {MEM_MB} MB)")),
            "{state}"
        );
    }

    /// A kill returns once the task is dead: its exit state shows at once (SIGKILL); the
    /// container stays until removed; a second kill, or a kill of what does not exist, is
    /// no error.
    pub async fn kill_stops_the_task_and_keeps_the_container<S: Subject>(f: &Fixture<S>) {
        let mut exits = f.engine.container_exits(LABEL_EXECUTOR, &f.label);
        let key = f.instance("key");
        let (id, addr) = f.ready(Behaviour::Echo, &key).await;
        f.engine.kill(&id).await.unwrap();
        let state = f.engine.exit_state(&id).await.unwrap();
        assert_eq!(
            state,
            Some(ExitState {
                code: 137,
                oom_killed: false,
                memory_limit_mb: Some(MEM_MB as u64),
                node_lost: false,
            })
        );
        exit_seen(&mut exits, &id).await;
        assert_eq!(f.listed(LABEL_TASK_KEY, &key).await, set([&id]));
        assert!(f.running(LABEL_TASK_KEY, &key).await.is_empty());
        let task = f.subject.task(Behaviour::Echo);
        assert!(f.call(&id, &addr, &task.input).await.is_err());
        f.engine.kill(&id).await.unwrap();
        f.engine
            .kill(&f.instance("no-such-container"))
            .await
            .unwrap();
        // The exit state is kept until the removal, also once the engine's own record of
        // the stopped task may be gone (Swarm deletes a scaled-down task within a second).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            f.engine.exit_state(&id).await.unwrap().map(|s| s.code),
            Some(137)
        );
    }

    /// Removing a running task takes it (and its holder) away for good: nothing is listed,
    /// its state is "no such container", the exit stream names it; removing it again, or
    /// anything unknown, is no error.
    pub async fn remove_leaves_nothing_and_is_idempotent<S: Subject>(f: &Fixture<S>) {
        let mut exits = f.engine.container_exits(LABEL_EXECUTOR, &f.label);
        let key = f.instance("key");
        let (id, addr) = f.ready(Behaviour::Echo, &key).await;
        f.engine.remove(&id).await.unwrap();
        assert!(f.listed(LABEL_TASK_KEY, &key).await.is_empty());
        assert!(
            matches!(f.engine.exit_state(&id).await, Err(EngineError::NoSuchContainer(ref x)) if *x == id)
        );
        exit_seen(&mut exits, &id).await;
        let task = f.subject.task(Behaviour::Echo);
        assert!(f.call(&id, &addr, &task.input).await.is_err());
        f.engine.remove(&id).await.unwrap();
        f.engine
            .remove(&f.instance("no-such-container"))
            .await
            .unwrap();
        // The holder goes the same way: then nothing of the test is left.
        for holder in f.listed(LABEL_EXECUTOR, &f.label).await {
            f.engine.remove(&holder).await.unwrap();
        }
        let left = f.listed(LABEL_EXECUTOR, &f.label).await;
        assert!(left.is_empty(), "left: {left:?}");
    }

    /// A task removed from outside the executor is seen as the watcher sees it: the exit
    /// stream names it, and it is gone from the listings and the engine.
    pub async fn removal_from_outside_is_seen<S: Subject>(f: &Fixture<S>) {
        let mut exits = f.engine.container_exits(LABEL_EXECUTOR, &f.label);
        let key = f.instance("key");
        let (id, _) = f.ready(Behaviour::Echo, &key).await;
        f.subject.remove_from_outside(&id);
        exit_seen(&mut exits, &id).await;
        assert!(f.listed(LABEL_TASK_KEY, &key).await.is_empty());
        assert!(matches!(
            f.engine.exit_state(&id).await,
            Err(EngineError::NoSuchContainer(_))
        ));
    }

    /// The exit stream names only containers with its label's value.
    pub async fn exit_stream_follows_only_its_label<S: Subject>(f: &Fixture<S>) {
        let (a, b) = (f.instance("a"), f.instance("b"));
        let mut exits = f.engine.container_exits(LABEL_INSTANCE, &a);
        let holders = f.instance("holders");
        let (holder_a, holder_b) = (f.sandbox(&holders).await, f.sandbox(&holders).await);
        let task = f.subject.task(Behaviour::Echo);
        let spec_a = f.spec(&task.image, &holder_a, &a, &f.instance("key-a"));
        let spec_b = f.spec(&task.image, &holder_b, &b, &f.instance("key-b"));
        let in_a = f.engine.create(&spec_a).await.unwrap();
        let in_b = f.engine.create(&spec_b).await.unwrap();
        f.engine.remove(&in_b).await.unwrap();
        f.engine.remove(&in_a).await.unwrap();
        assert_eq!(next_exit(&mut exits).await, in_a, "b's removal came first");
    }

    /// `update_limits` changes the CPU quota and memory limit of a running task, as the
    /// engine's own tooling shows; the task runs on. An unknown id is "no such container".
    pub async fn update_limits_changes_a_running_task<S: Subject>(f: &Fixture<S>) {
        let (id, addr) = f.ready(Behaviour::Echo, &f.instance("key")).await;
        assert_eq!(f.subject.limits(&id), (CPU_NANOS, MEM_MB * MIB));
        if !f.subject.can(Ability::UpdateLimits) {
            // Refused, and the task runs on untouched.
            let refused = f.engine.update_limits(&id, 1_000_000_000, 128 * MIB).await;
            assert!(
                matches!(refused, Err(EngineError::Unsupported(_))),
                "{refused:?}"
            );
            assert_eq!(f.subject.limits(&id), (CPU_NANOS, MEM_MB * MIB));
            let task = f.subject.task(Behaviour::Echo);
            assert_eq!(f.call(&id, &addr, &task.input).await.unwrap(), task.input);
            return;
        }
        f.engine
            .update_limits(&id, 1_000_000_000, 128 * MIB)
            .await
            .unwrap();
        assert_eq!(f.subject.limits(&id), (1_000_000_000, 128 * MIB));
        let task = f.subject.task(Behaviour::Echo);
        assert_eq!(f.call(&id, &addr, &task.input).await.unwrap(), task.input);
        assert_eq!(f.engine.exit_state(&id).await.unwrap(), None);
        let unknown = f.instance("no-such-container");
        assert!(matches!(
            f.engine.update_limits(&unknown, CPU_NANOS, MEM_MB * MIB).await,
            Err(EngineError::NoSuchContainer(x)) if x == unknown
        ));
    }

    /// A stopped container's limits can still be changed (Docker changes its
    /// configuration); that it stopped is for the exit state and the exit stream to say.
    pub async fn update_limits_of_a_stopped_task_is_accepted<S: Subject>(f: &Fixture<S>) {
        let (id, _) = f.ready(Behaviour::Echo, &f.instance("key")).await;
        f.engine.kill(&id).await.unwrap();
        let updated = f.engine.update_limits(&id, 1_000_000_000, 128 * MIB).await;
        if !f.subject.can(Ability::UpdateLimits) {
            assert!(
                matches!(updated, Err(EngineError::Unsupported(_))),
                "{updated:?}"
            );
            assert!(f.engine.exit_state(&id).await.unwrap().is_some());
            return;
        }
        assert!(updated.is_ok(), "{updated:?}");
        assert_eq!(f.subject.limits(&id), (1_000_000_000, 128 * MIB));
        assert!(f.engine.exit_state(&id).await.unwrap().is_some());
    }

    /// Calls on ids the engine does not know: removal and kill are no errors, the exit state
    /// and a limits update say "no such container", a start fails naming it.
    pub async fn unknown_containers<S: Subject>(f: &Fixture<S>) {
        let unknown = f.instance("no-such-container");
        f.engine.remove(&unknown).await.unwrap();
        f.engine.kill(&unknown).await.unwrap();
        assert!(matches!(
            f.engine.exit_state(&unknown).await,
            Err(EngineError::NoSuchContainer(x)) if x == unknown
        ));
        let sandbox = f.sandbox(&f.instance("main")).await;
        let image = f.subject.task(Behaviour::Echo).image;
        let spec = f.spec(&image, &sandbox, &f.instance("main"), &f.instance("key"));
        let started = f
            .engine
            .start_and_wait_ready(&unknown, &spec, SHORT_DEADLINE)
            .await;
        match started {
            Err(e) => assert!(e.to_string().contains(&unknown), "{e}"),
            Ok(addr) => panic!("an unknown container started at {addr}"),
        }
    }

    /// A task cannot join a sandbox whose holder is gone (removed, or stopped): the create
    /// or the start fails, as an error the executor retries with a sandbox of its own
    /// (`Api` or `NoSuchContainer`), naming the holder.
    pub async fn a_gone_sandbox_cannot_be_joined<S: Subject>(f: &Fixture<S>) {
        let instance = f.instance("main");
        let task = f.subject.task(Behaviour::Echo);
        for stop in ["remove", "kill"] {
            let holder = f.sandbox(&instance).await;
            match stop {
                "remove" => f.engine.remove(&holder.id).await.unwrap(),
                _ => f.engine.kill(&holder.id).await.unwrap(),
            }
            let spec = f.spec(&task.image, &holder, &instance, &f.instance(stop));
            let failed = match f.engine.create(&spec).await {
                Err(e) => e,
                Ok(id) => match f
                    .engine
                    .start_and_wait_ready(&id, &spec, START_DEADLINE)
                    .await
                {
                    Err(e) => e,
                    Ok(addr) => panic!("a task started in a holder gone by {stop}: {addr}"),
                },
            };
            assert!(
                matches!(
                    failed,
                    EngineError::Api(_) | EngineError::NoSuchContainer(_)
                ),
                "after {stop}: {failed:?}"
            );
            assert!(
                failed.to_string().contains(&holder.id),
                "after {stop}: {failed}"
            );
        }
    }

    /// Holders are started only in prepared sandboxes; preparing fails on a directory that
    /// does not exist when the engine's sockets are files in it.
    pub async fn sandboxes_must_be_prepared<S: Subject>(f: &Fixture<S>) {
        let image = f.subject.holder_image();
        f.engine.ensure_holder_image(&image).await.unwrap();
        let early = f
            .engine
            .start_holder(&f.holder_spec(&image, &f.instance("main")))
            .await;
        assert!(
            matches!(early, Err(EngineError::Api(_))),
            "a holder started before sandboxes were prepared: {early:?}"
        );
        let missing = f.dir.path().join("missing");
        let prepared = f.engine.prepare_sandboxes(&missing).await;
        if f.engine.sockets_on_disk() {
            let e = prepared.expect_err("a missing socket directory was accepted");
            assert!(
                e.to_string().contains(&missing.display().to_string()),
                "{e}"
            );
        } else {
            prepared.unwrap();
        }
        assert!(f.listed(LABEL_EXECUTOR, &f.label).await.is_empty());
    }

    /// Holders are separate sandboxes: each its own container and address (on disk: the
    /// socket its spec asked for), running with the holder's labels; a task in one answers.
    pub async fn holders_are_separate_sandboxes<S: Subject>(f: &Fixture<S>) {
        f.prepare().await;
        let image = f.subject.holder_image();
        f.engine.ensure_holder_image(&image).await.unwrap();
        let instance = f.instance("main");
        let (spec_1, spec_2) = (
            f.holder_spec(&image, &instance),
            f.holder_spec(&image, &instance),
        );
        let one = f.engine.start_holder(&spec_1).await.unwrap();
        let two = f.engine.start_holder(&spec_2).await.unwrap();
        assert_ne!(one.id, two.id);
        assert_ne!(one.addr, two.addr);
        if f.engine.sockets_on_disk() {
            for (spec, holder) in [(&spec_1, &one), (&spec_2, &two)] {
                assert_eq!(holder.addr, TaskAddr::Relay(spec.socket.clone()));
                assert!(spec.socket.exists(), "{} missing", spec.socket.display());
            }
        }
        assert_eq!(
            f.running(LABEL_INSTANCE, &instance).await,
            set([&one.id, &two.id])
        );
        let task = f.subject.task(Behaviour::Echo);
        let spec = f.spec(&task.image, &two, &instance, &f.instance("key"));
        let id = f.engine.create(&spec).await.unwrap();
        let addr = f
            .engine
            .start_and_wait_ready(&id, &spec, START_DEADLINE)
            .await
            .unwrap();
        assert!(through(&addr, &two.addr), "{addr} vs {}", two.addr);
        assert_eq!(f.call(&id, &addr, &task.input).await.unwrap(), task.input);
    }

    /// A holder for `task_network: internet` (on the engine's default network, the
    /// private ranges and the host's own addresses blocked, as `Sandboxes` asks) starts, and
    /// a task in it answers through it.
    pub async fn an_internet_sandbox_serves_its_task<S: Subject>(f: &Fixture<S>) {
        f.prepare().await;
        let image = f.subject.holder_image();
        f.engine.ensure_holder_image(&image).await.unwrap();
        let mut blocked: Vec<String> = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
            .map(String::from)
            .to_vec();
        let host = f.engine.host_addresses(&image, &f.labels()).await.unwrap();
        blocked.extend(host.iter().map(|a| format!("{a}/32")));
        let instance = f.instance("main");
        let spec = HolderSpec {
            network: SandboxNetwork::Egress {
                network: None,
                blocked,
            },
            ..f.holder_spec(&image, &instance)
        };
        if !f.subject.can(Ability::InternetSandboxes) {
            let refused = f.engine.start_holder(&spec).await;
            assert!(
                matches!(refused, Err(EngineError::Unsupported(_))),
                "{refused:?}"
            );
            assert!(f.listed(LABEL_EXECUTOR, &f.label).await.is_empty());
            return;
        }
        let holder = f.engine.start_holder(&spec).await.unwrap();
        let task = f.subject.task(Behaviour::Echo);
        let spec = f.spec(&task.image, &holder, &instance, &f.instance("key"));
        let id = f.engine.create(&spec).await.unwrap();
        let addr = f
            .engine
            .start_and_wait_ready(&id, &spec, START_DEADLINE)
            .await
            .unwrap();
        assert!(through(&addr, &holder.addr), "{addr} vs {}", holder.addr);
        assert_eq!(f.call(&id, &addr, &task.input).await.unwrap(), task.input);
    }

    /// A task under the strictest hardening the configuration offers (read-only root
    /// filesystem, few processes and files) still becomes ready and answers.
    pub async fn a_hardened_task_serves<S: Subject>(f: &Fixture<S>) {
        let instance = f.instance("main");
        let sandbox = f.sandbox(&instance).await;
        let task = f.subject.task(Behaviour::Echo);
        let spec = ContainerSpec {
            hardening: Hardening {
                pids_limit: 32,
                nofile_limit: 64,
                log_max_size: "1m".into(),
                log_max_files: 1,
                read_only_rootfs: true,
            },
            ..f.spec(&task.image, &sandbox, &instance, &f.instance("key"))
        };
        let id = f.engine.create(&spec).await.unwrap();
        let addr = f
            .engine
            .start_and_wait_ready(&id, &spec, START_DEADLINE)
            .await
            .unwrap();
        assert_eq!(f.call(&id, &addr, &task.input).await.unwrap(), task.input);
    }

    /// `ensure_holder_image` imports an absent holder image (then present, and a second
    /// call is no error); a holder of an image the engine lacks does not start.
    pub async fn holder_image_is_imported_when_absent<S: Subject>(f: &Fixture<S>) {
        f.prepare().await;
        let fresh = f.subject.fresh_holder_image();
        assert!(!f.engine.image_present(&fresh).await.unwrap());
        let refused = f
            .engine
            .start_holder(&f.holder_spec(&fresh, &f.instance("main")))
            .await;
        match refused {
            Err(e) => assert!(e.to_string().contains(&fresh), "{e}"),
            Ok(holder) => panic!("a holder of an absent image started: {holder:?}"),
        }
        f.engine.ensure_holder_image(&fresh).await.unwrap();
        assert!(f.engine.image_present(&fresh).await.unwrap());
        f.engine.ensure_holder_image(&fresh).await.unwrap();
        let holder = f
            .engine
            .start_holder(&f.holder_spec(&fresh, &f.instance("main")))
            .await
            .unwrap();
        assert_eq!(f.running(LABEL_EXECUTOR, &f.label).await, set([&holder.id]));
    }

    /// The stored images name their sizes and how many containers use them; an image a
    /// container uses is not removed, and once the container is gone it is; removing a
    /// missing name is accepted.
    pub async fn an_image_in_use_is_kept_and_one_unused_removed<S: Subject>(f: &Fixture<S>) {
        f.prepare().await;
        let fresh = f.subject.fresh_holder_image();
        f.engine.ensure_holder_image(&fresh).await.unwrap();
        let holder = f
            .engine
            .start_holder(&f.holder_spec(&fresh, &f.instance("main")))
            .await
            .unwrap();
        let stored = f.engine.stored_images().await.unwrap();
        let entry = stored
            .iter()
            .find(|i| i.names.iter().any(|n| canonical(n) == canonical(&fresh)))
            .unwrap_or_else(|| panic!("{fresh} is not among the stored images: {stored:?}"));
        assert!(entry.size > 0, "{entry:?}");
        assert!(entry.containers >= 1, "the holder uses it: {entry:?}");
        match f.engine.remove_image(&fresh).await {
            Err(EngineError::ImageInUse(name)) => assert_eq!(name, fresh),
            other => panic!("an image in use was not kept: {other:?}"),
        }
        assert!(f.engine.image_present(&fresh).await.unwrap());
        f.engine.remove(&holder.id).await.unwrap();
        f.engine.remove_image(&fresh).await.unwrap();
        assert!(!f.engine.image_present(&fresh).await.unwrap());
        f.engine.remove_image(&fresh).await.unwrap();
    }

    /// The filesystem of the engine's images is measured (by a holder that is gone after).
    pub async fn the_image_filesystem_is_measured<S: Subject>(f: &Fixture<S>) {
        let image = f.subject.holder_image();
        f.engine.ensure_holder_image(&image).await.unwrap();
        let root = f.engine.image_root().await.unwrap();
        assert!(root.is_absolute(), "{}", root.display());
        let fs = f
            .engine
            .image_filesystem(&image, &f.labels())
            .await
            .unwrap();
        assert!(fs.total_bytes > 0, "{fs:?}");
        assert!(fs.available_bytes <= fs.free_bytes, "{fs:?}");
        assert!(fs.free_bytes <= fs.total_bytes, "{fs:?}");
        assert!((0.0..=100.0).contains(&fs.used_percent()), "{fs:?}");
        // It carried this test's labels, and is gone.
        let left = f.engine.list_labelled(LABEL_EXECUTOR, &f.label).await;
        assert!(left.unwrap().is_empty(), "the measuring holder was left");
    }

    /// The host's addresses, found with a holder: IPv4, not loopback, each once; the holder
    /// that found them is gone.
    pub async fn host_addresses_are_the_hosts_ipv4<S: Subject>(f: &Fixture<S>) {
        let image = f.subject.holder_image();
        f.engine.ensure_holder_image(&image).await.unwrap();
        let addrs = f.engine.host_addresses(&image, &f.labels()).await.unwrap();
        assert!(!addrs.is_empty());
        let unique: BTreeSet<&String> = addrs.iter().collect();
        assert_eq!(unique.len(), addrs.len(), "{addrs:?}");
        for addr in &addrs {
            let ip: std::net::Ipv4Addr = addr.parse().unwrap_or_else(|_| panic!("{addr}"));
            assert!(!ip.is_loopback(), "{addrs:?}");
        }
        // It carried this test's labels, and is gone.
        let finders = f.engine.list_labelled(LABEL_EXECUTOR, &f.label).await;
        assert!(finders.unwrap().is_empty(), "the finding holder was left");
    }

    /// An image the engine lacks is not present; pulling it, or creating a task of it, fails
    /// naming it.
    pub async fn absent_image_is_named<S: Subject>(f: &Fixture<S>) {
        let image = f.subject.absent_image();
        assert!(!f.engine.image_present(&image).await.unwrap());
        if f.engine.pulls_at_start() {
            // The node the task lands on finds no image: the start fails at once, naming it.
            let sandbox = f.sandbox(&f.instance("main")).await;
            let spec = f.spec(&image, &sandbox, &f.instance("main"), &f.instance("key"));
            let id = f.engine.create(&spec).await.unwrap();
            let began = Instant::now();
            match f
                .engine
                .start_and_wait_ready(&id, &spec, START_DEADLINE)
                .await
            {
                Err(EngineError::ImageUnavailable { image: named, .. }) => assert_eq!(named, image),
                other => panic!("start of an absent image: {other:?}"),
            }
            assert!(began.elapsed() < SETTLE, "took {:?}", began.elapsed());
            return;
        }
        match f.engine.pull(&image, &PullProgress::new()).await {
            Err(EngineError::ImageUnavailable { image: named, .. }) => assert_eq!(named, image),
            other => panic!("pull of an absent image: {other:?}"),
        }
        let sandbox = f.sandbox(&f.instance("main")).await;
        let spec = f.spec(&image, &sandbox, &f.instance("main"), &f.instance("key"));
        match f.engine.create(&spec).await {
            Err(e) => assert!(e.to_string().contains(&image), "{e}"),
            Ok(id) => panic!("created {id} of an absent image"),
        }
        assert!(!f.engine.image_present(&image).await.unwrap());
    }

    /// The runtimes: sorted names, each once, the default `runc` among them.
    pub async fn runtimes_include_the_default<S: Subject>(f: &Fixture<S>) {
        let runtimes = f.engine.runtimes().await.unwrap();
        assert!(runtimes.iter().any(|r| r == "runc"), "{runtimes:?}");
        let mut sorted = runtimes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, runtimes);
    }

    /// A closed task client answers no more (the executor closes it before it kills or
    /// removes a task); a new client of the same task does.
    pub async fn a_closed_client_calls_no_more<S: Subject>(f: &Fixture<S>) {
        let (id, addr) = f.ready(Behaviour::Echo, &f.instance("key")).await;
        let input = f.subject.task(Behaviour::Echo).input;
        let client = f.engine.task_client(&id, &addr, 1 << 20);
        let timeout = Duration::from_secs(30);
        let answer = client
            .call(Call::Run, input.clone(), timeout)
            .await
            .unwrap();
        assert_eq!(answer.body, input);
        client.close();
        let closed = client.call(Call::Run, input.clone(), timeout).await;
        assert!(
            matches!(closed, Err(CallError::Transport(_))),
            "a closed client called: {closed:?}"
        );
        assert_eq!(f.call(&id, &addr, &input).await.unwrap(), input);
    }
}

// ---------------------------------------------------------------------------------------
// One test per (engine, case).

/// `contract!(engine: Subject)`: a module `engine` with one `#[tokio::test]` per case.
macro_rules! contract {
    ($engine:ident: $subject:ty) => {
        // An attribute that changes nothing.
        contract!(@module $engine, $subject, #[cfg(all())]);
    };
    ($engine:ident: $subject:ty, ignore = $why:literal) => {
        contract!(@module $engine, $subject, #[ignore = $why]);
    };
    (@module $engine:ident, $subject:ty, #[$attr:meta]) => {
        mod $engine {
            use super::*;
            contract!(@cases $subject, #[$attr]:
                ready_task_answers_at_its_sandbox_address,
                labels_select_exactly_their_containers,
                exit_before_ready_reports_its_code,
                never_ready_fails_at_the_deadline,
                ready_line_without_listening_fails,
                exit_after_ready_is_seen,
                memory_limit_kill_is_reported_as_oom,
                kill_stops_the_task_and_keeps_the_container,
                remove_leaves_nothing_and_is_idempotent,
                removal_from_outside_is_seen,
                exit_stream_follows_only_its_label,
                update_limits_changes_a_running_task,
                update_limits_of_a_stopped_task_is_accepted,
                unknown_containers,
                a_gone_sandbox_cannot_be_joined,
                sandboxes_must_be_prepared,
                holders_are_separate_sandboxes,
                an_internet_sandbox_serves_its_task,
                a_hardened_task_serves,
                holder_image_is_imported_when_absent,
                an_image_in_use_is_kept_and_one_unused_removed,
                the_image_filesystem_is_measured,
                host_addresses_are_the_hosts_ipv4,
                absent_image_is_named,
                runtimes_include_the_default,
                a_closed_client_calls_no_more,
            );
        }
    };
    (@cases $subject:ty, #[$attr:meta]: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            #[$attr]
            async fn $case() {
                let fixture = Fixture::<$subject>::new(stringify!($case)).await;
                let case = cases::$case(&fixture);
                if tokio::time::timeout(CASE_LIMIT, case).await.is_err() {
                    panic!("{} did not finish within {CASE_LIMIT:?}", stringify!($case));
                }
            }
        )*
    };
}

contract!(docker: DockerSubject);
contract!(memory: MemorySubject);
contract!(
    swarm: SwarmSubject,
    ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"
);
