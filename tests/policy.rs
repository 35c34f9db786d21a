//! Regression tests of the executor's policy on the in-memory engine and tokio's paused
//! clock: one scripted scenario per defect the simulator was built to catch. Each would fail
//! on the code before its fix. (What Docker does is proven against a real dockerd elsewhere.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use common::memory::{key, metric, ready_after, request, spawn_execute, tasks};
use mecanywhere_executor::config::{Config, KeepAlivePolicy};
use mecanywhere_executor::engine::memory::{ImageScript, MemoryEngine, StartScript};
use mecanywhere_executor::executor::{ExecError, Executor};
use mecanywhere_executor::keepalive::Params;
use mecanywhere_executor::resources::Demand;

/// An executor on the in-memory engine with `images`, its containers all tasks: these
/// scenarios count the engine's containers, so no sandbox holders or spares are kept
/// beside them (the simulator runs with both).
async fn executor<S: AsRef<str>>(
    config: Config,
    images: &[(S, ImageScript)],
) -> (Arc<Executor>, MemoryEngine) {
    common::memory::start(
        Config {
            name: "policy".into(),
            sandbox_pool: 0,
            spare_containers: 0,
            ..config
        },
        images,
    )
    .await
}

/// The warm path makes no engine call: with a container of the key ready, a request is
/// served while every engine call fails (the engine "unreachable"), and no container is
/// created for it.
#[tokio::test(start_paused = true)]
async fn a_warm_request_is_served_while_the_engine_is_unreachable() {
    let (ex, engine) = executor(Config::default(), &[("a:v1", ready_after(10))]).await;
    let k = key("a:v1", 500, 128);
    assert_eq!(ex.execute(request(&k, "cold")).await.unwrap(), "cold");
    engine.set_unreachable(true);
    assert_eq!(ex.execute(request(&k, "warm")).await.unwrap(), "warm");
    // A cold key does need the engine, and says so.
    let other = key("a:v1", 250, 128);
    let err = ex.execute(request(&other, "cold")).await.unwrap_err();
    assert!(
        err.to_string().contains("unreachable"),
        "a cold start without the engine fails, saying why: {err:?}"
    );
    engine.set_unreachable(false);
    assert_eq!(
        tasks(&engine).len(),
        1,
        "one container, made for the first request"
    );
    assert_eq!(ex.execute(request(&k, "again")).await.unwrap(), "again");
}

