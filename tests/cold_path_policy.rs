//! The cold path's pools on the in-memory engine and tokio's paused clock: scripted
//! scenarios of what the pools guarantee (a holder hosts one live task at a time and is
//! reused after it; a spare grows only into free room and is evicted first; prewarm keys
//! come before spares). Docker itself is exercised in `tests/cold_path.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use common::memory::{is_spare, key, metric, ready_after, spawn_execute};
use mecanywhere_executor::config::{Config, Prewarm};
use mecanywhere_executor::engine::memory::MemoryEngine;
use mecanywhere_executor::executor::{Executor, TaskRequest};
use mecanywhere_executor::resources::Demand;
use mecanywhere_executor::task::TaskKey;

/// A request of `key` answered at once.
fn request(key: &TaskKey) -> TaskRequest {
    common::memory::request(key, "ok")
}

/// An executor on the in-memory engine with `images`, each ready 100 ms after it starts.
async fn executor(config: Config, images: &[&str]) -> (Arc<Executor>, MemoryEngine) {
    let images: Vec<_> = images.iter().map(|i| (*i, ready_after(100))).collect();
    common::memory::start(
        Config {
            name: "pools".into(),
            ..config
        },
        &images,
    )
    .await
}

/// The sandbox each task container (not holder) joined, by container id.
fn sandboxes_of_tasks(engine: &MemoryEngine) -> Vec<(String, Option<String>)> {
    let mut all: Vec<_> = engine
        .removed()
        .into_iter()
        .map(|r| r.container)
        .chain(engine.containers())
        .filter(|c| !c.holder)
        .map(|c| (c.id, c.sandbox))
        .collect();
    all.sort();
    all
}

#[tokio::test(start_paused = true)]
async fn a_holder_hosts_the_next_task_once_its_task_is_removed_and_never_two_at_once() {
    let config = Config {
        sandbox_pool: 1,
        spare_containers: 0,
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let (ex, engine) = executor(config, &["a:v1"]).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(metric(&ex, "meca_sandboxes{state=\"free\"}"), 1.0);
    let (a, b) = (key("a:v1", 1000, 128), key("a:v1", 500, 64));
    // Two keys at once: one gets the free holder, the other a holder started for it (the
    // pool is empty and refills only 2 s after a take). Every task is in a sandbox.
    let (x, y) = tokio::join!(ex.execute(request(&a)), ex.execute(request(&b)));
    x.unwrap();
    y.unwrap();
    let used = sandboxes_of_tasks(&engine);
    let in_sandbox: Vec<_> = used.iter().filter_map(|(_, s)| s.clone()).collect();
    assert_eq!(in_sandbox.len(), 2, "{used:?}");
    assert_ne!(
        in_sandbox[0], in_sandbox[1],
        "one holder per task: {used:?}"
    );
    // Both are reaped after their idle second; their holders go back to the pool before
    // the refill (the surplus over `sandbox_pool` removed), and the next key starts in the
    // one kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(metric(&ex, "meca_sandboxes{state=\"free\"}"), 1.0);
    let kept: Vec<String> = engine
        .containers()
        .into_iter()
        .filter(|c| c.holder)
        .map(|c| c.id)
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        in_sandbox.contains(&kept[0]),
        "a used holder is kept: {kept:?}"
    );
    let holder = kept[0].clone();
    // A slow call (3 s): the pool refills meanwhile (2 s after the take).
    let slow = TaskRequest {
        key: key("a:v1", 250, 32),
        input: Bytes::from_static(b"slow:3000"),
    };
    let third = spawn_execute(&ex, slow);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now: Vec<_> = engine
        .containers()
        .into_iter()
        .filter(|c| !c.holder)
        .collect();
    assert_eq!(now.len(), 1);
    assert_eq!(
        now[0].sandbox.as_ref(),
        Some(&holder),
        "the holder was reused"
    );
    // The pool refilled while the call ran; the task leaves after its idle second and gives
    // its holder back: still at most `sandbox_pool` free holders, the surplus removed.
    third.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&ex, "meca_sandboxes{state=\"free\"}"), 1.0);
    assert_eq!(metric(&ex, "meca_sandboxes{state=\"in_use\"}"), 0.0);
    let holders = engine.containers().into_iter().filter(|c| c.holder).count();
    assert_eq!(holders, 1, "{:?}", engine.containers());
    assert_eq!(engine.sandbox_conflicts(), 0);
    ex.shutdown().await;
    assert!(engine.containers().is_empty(), "{:?}", engine.containers());
}

