//! GPU scheduling against the real Docker daemon, with the GPU inventory faked (this machine
//! has no GPU): the executor reserves idle GPUs by UUID and sends Docker a device request for
//! exactly those. Without the NVIDIA container toolkit Docker then refuses to start the
//! container; the test asserts the request Docker received, that the failure is reported
//! clearly, and that nothing is leaked (no container, no GPU reserved).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mecanywhere_executor::config::Config;
use mecanywhere_executor::engine::docker::DockerEngine;
use mecanywhere_executor::engine::{ContainerSpec, Engine, EngineError, ExitState};
use mecanywhere_executor::executor::{Executor, GpuLoader, TaskRequest};
use mecanywhere_executor::gpu::{GpuError, GpuInfo, GpuInventory, GpuLoad};
use mecanywhere_executor::pull_progress::PullProgress;
use mecanywhere_executor::resources::Demand;
use mecanywhere_executor::task::{Runtime, TaskKey};

/// Three GPUs; GPU-1 is busy (compute 80%).
struct FakeGpus;

impl GpuInventory for FakeGpus {
    fn devices(&self) -> Result<Vec<GpuInfo>, GpuError> {
        Ok((0..3)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-fake-{index}"),
                model: "Fake GPU".into(),
                memory_total_mb: 1024,
            })
            .collect())
    }

    fn load(&self, uuid: &str) -> Result<GpuLoad, GpuError> {
        Ok(GpuLoad {
            compute_percent: if uuid == "GPU-fake-1" { 80 } else { 0 },
            memory_percent: 0,
            memory_used_mb: 0,
        })
    }
}

/// The real Docker engine, recording what the executor asked for and what Docker stored.
struct Recording {
    docker: DockerEngine,
    specs: Mutex<Vec<ContainerSpec>>,
    device_requests: Mutex<Vec<String>>,
}

#[async_trait]
impl Engine for Recording {
    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        self.docker.image_present(image).await
    }
    async fn pull(&self, image: &str, progress: &PullProgress) -> Result<(), EngineError> {
        self.docker.pull(image, progress).await
    }
    async fn stored_images(
        &self,
    ) -> Result<Vec<mecanywhere_executor::engine::StoredImage>, EngineError> {
        self.docker.stored_images().await
    }
    async fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        self.docker.remove_image(name).await
    }
    async fn image_root(&self) -> Result<std::path::PathBuf, EngineError> {
        self.docker.image_root().await
    }
    async fn image_filesystem(
        &self,
        holder_image: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Result<mecanywhere_executor::engine::Filesystem, EngineError> {
        self.docker.image_filesystem(holder_image, labels).await
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.specs.lock().unwrap().push(spec.clone());
        let id = self.docker.create(spec).await?;
        let stored = common::inspect(&id, "{{json .HostConfig.DeviceRequests}}");
        self.device_requests.lock().unwrap().push(stored);
        Ok(id)
    }
    async fn start_and_wait_ready(
        &self,
        id: &str,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<mecanywhere_executor::engine::TaskAddr, EngineError> {
        self.docker.start_and_wait_ready(id, spec, deadline).await
    }
    async fn exit_state(&self, id: &str) -> Result<Option<ExitState>, EngineError> {
        self.docker.exit_state(id).await
    }
    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        self.docker.kill(id).await
    }
    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.docker.remove(id).await
    }
    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        self.docker.list_labelled(key, value).await
    }
    async fn running_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        self.docker.running_labelled(key, value).await
    }
    fn container_exits(
        &self,
        key: &str,
        value: &str,
    ) -> futures_util::stream::BoxStream<'static, Result<String, EngineError>> {
        self.docker.container_exits(key, value)
    }
    async fn runtimes(&self) -> Result<Vec<String>, EngineError> {
        self.docker.runtimes().await
    }
    async fn prepare_sandboxes(&self, dir: &std::path::Path) -> Result<(), EngineError> {
        self.docker.prepare_sandboxes(dir).await
    }
    async fn host_addresses(
        &self,
        holder_image: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        self.docker.host_addresses(holder_image, labels).await
    }
    async fn ensure_holder_image(&self, name: &str) -> Result<(), EngineError> {
        self.docker.ensure_holder_image(name).await
    }
    async fn start_holder(
        &self,
        spec: &mecanywhere_executor::engine::HolderSpec,
    ) -> Result<mecanywhere_executor::engine::SandboxRef, EngineError> {
        self.docker.start_holder(spec).await
    }
    async fn update_limits(
        &self,
        id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> Result<(), EngineError> {
        self.docker.update_limits(id, nano_cpus, memory_bytes).await
    }
}

