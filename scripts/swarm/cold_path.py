"""Times the cold path on a Swarm: from the API call that creates a replicated service of
one task (limits = reservations, on an attachable overlay) to the task's first answer at
its task IP, against `docker run` of the same image on the manager, joined to the same
overlay, to its first answer; then BURST services at once (spread over the nodes) against
BURST `docker run`s at once on the manager. Runs in a container on the manager, attached to
the overlay, with the manager's Docker socket; every call goes through the docker CLI (tens
of ms each, on both sides). Prints one JSON object: the times in ms.

Usage (scripts/swarm/cold-path.sh runs it): python3 cold_path.py RUNS NETWORK IMAGE"""
import json
import subprocess
import sys
import time
import urllib.request

import threading

RUNS, NETWORK, IMAGE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
BURST = 8
LIMIT = 60.0  # seconds for one start to answer


def docker(*args):
    return subprocess.run(("docker",) + args, check=True, capture_output=True, text=True).stdout.strip()


def answers(ip):
    request = urllib.request.Request(f"http://{ip}:8080/", data=b'{"name":"swarm"}', method="POST")
    try:
        with urllib.request.urlopen(request, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def until(what, value):
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        got = value()
        if got:
            return got
        time.sleep(0.002)
    raise SystemExit(f"{what} within {LIMIT} s")


def task_ip(service):
    tasks = docker("service", "ps", "-q", "--no-trunc", service).split()
    for task in tasks:
        info = json.loads(docker("inspect", task))[0]
        for attachment in info.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == NETWORK and attachment.get("Addresses"):
                return attachment["Addresses"][0].split("/")[0], info.get("NodeID", "")
    return None


def service_start(i):
    name = f"meca-cold-{i}"
    started = time.monotonic()
    docker("service", "create", "-d", "--name", name, "--network", NETWORK, "--no-resolve-image",
           "--limit-cpu", "0.1", "--reserve-cpu", "0.1", "--limit-memory", "64M",
           "--reserve-memory", "64M", "--restart-condition", "none", IMAGE)
    ip, node = until(f"no task IP of {name}", lambda: task_ip(name))
    until(f"{name} at {ip} did not answer", lambda: answers(ip))
    took = (time.monotonic() - started) * 1000
    docker("service", "rm", name)
    return took, node


def run_start(i):
    name = f"meca-cold-run-{i}"
    started = time.monotonic()
    docker("run", "-d", "--name", name, "--network", NETWORK, "--cpus", "0.1", "--memory", "64m", IMAGE)
    ip = docker("inspect", "-f", "{{(index .NetworkSettings.Networks \"" + NETWORK + "\").IPAddress}}", name)
    until(f"{name} at {ip} did not answer", lambda: answers(ip))
    took = (time.monotonic() - started) * 1000
    docker("rm", "-f", name)
    return took


def at_once(start):
    """`start(i)` for BURST keys at once; the wall time until the last answered, in ms."""
    results = [None] * BURST
    started = time.monotonic()

    def one(i):
        results[i] = start(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if None in results:
        raise SystemExit("a start of the burst failed")
    return round((time.monotonic() - started) * 1000, 1), results


services, runs, nodes = [], [], []
for i in range(RUNS):
    took, node = service_start(i)
    services.append(round(took, 1))
    nodes.append(node)
    runs.append(round(run_start(i), 1))
    time.sleep(0.5)
burst_services, placed = at_once(lambda i: service_start(100 + i))
time.sleep(0.5)
burst_runs, _ = at_once(lambda i: run_start(100 + i))
print(json.dumps({"service_create_to_answer_ms": services, "docker_run_to_answer_ms": runs,
                  "nodes_used": len(set(nodes) - {""}),
                  "burst": BURST, "burst_services_wall_ms": burst_services,
                  "burst_nodes_used": len({node for _, node in placed} - {""}),
                  "burst_docker_run_wall_ms": burst_runs}))