#[tokio::test(start_paused = true)]
async fn a_spare_is_resized_for_a_new_key_of_its_image_within_the_budget() {
    // 2 cores: key `small` (0.5) runs and its spare (0.5) starts. A new key of the image
    // asking 1 core grows the spare into free room and is served by it, resized.
    let config = Config {
        cpu: 2.0,
        mem_mb: 4096,
        sandbox_pool: 0,
        spare_containers: 2,
        ..Config::default()
    };
    let (ex, engine) = executor(config, &["a:v1"]).await;
    ex.execute(request(&key("a:v1", 500, 128))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&ex, "meca_containers{state=\"spare\"}"), 1.0);
    let spare = engine
        .containers()
        .into_iter()
        .find(is_spare)
        .expect("a spare");
    assert_eq!(
        (spare.milli_cpu, spare.mem_mb),
        (500, 128),
        "the key's size"
    );
    let created = engine.containers().len() + engine.removed().len();
    ex.execute(request(&key("a:v1", 1000, 256))).await.unwrap();
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 1.0);
    assert_eq!(
        engine.containers().len() + engine.removed().len(),
        created,
        "no container was created for the new key"
    );
    let resized = engine
        .containers()
        .into_iter()
        .find(|c| c.id == spare.id)
        .expect("the claimed spare still runs");
    assert_eq!((resized.milli_cpu, resized.mem_mb), (1000, 256));
    assert_eq!(
        ex.budget().used,
        Demand {
            milli_cpu: 1500,
            mem_mb: 384
        }
    );
    // Its replacement is at the image's floor (the smallest recent key: 0.5 core, 128 MB),
    // which the free half core holds; nothing was evicted for it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&ex, "meca_containers{state=\"spare\"}"), 1.0);
    assert_eq!(
        ex.budget().used,
        Demand {
            milli_cpu: 2000,
            mem_mb: 512
        }
    );
    assert_eq!(metric(&ex, "meca_evictions_total"), 0.0);
    // A key below the floor never takes that spare: it is replaced, and the key starts
    // afresh (evicting the spare for room).
    ex.execute(request(&key("a:v1", 250, 64))).await.unwrap();
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 1.0);
    ex.shutdown().await;
    assert!(engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_spare_that_cannot_grow_into_free_room_is_evicted_first_for_the_normal_start() {
    let config = Config {
        cpu: 2.0,
        mem_mb: 4096,
        sandbox_pool: 0,
        spare_containers: 2,
        ..Config::default()
    };
    let (ex, engine) = executor(config, &["a:v1"]).await;
    let small = key("a:v1", 500, 128);
    ex.execute(request(&small)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&ex, "meca_containers{state=\"spare\"}"), 1.0);
    // 1.6 cores: growing the spare (0.5) would need 1.1 more, and only 1.0 is free. The
    // spare stays a spare; the normal start evicts it first, then the idle `small`.
    ex.execute(request(&key("a:v1", 1600, 128))).await.unwrap();
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 0.0);
    assert_eq!(metric(&ex, "meca_evictions_total"), 2.0);
    let spare_gone = engine.removed().into_iter().any(|r| is_spare(&r.container));
    assert!(spare_gone, "the spare was evicted");
    let (live_cpu, _) = engine.live_demand();
    assert!(live_cpu <= ex.budget().used.milli_cpu);
    ex.shutdown().await;
    assert!(engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_prewarm_key_takes_the_room_of_a_spare() {
    // The prewarm key's image is missing at first: the keeper fails and retries in 30 s.
    // Meanwhile `a` (1 core) runs and its spare (1 core) fills the 2-core budget.
    let config = Config {
        cpu: 2.0,
        mem_mb: 4096,
        sandbox_pool: 0,
        spare_containers: 1,
        idle_timeout: Duration::from_secs(600),
        prewarm: vec![Prewarm {
            key: key("p:v1", 1000, 128),
        }],
        ..Config::default()
    };
    let (ex, engine) = executor(config, &["a:v1"]).await;
    ex.execute(request(&key("a:v1", 1000, 128))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&ex, "meca_containers{state=\"spare\"}"), 1.0);
    assert_eq!(ex.budget().used.milli_cpu, 2000);
    engine.add_image("p:v1", ready_after(100));
    // A retry (30 to 60 s after the failure) finds room only in the spare's: the spare
    // goes, the prewarm key starts.
    tokio::time::sleep(Duration::from_secs(65)).await;
    assert_eq!(metric(&ex, "meca_containers{state=\"spare\"}"), 0.0);
    assert!(
        engine.containers().iter().any(|c| c.image == "p:v1"),
        "{:?}",
        engine.containers()
    );
    assert_eq!(ex.budget().used.milli_cpu, 2000);
    ex.shutdown().await;
    assert!(engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pause_waits_for_removals_the_executor_began_so_update_config_is_not_refused() {
    let config = Config {
        cpu: 4.0,
        mem_mb: 4096,
        sandbox_pool: 0,
        spare_containers: 0,
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let (ex, engine) = executor(config, &["a:v1"]).await;
    // Docker takes 5 s to remove a container here.
    engine.set_delays(Duration::from_secs(5), Duration::ZERO);
    ex.execute(request(&key("a:v1", 2000, 1024))).await.unwrap();
    // The reaper takes the idle container after 1 s and begins its 5 s removal.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(engine.removed().len(), 0, "the removal is still in flight");
    let paused = tokio::time::Instant::now();
    ex.pause().await;
    assert!(
        paused.elapsed() >= Duration::from_millis(3500),
        "pause answered after {:?}, while the reaper's removal still held the room",
        paused.elapsed()
    );
    assert_eq!(
        ex.budget().used,
        Demand {
            milli_cpu: 0,
            mem_mb: 0
        },
        "room still held after pause"
    );
    // A budget below what the reaped container held is accepted: nothing holds it now.
    let update = mecanywhere_executor::executor::ConfigUpdate {
        cpu: Some(1.0),
        mem_mb: Some(512),
        ..Default::default()
    };
    ex.update_config(update).await.unwrap();
    ex.unpause();
    ex.shutdown().await;
    assert!(engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn at_the_bound_the_spare_of_the_image_used_least_recently_makes_way() {
    let config = Config {
        cpu: 4.0,
        mem_mb: 4096,
        sandbox_pool: 0,
        spare_containers: 1,
        idle_timeout: Duration::from_secs(600),
        ..Config::default()
    };
    let (ex, engine) = executor(config, &["a:v1", "b:v1"]).await;
    let spare_image = |engine: &MemoryEngine| {
        let spares: Vec<String> = engine
            .containers()
            .into_iter()
            .filter(is_spare)
            .map(|c| c.image)
            .collect();
        spares
    };
    ex.execute(request(&key("a:v1", 500, 128))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(spare_image(&engine), ["a:v1"]);
    // Image b ran since: its spare takes the only place.
    ex.execute(request(&key("b:v1", 500, 128))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(spare_image(&engine), ["b:v1"]);
    assert_eq!(metric(&ex, "meca_containers{state=\"spare\"}"), 1.0);
    // And serves b's next key.
    ex.execute(request(&key("b:v1", 500, 256))).await.unwrap();
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 1.0);
    ex.shutdown().await;
    assert!(engine.containers().is_empty());
}
