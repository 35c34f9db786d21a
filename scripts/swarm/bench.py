"""The swarm engine's bench rows (BENCHMARKS.md, rows S1-S3), on the swarm of
scripts/swarm/bench.sh: the executor (release build, engine: swarm) on this host with the
manager's socket as DOCKER_HOST, called over loopback.

S1  warm path: a warm key called through the executor against the same task called
    directly through the same sandbox relay (the Unix socket the executor uses, forwarding
    to the task's address on its overlay): the executor's own cost on a warm call.
S2  cold start of a new key (a sandbox from the pool, a service created, placed, started,
    ready) against the node's own `docker run` of the same image to its ready line.
S3  8 new keys at once, spread over the 3 nodes by Swarm, against the same 8 on one node
    (swarm.constraints: node.hostname==node2); both from a full sandbox pool.

Prints a table and one JSON object. Usage: python3 bench.py SWARM_DIR EXECUTOR RUNS"""
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SWARM_DIR, EXECUTOR, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3])
MANAGER = f"unix://{SWARM_DIR}/node1/docker.sock"
WARM_CALLS = 1000
BURST = 8
INPUT = b'{"name": "sbip"}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Executor:
    """The executor binary on the swarm, with `extra` config; stopped by `stop`."""

    def __init__(self, name, extra):
        self.dir = tempfile.mkdtemp(prefix="meca-swarm-bench-")
        sockets = os.path.join(SWARM_DIR, "bench-sockets")
        os.makedirs(sockets, exist_ok=True)
        self.port = free_port()
        config = os.path.join(self.dir, "config.yaml")
        with open(config, "w") as f:
            f.write(f"engine: swarm\nname: {name}\nsocket_dir: {sockets}\ncpu: 6\nmem: 8192\n"
                    f"sandbox_pool: 8\nidle_timeout: 30m\n{extra}")
        self.log_path = os.path.join(self.dir, "executor.log")
        env = dict(os.environ, DOCKER_HOST=MANAGER, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
        self.proc = subprocess.Popen(
            [EXECUTOR, "--config", config, "--listen", f"127.0.0.1:{self.port}"],
            stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the executor did not start: " + open(self.log_path).read()[-2000:])
            time.sleep(0.1)
        # The sandbox pool filled (holders start one after another).
        deadline = time.monotonic() + 120
        while self.stats().get("free_sandboxes", 0) < 8 and time.monotonic() < deadline:
            time.sleep(0.5)

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def get(self, path):
        c = self.conn()
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()

    def stats(self):
        return json.loads(self.get("/stats")[1])

    def run(self, mem, conn=None):
        body = json.dumps({"id": "meca-echo:latest", "resource": {"cpu": 0.25, "mem": mem},
                           "input": INPUT.decode()})
        c = conn or self.conn()
        c.request("POST", "/", body, {"Content-Type": "application/json"})
        answer = json.loads(c.getresponse().read())
        if not answer.get("success"):
            raise SystemExit(f"request failed: {answer}")
        return answer

    def ready_addr(self, mem):
        """The relay socket and task address the executor logged for key `mem`."""
        for line in open(self.log_path):
            if "task container ready" in line and f"mem={mem}MB" in line:
                m = re.search(r"addr=unix:(\S+) to (\S+):(\d+)", line)
                if m:
                    return m.group(1), m.group(2), int(m.group(3))
        raise SystemExit(f"no ready line for mem={mem}")

    def stop(self):
        try:
            c = self.conn()
            c.request("POST", "/stop")
            c.getresponse().read()
        except OSError:
            pass
        self.proc.wait(timeout=120)
        # Its config and log go (a failed run exits before, and keeps them to read).
        shutil.rmtree(self.dir, ignore_errors=True)


def relay_conn(socket_path, ip, port):
    """An HTTP connection to the task through its sandbox's relay, as the executor makes one."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(socket_path)
    s.sendall(socket.inet_aton(ip) + port.to_bytes(2, "big"))
    if s.recv(1) != b"+":
        raise SystemExit("the relay did not greet")
    c = http.client.HTTPConnection("task")
    c.sock = s
    return c


def percentiles(samples):
    samples = sorted(samples)
    return {"p50": samples[len(samples) // 2], "p99": samples[int(len(samples) * 0.99) - 1]}


def warm_row(ex):
    ex.run(64)
    relay, ip, port = ex.ready_addr(64)
    through, direct = [], []
    exec_conn = ex.conn()
    task = relay_conn(relay, ip, port)
    # The same work on the client's side for both: a body built once, the answer read whole
    # and checked by its first bytes, not parsed.
    body = json.dumps({"id": "meca-echo:latest", "resource": {"cpu": 0.25, "mem": 64},
                       "input": INPUT.decode()}).encode()
    headers = {"Content-Type": "application/json"}

    def through_executor():
        exec_conn.request("POST", "/", body, headers)
        answer = exec_conn.getresponse().read()
        if not answer.startswith(b'{"success":true'):
            raise SystemExit(f"request failed: {answer[:200]}")

    for _ in range(100):  # warm-up
        through_executor()
        task.request("POST", "/", INPUT)
        task.getresponse().read()
    for _ in range(WARM_CALLS):
        t = time.perf_counter()
        through_executor()
        through.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        task.request("POST", "/", INPUT)
        task.getresponse().read()
        direct.append((time.perf_counter() - t) * 1e6)
    return {"executor_us": percentiles(through), "direct_us": percentiles(direct)}


def node_docker(n, *args):
    return subprocess.run(("docker", "-H", f"unix://{SWARM_DIR}/node{n}/docker.sock") + args,
                          check=True, capture_output=True, text=True).stdout.strip()


def docker_run_to_ready(n):
    """`docker run` of the echo image on node n to its ready line (ms)."""
    t = time.perf_counter()
    cid = node_docker(n, "run", "-d", "--network", "none", "--cpus", "0.25", "--memory", "64m",
                      "meca-echo:latest")
    logs = subprocess.Popen(("docker", "-H", f"unix://{SWARM_DIR}/node{n}/docker.sock", "logs",
                             "-f", cid), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in logs.stdout:
        if b"meca-init-done" in line:
            break
    took = (time.perf_counter() - t) * 1e3
    logs.kill()
    node_docker(n, "rm", "-f", cid)
    return took


def cold_row(ex, mems):
    executor, baseline = [], []
    for i, mem in enumerate(mems):
        t = time.perf_counter()
        ex.run(mem)
        executor.append((time.perf_counter() - t) * 1e3)
        baseline.append(docker_run_to_ready(2 + i % 2))
    return {"executor_ms": statistics.median(executor), "docker_run_ms": statistics.median(baseline),
            "executor_all_ms": executor, "docker_run_all_ms": baseline}


def burst(ex, mems):
    # Both sides from a full sandbox pool (the cold row took sandboxes from it).
    deadline = time.monotonic() + 120
    while ex.stats().get("free_sandboxes", 0) < len(mems) and time.monotonic() < deadline:
        time.sleep(0.5)
    t = time.perf_counter()
    threads = [threading.Thread(target=ex.run, args=(m,)) for m in mems]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return (time.perf_counter() - t) * 1e3


def nodes_of(name):
    services = node_docker(1, "service", "ls", "-q", "--filter",
                           f"label=org.mecanywhere.executor={name}").split()
    return sorted({node_docker(1, "service", "ps", "--format", "{{.Node}}", s) for s in services})


def main():
    results = {"runs": []}
    for run in range(RUNS):
        spread = Executor(f"bench-spread-{run}", "")
        row = {"warm": warm_row(spread)}
        row["cold"] = cold_row(spread, [200 + i for i in range(11)])
        row["burst_spread_ms"] = burst(spread, [300 + i for i in range(BURST)])
        row["burst_spread_nodes"] = nodes_of(f"bench-spread-{run}")
        spread.stop()
        one = Executor(f"bench-one-{run}", "swarm:\n  constraints: [\"node.hostname==node2\"]\n")
        row["burst_one_node_ms"] = burst(one, [300 + i for i in range(BURST)])
        row["burst_one_node_nodes"] = nodes_of(f"bench-one-{run}")
        one.stop()
        results["runs"].append(row)
        w, c = row["warm"], row["cold"]
        print(f"run {run + 1}: S1 warm p50 {w['executor_us']['p50']:.0f} us through the executor, "
              f"{w['direct_us']['p50']:.0f} us direct (p99 {w['executor_us']['p99']:.0f} / "
              f"{w['direct_us']['p99']:.0f}); S2 cold median {c['executor_ms']:.0f} ms vs docker run "
              f"{c['docker_run_ms']:.0f} ms; S3 8 keys {row['burst_spread_ms']:.0f} ms over "
              f"{row['burst_spread_nodes']} vs {row['burst_one_node_ms']:.0f} ms on "
              f"{row['burst_one_node_nodes']}", flush=True)
    print(json.dumps(results))


main()
