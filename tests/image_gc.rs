//! Image garbage collection (`image_gc`) on a real dockerd: images of known sizes built
//! here, pushed to a registry this test serves on 127.0.0.1, pulled by the executor, and
//! removed by it, least recently used first, when they pass a byte budget or fill a small
//! disk; what it must never remove stays. The small disk is a tmpfs under a second dockerd
//! this test starts (its own data root, exec root and containerd; no bridge, no iptables),
//! stopped and unmounted at the end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::{build_with_random_layer, image_present, push_and_forget, Registry, Tags};
use common::*;
use mecanywhere_executor::metrics_text::Scrape;
use serde_json::{json, Value};

/// The `image_gc` section with a state file in `dir` and passes every second.
fn gc_config(dir: &Path, settings: &str) -> String {
    format!(
        "idle_timeout: 1s\nimage_gc:\n  interval: 1s\n  state_file: {}\n{settings}",
        dir.join("images.json").display()
    )
}

/// The record of the state file: image → last use (Unix seconds).
fn last_uses(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("images.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["images"].clone()
}

fn removed_total(ex: &Executor) -> f64 {
    let scrape = Scrape::parse(&ex.get("/metrics").raw);
    ["disk", "budget", "pull"]
        .iter()
        .filter_map(|reason| {
            scrape.get(&format!("meca_images_removed_total{{reason=\"{reason}\"}}"))
        })
        .sum()
}

fn run(ex: &Executor, image: &str) {
    let reply = ex.execute(&json!({"id": image, "input": "gc"}));
    assert!(reply.success(), "{image}: {reply:?}\n{}", ex.log());
}

#[test]
fn past_max_bytes_the_image_used_least_recently_goes_first_also_after_a_restart() {
    require_images();
    let registry = Registry::start();
    // Built a, b, c (Docker's creation order), used b, a: b is the least recently used,
    // though a is the oldest image.
    let [a, b, c] = ["gc/lru-a:v1", "gc/lru-b:v1", "gc/lru-c:v1"].map(|r| registry.reference(r));
    let _tags = Tags(vec![a.clone(), b.clone(), c.clone()]);
    for image in [&a, &b, &c] {
        build_with_random_layer(image, 8_000_000);
        push_and_forget(image);
    }
    let state = tempfile::tempdir().unwrap();
    // Each image takes about 9.4 MB: two fit in 25 MB, three do not.
    let config = gc_config(
        state.path(),
        "  high_percent: 0\n  max_bytes: 25MB\n  min_age: 1s\n",
    );

    let mut first = Executor::start("gc-lru", &config);
    for image in [&b, &a] {
        run(&first, image);
        assert!(
            first.wait_containers(0, Duration::from_secs(20)).is_empty(),
            "the idle container of {image} is reaped"
        );
        std::thread::sleep(Duration::from_millis(1200));
    }
    assert_eq!(removed_total(&first), 0.0, "two images fit the budget");
    first.stop();
    let uses = last_uses(state.path());
    assert!(
        uses[&b]["last_used"].as_u64() < uses[&a]["last_used"].as_u64(),
        "the record kept b used before a: {uses}"
    );
    assert_eq!(uses[&a]["pulled"], true, "{uses}");

    // A new executor reads the record: the pull of c makes room by removing b.
    let second = Executor::start("gc-lru-again", &config);
    run(&second, &c);
    assert!(
        wait_until(Duration::from_secs(20), || !image_present(&b)),
        "the least recently used image is removed; log:\n{}",
        second.log()
    );
    assert!(image_present(&a), "the image used after it stays");
    assert!(image_present(&c), "the image just pulled stays");
    assert_eq!(removed_total(&second), 1.0, "one removal makes room");
    let log = second.log();
    let removed = log
        .lines()
        .find(|l| l.contains("image removed"))
        .unwrap_or_else(|| panic!("the removal is logged:\n{log}"));
    assert!(
        removed.contains(&b) && removed.contains("reason="),
        "{removed}"
    );
    let bytes = Scrape::parse(&second.get("/metrics").raw);
    assert!(
        bytes.get("meca_image_bytes_reclaimed_total").unwrap_or(0.0) >= 8_000_000.0,
        "b's own layer is reclaimed"
    );
    let held = bytes.get("meca_image_bytes").unwrap_or(0.0);
    assert!(
        held > 15e6 && held <= 25e6,
        "a and c are held, within the budget: {held}"
    );
    // An image that even alone passes the budget is refused with a clear error, and
    // removes nothing.
    let huge = registry.reference("gc/lru-huge:v1");
    let _huge_tag = Tags(vec![huge.clone()]);
    build_with_random_layer(&huge, 30_000_000);
    push_and_forget(&huge);
    let reply = second.execute(&json!({"id": huge, "input": "gc"}));
    assert_failed(&reply);
    assert!(
        reply.msg().contains("no space left for image")
            && reply.msg().contains(&huge)
            && reply.msg().contains("max_bytes"),
        "{}",
        reply.msg()
    );
    assert!(
        image_present(&a) && image_present(&c),
        "nothing was removed for it"
    );
    run(&second, &c);
}

#[test]
fn images_in_use_prewarmed_the_owners_and_recent_ones_are_never_removed() {
    require_images();
    let suffix = std::process::id();
    let names = ["removable", "warm", "other-container", "prewarm", "owners"];
    let [removable, warm, other, prewarm, owners] = names.map(|n| format!("meca-gc-{n}:{suffix}"));
    let _tags = Tags(vec![
        removable.clone(),
        warm.clone(),
        other.clone(),
        prewarm.clone(),
        owners.clone(),
    ]);
    for image in [&removable, &warm, &other, &prewarm, &owners] {
        build_with_random_layer(image, 100_000);
    }
    let outsider = unique_name("gc-outsider");
    let state = tempfile::tempdir().unwrap();
    // A budget nothing fits: every image the executor may remove goes once it is 4 s old.
    let config = format!(
        "{}prewarm:\n  - image: {prewarm}\n    cpu: 0.25\n    mem: 32\n",
        gc_config(
            state.path(),
            "  high_percent: 0\n  max_bytes: 1000\n  min_age: 4s\n"
        )
        .replace("idle_timeout: 1s", "idle_timeout: 2s")
    );
    let ex = Executor::start("gc-never", &config);
    let remove_outsider = Cleanup(outsider.clone());
    run(&ex, &other);
    run(&ex, &removable);
    // `other` keeps a container of someone else's: Docker's count says it is used.
    docker(&["create", "--name", &outsider, &other, "/x"]);
    assert!(
        wait_until(Duration::from_secs(20), || ex.containers().len() == 1),
        "the idle task containers are reaped (the prewarmed one stays)"
    );
    assert!(
        image_present(&removable),
        "an image used within min_age stays"
    );
    run(&ex, &warm);
    // `warm` is used again and again: its container is never idle for long.
    let deadline = Instant::now() + Duration::from_secs(20);
    while image_present(&removable) && Instant::now() < deadline {
        run(&ex, &warm);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !image_present(&removable),
        "an image the executor ran and no longer uses is removed once min_age passed; log:\n{}",
        ex.log()
    );
    for kept in [&warm, &other, &prewarm, &owners] {
        assert!(image_present(kept), "{kept} stays");
    }
    let holders = docker(&[
        "images",
        "-q",
        "--filter",
        "reference=mecanywhere-executor-sandbox",
    ]);
    assert!(!holders.is_empty(), "the holder image stays");
    assert!(
        ex.log().contains("image_gc could not remove enough"),
        "it says the budget cannot be met"
    );
    drop(remove_outsider);
}

/// Removes a container by name on drop.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// A second dockerd whose data root is a tmpfs of a few MB: a disk that fills. It runs in
/// a network namespace of its own (a second daemon on the host's would take the host's
/// `docker0` bridge away), with no bridge, no iptables rules and a containerd of its own;
/// the executor reaches it through its socket, and it pulls from the test's registry served
/// again on its namespace's loopback (`nsenter --net`: only the network namespace, the
/// host's cgroup mounts stay in view). Stopped, its namespace deleted, its disk unmounted
/// and its directories removed on drop.
struct SmallDocker {
    dockerd: Child,
    registry: Option<common::registry::Served>,
    netns: String,
    dir: PathBuf,
    root: PathBuf,
}

impl SmallDocker {
    fn start(megabytes: u32) -> SmallDocker {
        let dir = tempfile::Builder::new()
            .prefix("meca-small-docker.")
            .tempdir()
            .unwrap()
            .keep();
        let netns = unique_name("meca-small-docker");
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap();
        assert!(
            made.success(),
            "ip netns add needs root (the test command runs as root)"
        );
        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let mut docker = SmallDocker {
            // Replaced below: a child that has exited, so `Drop` has one to reap.
            dockerd: Command::new("true").spawn().unwrap(),
            registry: None,
            netns,
            dir,
            root,
        };
        let up = Command::new("ip")
            .args(["-n", &docker.netns, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success());
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&docker.root)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root");
        docker.dockerd = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", docker.netns))
            .arg("dockerd")
            .arg("--data-root")
            .arg(&docker.root)
            .arg("--exec-root")
            .arg(docker.dir.join("exec"))
            .arg("--pidfile")
            .arg(docker.dir.join("dockerd.pid"))
            .arg("-H")
            .arg(docker.host())
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .args(["--containerd-namespace", "meca-small-docker"])
            .args([
                "--containerd-plugins-namespace",
                "meca-small-docker-plugins",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd runs");
        assert!(
            wait_until(Duration::from_secs(30), || docker
                .cli(&["info", "--format", "{{.DockerRootDir}}"])
                .is_some()),
            "the small dockerd answers; its log:\n{}",
            std::fs::read_to_string(docker.dir.join("dockerd.log")).unwrap_or_default()
        );
        docker
    }

    /// Serves `registry` on this daemon's loopback too.
    fn reach(&mut self, registry: &Registry) {
        self.registry = Some(registry.serve_in_netns(&self.netns));
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// `docker` against this daemon: stdout when it succeeds.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn has_image(&self, reference: &str) -> bool {
        self.cli(&["image", "inspect", reference]).is_some()
    }
}

impl Drop for SmallDocker {
    fn drop(&mut self) {
        if let Some(ids) = self.cli(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
        }
        drop(self.registry.take());
        let _ = Command::new("kill")
            .arg(self.dockerd.id().to_string())
            .status();
        if wait_for_exit(&mut self.dockerd, Duration::from_secs(20)).is_none() {
            let _ = self.dockerd.kill();
            let _ = self.dockerd.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = Command::new("umount").arg(&self.root).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn on_a_small_disk_images_go_past_high_percent_and_a_pull_that_cannot_fit_fails_clearly() {
    require_images();
    let registry = Registry::start();
    let mut small = SmallDocker::start(160);
    let images: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| registry.reference(&format!("gc/disk-{n}:v1")))
        .collect();
    let huge = registry.reference("gc/disk-huge:v1");
    let mut tags = images.clone();
    tags.push(huge.clone());
    let _tags = Tags(tags);
    for image in &images {
        build_with_random_layer(image, 25_000_000);
        push_and_forget(image);
    }
    build_with_random_layer(&huge, 200_000_000);
    push_and_forget(&huge);
    small.reach(&registry);

    let state = tempfile::tempdir().unwrap();
    // 160 MB: each image takes 25 MB and more, so the third passes 45%.
    let config = gc_config(
        state.path(),
        "  high_percent: 45\n  low_percent: 30\n  min_age: 0s\n",
    );
    let host = small.host();
    let ex = Executor::start_with_env("gc-disk", &config, &[("DOCKER_HOST", &host)]);
    let log = ex.log();
    assert!(
        log.contains("measured=Here"),
        "the executor sees the small disk itself: {log}"
    );
    for image in &images {
        run(&ex, image);
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(
        wait_until(Duration::from_secs(20), || !small.has_image(&images[0])),
        "past high_percent the least recently used image goes; log:\n{}",
        ex.log()
    );
    assert!(small.has_image(&images[2]), "the newest stays");
    let scrape = Scrape::parse(&ex.get("/metrics").raw);
    let percent = scrape.get("meca_image_disk_used_percent").unwrap();
    assert!(
        percent < 45.0,
        "the disk is back under high_percent: {percent}"
    );
    assert!(removed_total(&ex) >= 1.0);

    // 200 MB fit on no 160 MB disk: a clear error naming the disk, and nothing else breaks.
    let reply = ex.execute(&json!({"id": huge, "input": "gc"}));
    assert_failed(&reply);
    assert!(
        reply.msg().contains("no space left for image") && reply.msg().contains(&huge),
        "{}",
        reply.msg()
    );
    run(&ex, &images[2]);
    let answer = ex.execute(&json!({"id": images[1], "input": "still here"}));
    assert!(answer.success(), "{answer:?}\n{}", ex.log());
}
