//! The 3-node Docker Swarm of `scripts/test-swarm.sh` as the swarm tests see it: its
//! directory (`MECA_TEST_SWARM`; node N's daemon at `nodeN/docker.sock` there, the same path
//! on the nodes), its name (`MECA_TEST_SWARM_NAME`; node N is container `<name>-nodeN` of
//! this host's dockerd), and what an executor left on it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::LABEL;

/// The test swarm.
pub struct Swarm {
    pub dir: PathBuf,
    pub name: String,
}

impl Swarm {
    /// The swarm `scripts/test-swarm.sh` brought up, or a panic saying how to get one.
    pub fn from_env() -> Swarm {
        let how = "the swarm tests run in scripts/test-swarm.sh (part of scripts/test.sh), \
                   which brings up a 3-node swarm and sets MECA_TEST_SWARM and MECA_TEST_SWARM_NAME";
        Swarm {
            dir: std::env::var_os("MECA_TEST_SWARM")
                .map(PathBuf::from)
                .expect(how),
            name: std::env::var("MECA_TEST_SWARM_NAME").expect(how),
        }
    }

    /// `DOCKER_HOST` of node `n` (1: the manager).
    pub fn host(&self, n: u32) -> String {
        format!("unix://{}/node{n}/docker.sock", self.dir.display())
    }

    /// `docker` against node `n`: its trimmed stdout, or its stderr.
    pub fn try_docker(&self, n: u32, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .args(["-H", &self.host(n)])
            .args(args)
            .output()
            .expect("docker CLI runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `docker` against node `n`, panicking on failure.
    pub fn docker(&self, n: u32, args: &[&str]) -> String {
        self.try_docker(n, args)
            .unwrap_or_else(|e| panic!("docker -H node{n} {args:?}: {e}"))
    }

    /// The lines `docker` against node `n` printed.
    pub fn lines(&self, n: u32, args: &[&str]) -> Vec<String> {
        self.try_docker(n, args)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The services of executor `name`.
    pub fn services_of(&self, name: &str) -> Vec<String> {
        let filter = format!("label={LABEL}={name}");
        self.lines(1, &["service", "ls", "-q", "--filter", &filter])
    }

    /// The hostname of the node each running task of executor `name` is on.
    pub fn task_nodes(&self, name: &str) -> Vec<String> {
        self.services_of(name)
            .iter()
            .flat_map(|s| {
                self.lines(
                    1,
                    &[
                        "service",
                        "ps",
                        "--filter",
                        "desired-state=running",
                        "--format",
                        "{{.Node}}",
                        s,
                    ],
                )
            })
            .collect()
    }

    /// What executor `name` left anywhere on the swarm: services, containers on each node,
    /// networks (each as `what id`).
    pub fn left_by(&self, name: &str) -> Vec<String> {
        let filter = format!("label={LABEL}={name}");
        let mut left: Vec<String> = self
            .services_of(name)
            .into_iter()
            .map(|s| format!("service {s}"))
            .collect();
        for n in 1..=3 {
            for c in self.lines(n, &["ps", "-aq", "--filter", &filter]) {
                left.push(format!("container {c} on node{n}"));
            }
        }
        for net in self.lines(1, &["network", "ls", "-q", "--filter", &filter]) {
            left.push(format!("network {net}"));
        }
        left
    }

    /// Waits until executor `name` left nothing (tasks' containers leave their nodes a
    /// moment after their service), or returns what is left after `limit`.
    pub fn settled_left_by(&self, name: &str, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let left = self.left_by(name);
            if left.is_empty() || started.elapsed() > limit {
                return left;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Removes what executor `name` left on the swarm.
    pub fn remove_left_by(&self, name: &str) {
        let filter = format!("label={LABEL}={name}");
        for s in self.services_of(name) {
            let _ = self.try_docker(1, &["service", "rm", &s]);
        }
        for c in self.lines(1, &["ps", "-aq", "--filter", &filter]) {
            let _ = self.try_docker(1, &["rm", "-f", &c]);
        }
        for _ in 0..40 {
            let networks = self.lines(1, &["network", "ls", "-q", "--filter", &filter]);
            if networks.is_empty() {
                break;
            }
            for net in networks {
                let _ = self.try_docker(1, &["network", "rm", &net]);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The node container of node `n` on this host.
    pub fn node_container(&self, n: u32) -> String {
        format!("{}-node{n}", self.name)
    }

    /// Node `n`'s address on the swarm's own network.
    pub fn node_ip(&self, n: u32) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.name
        );
        super::docker(&["inspect", "-f", &format, &self.node_container(n)])
    }

    /// Node `n`'s machine is lost as a powered-off one is: first its network goes (nothing
    /// it had open is closed: packets to it vanish), then the machine (its container: its
    /// dockerd and every task on it die).
    pub fn stop_node(&self, n: u32) {
        super::docker(&["network", "disconnect", &self.name, &self.node_container(n)]);
        super::docker(&["kill", &self.node_container(n)]);
    }

    /// Starts node `n` again after [`stop_node`](Self::stop_node) (its state was on a
    /// tmpfs: a fresh daemon), joins it to the swarm as a new worker, removes its old entry
    /// and loads `images` into it.
    pub fn restore_node(&self, n: u32, images: &[&str]) {
        let old: Vec<String> = self
            .lines(1, &["node", "ls", "--format", "{{.ID}} {{.Hostname}}"])
            .into_iter()
            .filter(|l| l.ends_with(&format!(" node{n}")))
            .filter_map(|l| l.split(' ').next().map(String::from))
            .collect();
        super::docker(&["network", "connect", &self.name, &self.node_container(n)]);
        super::docker(&["start", &self.node_container(n)]);
        let started = Instant::now();
        while self.try_docker(n, &["info"]).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "node{n} did not come back"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let token = self.docker(1, &["swarm", "join-token", "-q", "worker"]);
        let manager = format!("{}:2377", self.node_ip(1));
        let addr = self.node_ip(n);
        self.docker(
            n,
            &[
                "swarm",
                "join",
                "--advertise-addr",
                &addr,
                "--token",
                &token,
                &manager,
            ],
        );
        for id in old {
            let _ = self.try_docker(1, &["node", "rm", "--force", &id]);
        }
        let mut save = Command::new("docker")
            .arg("save")
            .args(images)
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save runs");
        let loaded = Command::new("docker")
            .args(["-H", &self.host(n), "load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .expect("docker load runs");
        assert!(save.wait().unwrap().success());
        assert!(loaded.status.success(), "{loaded:?}");
    }

    /// The path of node `n`'s network namespace (to serve something on its loopback).
    pub fn node_netns(&self, n: u32) -> String {
        let pid = super::docker(&["inspect", "-f", "{{.State.Pid}}", &self.node_container(n)]);
        format!("/proc/{pid}/ns/net")
    }
}

/// Removes what an executor left on the swarm when dropped (declare it before the
/// executor, so it goes after it, also when a test panics).
pub struct LeftRemoved<'a> {
    pub swarm: &'a Swarm,
    pub name: String,
}

impl Drop for LeftRemoved<'_> {
    fn drop(&mut self) {
        self.swarm.remove_left_by(&self.name);
    }
}