/// Removes this test's labelled containers, also when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in common::containers_of(&self.0) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &id])
                .output();
        }
    }
}

fn request(gpus: u32) -> TaskRequest {
    TaskRequest {
        key: TaskKey {
            image: common::ECHO.into(),
            runtime: Runtime::Container,
            demand: Demand {
                milli_cpu: 500,
                mem_mb: 64,
            },
            gpu_count: gpus,
            use_sgx: false,
        },
        input: Bytes::from_static(b"gpu"),
    }
}

async fn start(name: &str, has_gpu: bool) -> (Arc<Executor>, Arc<Recording>, Cleanup) {
    common::require_images();
    let config = Config {
        name: name.to_string(),
        has_gpu,
        // Its default state file is the host's.
        image_gc: mecanywhere_executor::config::ImageGc::off(),
        ..Config::default()
    };
    let engine = Arc::new(Recording {
        docker: DockerEngine::connect().await.unwrap(),
        specs: Mutex::new(Vec::new()),
        device_requests: Mutex::new(Vec::new()),
    });
    let loader: GpuLoader = Box::new(|| Ok(Arc::new(FakeGpus) as Arc<dyn GpuInventory>));
    let executor = Executor::start(config, engine.clone(), loader)
        .await
        .unwrap();
    (executor, engine, Cleanup(name.to_string()))
}

#[tokio::test]
async fn gpu_tasks_get_a_device_request_for_idle_gpus_by_uuid() {
    let name = format!("test-gpu-{}", std::process::id());
    let (executor, engine, _cleanup) = start(&name, true).await;
    let stats = executor.stats().unwrap();
    assert_eq!((stats.task_gpu, stats.task_used_gpu), (3, 0));
    assert_eq!(stats.gpu_model, "Fake GPU");

    let error = executor.execute(request(2)).await.unwrap_err();
    // GPU-fake-1 is busy: the two idle ones are chosen, named by UUID.
    assert_eq!(
        engine.specs.lock().unwrap()[0].gpus,
        ["GPU-fake-0", "GPU-fake-2"]
    );
    let stored = engine.device_requests.lock().unwrap()[0].clone();
    assert!(
        stored.contains(r#""Driver":"nvidia""#)
            && stored.contains(r#""DeviceIDs":["GPU-fake-0","GPU-fake-2"]"#)
            && stored.contains(r#""Capabilities":[["gpu"]]"#),
        "device request stored by Docker: {stored}"
    );
    // Without the NVIDIA toolkit Docker cannot start it: a clear error, nothing leaked.
    let message = error.to_string();
    assert!(message.contains("not enough GPU available"), "{message}");
    assert!(message.contains("NVIDIA container toolkit"), "{message}");
    assert!(common::tasks_of(&name).is_empty());
    let stats = executor.stats().unwrap();
    assert_eq!(stats.task_used_gpu, 0, "GPUs released on the failure path");
    assert_eq!(stats.task_used_cpu_percent, 0.0);

    // More GPUs than the host offers: refused at once, without creating anything.
    let error = executor.execute(request(4)).await.unwrap_err();
    assert!(
        error.to_string().contains("not enough GPU available"),
        "{error}"
    );
    assert_eq!(engine.specs.lock().unwrap().len(), 1);
    executor.shutdown().await;
}

#[tokio::test]
async fn gpu_requests_are_refused_when_has_gpu_is_off() {
    let name = format!("test-gpu-off-{}", std::process::id());
    let (executor, engine, _cleanup) = start(&name, false).await;
    assert_eq!(executor.stats().unwrap().task_gpu, 0);
    let error = executor.execute(request(1)).await.unwrap_err();
    assert!(
        error.to_string().contains("not enough GPU available"),
        "{error}"
    );
    assert!(error.to_string().contains("has_gpu is off"), "{error}");
    assert!(engine.specs.lock().unwrap().is_empty());
    // A task without GPUs gets no device request.
    let answer = executor.execute(request(0)).await.unwrap();
    assert_eq!(&answer[..], b"gpu");
    assert!(engine.specs.lock().unwrap()[0].gpus.is_empty());
    assert_eq!(engine.device_requests.lock().unwrap()[0], "null");
    executor.shutdown().await;
    assert!(common::containers_of(&name).is_empty());
}
