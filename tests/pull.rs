//! Pulling: an image absent locally is pulled from a registry before it runs. The registry is
//! a real one (Debian's `docker-registry`) served on loopback by this test; nothing is ever
//! pulled from a public registry.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A `docker-registry` on 127.0.0.1, stopped (and its storage removed) on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (Debian package docker-registry; scripts/test.sh installs it)");
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes local image tags on drop.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", tag]).output();
        }
    }
}

fn image_present(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn an_absent_image_is_pulled_then_run() {
    require_images();
    let registry = Registry::start();
    let reference = format!("127.0.0.1:{}/meca/echo-pull:v1", registry.port);
    let _tags = Tags(vec![reference.clone()]);
    docker(&["tag", ECHO, &reference]);
    docker(&["push", &reference]);
    docker(&["rmi", &reference]);
    assert!(!image_present(&reference), "the tag is gone locally");

    let ex = Executor::start("pull", "");
    let reply = ex.execute(&json!({"id": reference, "input": "pulled"}));
    assert!(reply.success(), "{reply:?}\n{}", ex.log());
    assert_eq!(reply.msg(), "pulled");
    assert!(image_present(&reference), "the executor pulled the image");
    assert!(ex.log().contains("pulling image"), "the pull is logged");

    // A repository that the registry does not have: a clear error naming it, nothing left.
    let missing = format!("127.0.0.1:{}/meca/not-there:v1", registry.port);
    let reply = ex.execute(&json!({"id": missing, "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains(&missing), "{}", reply.msg());
    assert_eq!(ex.containers().len(), 1, "only the pulled task's container");
}
