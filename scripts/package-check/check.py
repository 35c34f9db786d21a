"""Runs inside a clean Debian root where the package was just installed: starts the
installed binary with the installed config, runs a task through it, drives it with the
installed `ctl`, and stops it. Exits non-zero (printing the executor's log) on any failure."""
import json
import subprocess
import sys
import time
import urllib.request

URL = "http://127.0.0.1:2591"
log = open("/tmp/executor.log", "wb")
executor = subprocess.Popen(
    ["/usr/bin/mecanywhere-executor", "--config", "/etc/mecanywhere/executor.yaml"],
    stdout=log,
    stderr=log,
)


def fail(why):
    print(f"package check failed: {why}", file=sys.stderr)
    executor.kill()
    print(open("/tmp/executor.log").read(), file=sys.stderr)
    sys.exit(1)


deadline = time.time() + 30
while True:
    try:
        with urllib.request.urlopen(URL + "/health", timeout=2) as answer:
            if json.load(answer) == {"status": "ok"}:
                break
    except OSError:
        pass
    if executor.poll() is not None or time.time() > deadline:
        fail("the installed executor did not answer /health")
    time.sleep(0.2)

request = urllib.request.Request(
    URL,
    data=json.dumps({"id": "meca-echo:latest", "input": "from the package"}).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(request, timeout=60) as answer:
    body = json.load(answer)
if body != {"success": True, "msg": "from the package"}:
    fail(f"the echo task answered {body}")

# The installed ctl finds the executor through the installed config.
stats = subprocess.run(["mecanywhere-executor", "ctl", "--json", "stats"], capture_output=True, cwd="/")
if stats.returncode != 0 or "task_cpu" not in json.loads(stats.stdout):
    fail(f"ctl stats: {stats.returncode} {stats.stdout!r} {stats.stderr!r}")
stop = subprocess.run(["mecanywhere-executor", "ctl", "stop"], capture_output=True, cwd="/")
if stop.returncode != 0:
    fail(f"ctl stop: {stop.returncode} {stop.stderr!r}")
try:
    code = executor.wait(timeout=60)
except subprocess.TimeoutExpired:
    fail("the executor did not exit after stop")
if code != 0:
    fail(f"the executor exited with {code}")
print("package check: installed binary and config served a task, ctl stats and stop worked")