/// Defect: a new container entered the pool idle and woke the starts waiting for room, one
/// of which could evict it before the request that started it used it.
#[tokio::test(start_paused = true)]
async fn a_new_container_serves_the_request_that_started_it_before_it_can_be_evicted() {
    let config = Config {
        cpu: 2.0,
        mem_mb: 4096,
        ..Config::default()
    };
    let (ex, engine) = executor(
        config,
        &[("a:v1", ready_after(1_000)), ("b:v1", ready_after(10))],
    )
    .await;
    let small = key("a:v1", 1000, 128);
    let large = key("b:v1", 2000, 128);
    // `small` starts (1 s); meanwhile `large` needs the whole budget and waits for room.
    let first = spawn_execute(&ex, request(&small, "slow:500"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = spawn_execute(&ex, request(&large, "ok"));
    assert_eq!(first.await.unwrap().unwrap(), "slow:500");
    assert_eq!(second.await.unwrap().unwrap(), "ok");
    let gone = engine.removed();
    let small_container = gone
        .iter()
        .find(|r| r.container.image == "a:v1")
        .expect("the small container was evicted for the large one");
    assert_eq!(
        small_container.container.calls, 1,
        "evicted before it served its starter"
    );
}

/// Defect: start failures were strings, so a queue timeout was counted as `start_failed`.
#[tokio::test(start_paused = true)]
async fn a_queue_timeout_is_counted_as_one_for_the_starter_and_its_waiters() {
    let config = Config {
        cpu: 1.0,
        mem_mb: 4096,
        queue_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let (ex, _engine) = executor(
        config,
        &[("a:v1", ready_after(10)), ("b:v1", ready_after(10))],
    )
    .await;
    let busy = spawn_execute(&ex, request(&key("a:v1", 1000, 128), "slow:5000"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = key("b:v1", 1000, 128);
    let (starter, waiter) =
        tokio::join!(ex.execute(request(&b, "ok")), ex.execute(request(&b, "ok")));
    for result in [starter, waiter] {
        assert!(
            matches!(&result, Err(e) if e.outcome() == "queue_timeout"),
            "{result:?}"
        );
        assert!(result
            .unwrap_err()
            .to_string()
            .contains("no room for the task"));
    }
    assert_eq!(
        metric(&ex, "meca_requests_total{outcome=\"queue_timeout\"}"),
        2.0
    );
    assert_eq!(
        metric(&ex, "meca_requests_total{outcome=\"start_failed\"}"),
        0.0
    );
    busy.await.unwrap().unwrap();
}

/// Defect: when the engine failed to remove a container, its reservation was released
/// while it might still run: the budget over-committed.
#[tokio::test(start_paused = true)]
async fn a_container_the_engine_fails_to_remove_stays_reserved_until_it_is_gone() {
    let config = Config {
        cpu: 2.0,
        mem_mb: 4096,
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let (ex, engine) = executor(config, &[("a:v1", ready_after(10))]).await;
    ex.execute(request(&key("a:v1", 1500, 256), "ok"))
        .await
        .unwrap();
    engine.fail_removals(1000);
    // Reaped after its idle second; the removal fails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tasks(&engine).len(), 1, "the container is still there");
    assert_eq!(
        ex.budget().used,
        Demand {
            milli_cpu: 1500,
            mem_mb: 256
        }
    );
    assert_eq!(
        metric(&ex, "meca_containers{state=\"removal_failed\"}"),
        1.0
    );
    assert_eq!(ex.stats().unwrap().containers, 1);
    // A start that needs the room cannot have it while the container lingers.
    let refused = ex.execute(request(&key("a:v1", 1000, 128), "ok"));
    let refused = tokio::time::timeout(Duration::from_secs(120), refused)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(e) if e.outcome() == "queue_timeout"),
        "{refused:?}"
    );
    // Once the engine removes it (retries back off up to 30 s), the room is free again.
    engine.fail_removals(0);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(engine.containers().is_empty());
    assert_eq!(
        ex.budget().used,
        Demand {
            milli_cpu: 0,
            mem_mb: 0
        }
    );
    assert_eq!(
        metric(&ex, "meca_containers{state=\"removal_failed\"}"),
        0.0
    );
    ex.shutdown().await;
}

/// A pull that stands still for `pull_stall_timeout` is cancelled, with the error for
/// every request waiting on it, long before `pull_timeout`; a pull that ends in time is not.
#[tokio::test(start_paused = true)]
async fn a_pull_without_progress_is_cancelled_after_the_stall_timeout() {
    let config = Config {
        pull_timeout: Duration::from_secs(600),
        pull_stall_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    // The in-memory pull reports its one layer at the start and at the end only.
    let absent = |pull_ms: u64| ImageScript {
        present: false,
        pull: Some(Duration::from_millis(pull_ms)),
        start: StartScript::Ready(Duration::from_millis(10)),
    };
    let (ex, _engine) = executor(
        config,
        &[("quick:v1", absent(1_500)), ("stuck:v1", absent(60_000))],
    )
    .await;
    let started = Instant::now();
    let stuck = key("stuck:v1", 500, 128);
    let (a, b) = tokio::join!(
        ex.execute(request(&stuck, "ok")),
        ex.execute(request(&key("stuck:v1", 250, 128), "ok"))
    );
    for result in [a, b] {
        let e = result.unwrap_err();
        assert!(
            e.to_string().contains("stuck:v1 made no progress for 2s"),
            "{e}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        ex.execute(request(&key("quick:v1", 500, 128), "ok"))
            .await
            .unwrap(),
        "ok"
    );
    ex.shutdown().await;
}

/// Defect: each new image was pulled at once, so N new images meant N parallel pulls.
#[tokio::test(start_paused = true)]
async fn pulls_are_capped_and_a_queued_pull_counts_against_the_pull_timeout() {
    let config = Config {
        cpu: 16.0,
        mem_mb: 16 * 1024,
        max_concurrent_pulls: 2,
        pull_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let absent = |pull_ms: u64| ImageScript {
        present: false,
        pull: Some(Duration::from_millis(pull_ms)),
        start: StartScript::Ready(Duration::from_millis(10)),
    };
    let images: Vec<(String, ImageScript)> = (0..6)
        .map(|i| (format!("new-{i}:v1"), absent(2_000)))
        .collect();
    let (ex, engine) = executor(config, &images).await;
    let started = Instant::now();
    let results = futures_util::future::join_all(
        (0..6).map(|i| ex.execute(request(&key(&format!("new-{i}:v1"), 1000, 128), "ok"))),
    )
    .await;
    let (_, most_at_once, total) = engine.pulls();
    assert_eq!(most_at_once, 2, "pulls ran {most_at_once} at once");
    // Two pulls of 2 s each fit in the 5 s pull timeout, queue included; the third pair
    // would finish at 6 s and was given up at 5 s, without being pulled.
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 4, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        let e = r.as_ref().unwrap_err();
        assert!(e.to_string().contains("timed out after 5s"), "{e}");
    }
    assert_eq!(
        total, 6,
        "the last two began at 4 s and were given up at 5 s"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    ex.shutdown().await;
}

/// Waiting starts are served in order: a large request is not starved by a stream of small
/// ones that would each fit the room freed by the one before.
#[tokio::test(start_paused = true)]
async fn a_large_request_is_not_starved_by_a_stream_of_small_ones() {
    let config = Config {
        cpu: 2.0,
        mem_mb: 4096,
        queue_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let images: Vec<(String, ImageScript)> = (0..40)
        .map(|i| (format!("small-{i}:v1"), ready_after(10)))
        .collect();
    let mut all: Vec<(&str, ImageScript)> = images
        .iter()
        .map(|(i, s)| (i.as_str(), s.clone()))
        .collect();
    all.push(("large:v1", ready_after(10)));
    let (ex, _engine) = executor(config, &all).await;
    // Small 1-core tasks arrive every 500 ms and run 1 s each: at least one always runs.
    let mut smalls = Vec::new();
    for i in 0..40 {
        let ex = Arc::clone(&ex);
        let r = request(&key(&format!("small-{i}:v1"), 1000, 128), "slow:1000");
        smalls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500 * i)).await;
            ex.execute(r).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(750)).await;
    let large = ex.execute(request(&key("large:v1", 2000, 128), "ok")).await;
    assert_eq!(large.map_err(|e| e.to_string()), Ok(Bytes::from("ok")));
    for small in smalls {
        let result: Result<Bytes, ExecError> = small.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

/// Eviction off the critical path: removals can take seconds (Docker, a busy host); a start
/// that evicts an idle container reuses its room once the container's processes are killed,
/// and the removal finishes in the background. `background_eviction: false` waits for it.
#[tokio::test(start_paused = true)]
async fn an_evicted_containers_room_is_reused_once_it_is_killed_not_after_its_removal() {
    for background in [true, false] {
        let config = Config {
            cpu: 1.0,
            mem_mb: 1024,
            background_eviction: background,
            ..Config::default()
        };
        let (ex, engine) = executor(
            config,
            &[("a:v1", ready_after(100)), ("b:v1", ready_after(100))],
        )
        .await;
        engine.set_delays(Duration::from_secs(5), Duration::from_millis(50));
        ex.execute(request(&key("a:v1", 1000, 128), "ok"))
            .await
            .unwrap();
        let started = Instant::now();
        ex.execute(request(&key("b:v1", 1000, 128), "ok"))
            .await
            .unwrap();
        let took = started.elapsed();
        if background {
            // 50 ms kill + 100 ms start, not the 5 s removal.
            assert!(took < Duration::from_millis(500), "took {took:?}");
            // The evicted container still exists, dead, while the new one runs.
            let containers = tasks(&engine);
            assert_eq!(containers.len(), 2, "{containers:?}");
            assert!(containers.iter().any(|c| c.image == "a:v1"
                && matches!(
                    c.state,
                    mecanywhere_executor::engine::memory::MemState::Exited(_)
                )));
            assert_eq!(
                ex.budget().used,
                Demand {
                    milli_cpu: 1000,
                    mem_mb: 128
                }
            );
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert_eq!(tasks(&engine).len(), 1, "removed in the background");
        } else {
            assert!(took >= Duration::from_secs(5), "took {took:?}");
        }
        ex.shutdown().await;
    }
}

/// Defect: a pull whose waiting starts were all cancelled (pause) stayed half-done, holding
/// its pull slot for good: every later pull of another image timed out.
#[tokio::test(start_paused = true)]
async fn a_pause_during_a_pull_leaves_no_pull_slot_taken() {
    let config = Config {
        cpu: 4.0,
        mem_mb: 4096,
        max_concurrent_pulls: 1,
        pull_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let absent = |pull_ms: u64| ImageScript {
        present: false,
        pull: Some(Duration::from_millis(pull_ms)),
        start: StartScript::Ready(Duration::from_millis(10)),
    };
    let (ex, engine) = executor(config, &[("x:v1", absent(3_000)), ("y:v1", absent(1_000))]).await;
    let first = spawn_execute(&ex, request(&key("x:v1", 1000, 128), "ok"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    ex.pause().await;
    let cancelled = first.await.unwrap();
    assert!(
        matches!(&cancelled, Err(e) if e.outcome() == "rejected"),
        "{cancelled:?}"
    );
    ex.unpause();
    let started = Instant::now();
    let second = ex.execute(request(&key("y:v1", 1000, 128), "ok")).await;
    assert_eq!(second.map_err(|e| e.to_string()), Ok(Bytes::from("ok")));
    // It waited for the first pull to finish (3 s), not for a slot that never came back.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(engine.pulls().0, 0, "no pull still running");
    ex.shutdown().await;
}

/// `keep_alive: adaptive`: a key called every 10 minutes, once its idle times are learned,
/// has its container removed as soon as each request ends (not an idle timeout later), and
/// started again shortly before the next request, which finds it warm. A pre-warm that no
/// request uses is removed after its keep-alive window.
#[tokio::test(start_paused = true)]
async fn a_periodic_key_is_removed_early_and_prewarmed_before_its_next_request() {
    let minute = Duration::from_secs(60);
    let config = Config {
        cpu: 4.0,
        mem_mb: 4096,
        idle_timeout: 60 * minute,
        keep_alive: KeepAlivePolicy::Adaptive(Params::default()),
        ..Config::default()
    };
    let (ex, engine) = executor(config, &[("timer:v1", ready_after(500))]).await;
    let k = key("timer:v1", 1000, 128);
    let period = 10 * minute;
    let t0 = Instant::now();
    let cold = |ex: &Executor| metric(ex, "meca_request_duration_seconds_count{path=\"cold\"}");
    // Six requests give five idle times (9 min 59.9 s each), enough to trust.
    for i in 0..6 {
        tokio::time::sleep_until(t0 + period * i).await;
        ex.execute(request(&k, "slow:100")).await.unwrap();
        if i < 5 {
            // Still the fixed policy: the one container stays.
            assert_eq!(tasks(&engine).len(), 1, "request {i}");
        }
    }
    assert_eq!(cold(&ex), 1.0, "only the first request started a container");
    let ended = Instant::now();
    // The learned pre-warm window is 9 min less 10%: the container is removed at once...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tasks(&engine).is_empty(), "{:?}", tasks(&engine));
    let removed: Vec<_> = engine
        .removed()
        .into_iter()
        .filter(|r| !r.container.holder)
        .collect();
    assert_eq!(removed.len(), 1);
    assert!(removed[0].removed_at - ended < Duration::from_secs(1));
    // ...and started again 8.1 minutes after the request ended.
    let prewarm = (9 * minute).mul_f64(0.9);
    tokio::time::sleep_until(ended + prewarm - Duration::from_secs(1)).await;
    assert!(tasks(&engine).is_empty());
    tokio::time::sleep_until(ended + prewarm + Duration::from_secs(1)).await;
    let containers = tasks(&engine);
    assert_eq!(containers.len(), 1, "pre-warmed");
    assert!(containers[0].became_ready && containers[0].calls == 0);
    assert_eq!(metric(&ex, "meca_predicted_prewarms_total"), 1.0);
    // The next request comes at its period and is served warm by the pre-warmed container.
    tokio::time::sleep_until(t0 + period * 6).await;
    let started = Instant::now();
    ex.execute(request(&k, "slow:100")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100), "warm");
    assert_eq!(cold(&ex), 1.0);
    assert_eq!(tasks(&engine)[0].calls, 1);
    // No request comes any more: the next pre-warm is removed unused after its keep-alive
    // window (11 min plus 10%, less the pre-warm window: 4 min), long before the idle
    // timeout.
    let ended = Instant::now();
    tokio::time::sleep_until(ended + prewarm + Duration::from_secs(1)).await;
    assert_eq!(tasks(&engine).len(), 1, "pre-warmed again");
    assert_eq!(metric(&ex, "meca_predicted_prewarms_total"), 2.0);
    tokio::time::sleep_until(ended + (11 * minute).mul_f64(1.1) + Duration::from_secs(2)).await;
    assert!(tasks(&engine).is_empty(), "{:?}", tasks(&engine));
    assert_eq!(metric(&ex, "meca_predicted_prewarms_unused_total"), 1.0);
    // And nothing more is started for the key until it is called again.
    tokio::time::sleep(2 * period).await;
    assert!(engine.containers().is_empty());
    assert_eq!(metric(&ex, "meca_predicted_prewarms_total"), 2.0);
    ex.shutdown().await;
}

/// `/update-config` swaps the keep-alive policy (while paused only): from fixed to
/// `priced`, whose price here makes no keep-alive worth it (the container goes as soon as
/// its request ends, not an idle timeout later), and back to fixed.
#[tokio::test(start_paused = true)]
async fn update_config_swaps_the_keep_alive_policy_while_paused() {
    use mecanywhere_executor::executor::ConfigUpdate;
    let minute = Duration::from_secs(60);
    let config = Config {
        cpu: 4.0,
        mem_mb: 4096,
        idle_timeout: 60 * minute,
        ..Config::default()
    };
    let (ex, engine) = executor(config, &[("swap:v1", ready_after(500))]).await;
    let k = key("swap:v1", 1000, 128);
    ex.execute(request(&k, "slow:100")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tasks(&engine).len(), 1, "fixed: kept");
    let priced = KeepAlivePolicy::Priced {
        params: Params::priced(),
        price: 1.0,
    };
    let update = |keep_alive| ConfigUpdate {
        keep_alive: Some(keep_alive),
        ..ConfigUpdate::default()
    };
    assert!(matches!(
        ex.update_config(update(priced)).await,
        Err(ExecError::Running)
    ));
    assert_eq!(ex.config().keep_alive, KeepAlivePolicy::Fixed);

    ex.pause().await;
    ex.update_config(update(priced)).await.unwrap();
    assert_eq!(ex.config().keep_alive, priced);
    ex.unpause();
    for _ in 0..3 {
        ex.execute(request(&k, "slow:100")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tasks(&engine).is_empty(), "priced: not worth keeping");
    }

    ex.pause().await;
    ex.update_config(update(KeepAlivePolicy::Fixed))
        .await
        .unwrap();
    ex.unpause();
    ex.execute(request(&k, "slow:100")).await.unwrap();
    tokio::time::sleep(59 * minute).await;
    assert_eq!(
        tasks(&engine).len(),
        1,
        "fixed again: kept for the idle timeout"
    );
    tokio::time::sleep(2 * minute).await;
    assert!(tasks(&engine).is_empty());
    ex.shutdown().await;
}
