//! Images for the pull and image-GC tests: a real registry (Debian's `docker-registry`)
//! served on 127.0.0.1 by the test, images of known sizes built from the echo task, and
//! local tags removed when the test ends. Nothing is ever pulled from a public registry.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{docker, ECHO};

/// A `docker-registry` on 127.0.0.1, stopped (and its storage removed) on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
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
            config,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// The same registry (its storage, its port) served again on the loopback of network
    /// namespace `netns` too (a name in /run/netns, or a path), for a daemon there; stopped
    /// when the answer is dropped.
    pub fn serve_in_netns(&self, netns: &str) -> Served {
        let netns = if netns.starts_with('/') {
            netns.to_string()
        } else {
            format!("/run/netns/{netns}")
        };
        let served = Served(
            Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["docker-registry", "serve"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("docker-registry runs in the namespace"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = format!("127.0.0.1:{}", self.port);
        loop {
            let probe = Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["python3", "-c"])
                .arg(format!(
                    "import socket; socket.create_connection(('127.0.0.1', {}), 1)",
                    self.port
                ))
                .stderr(Stdio::null())
                .status();
            if probe.is_ok_and(|status| status.success()) {
                return served;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on {listening} in {netns}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `repository:tag` on this registry.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("127.0.0.1:{}/{repository_and_tag}", self.port)
    }
}

/// A registry process serving elsewhere; stopped on drop.
pub struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes local image tags on drop.
pub struct Tags(pub Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", tag]).output();
        }
    }
}

pub fn image_present(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Builds `reference`: the echo image and a layer of `bytes` random bytes that no other
/// image has (so its size is known and its pull downloads exactly that layer).
pub fn build_with_random_layer(reference: &str, bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut blob = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut blob)
        .unwrap();
    std::fs::write(dir.path().join("blob"), blob).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {ECHO}\nCOPY blob /blob\n"),
    )
    .unwrap();
    docker(&["build", "-q", "-t", reference, dir.path().to_str().unwrap()]);
}

/// Pushes `reference` to its registry and removes it locally: the next use pulls it.
pub fn push_and_forget(reference: &str) {
    docker(&["push", reference]);
    docker(&["rmi", reference]);
    assert!(
        !image_present(reference),
        "the tag {reference} is gone locally"
    );
}
