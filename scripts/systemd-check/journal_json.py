"""Reads `journalctl -o json` entries on stdin and checks that every line the executor
process PID (argv[1]) wrote to its stdout and stderr (journald's stream transport) is one
JSON object, and that one of them says "listening".
Prints the number of lines checked; exits non-zero naming the first line that is not JSON."""
import json
import sys

pid = sys.argv[1]
lines = []
for raw in sys.stdin:
    raw = raw.strip()
    if not raw:
        continue
    entry = json.loads(raw)
    if entry.get("_PID") != pid or entry.get("_TRANSPORT") != "stdout":
        # systemd's own lines about the unit ("Started ...", and on a cgroup v1 host
        # "Failed to attach <pid> to compat systemd cgroup", logged for the forked process).
        continue
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # journalctl's form of a message with control characters
        message = bytes(message).decode("utf-8", "replace")
    lines.append(message or "")

if not lines:
    sys.exit(f"no journal lines from the executor (pid {pid})")
for line in lines:
    try:
        value = json.loads(line)
    except ValueError:
        sys.exit(f"a journal line of the executor is not JSON: {line!r}")
    if not isinstance(value, dict):
        sys.exit(f"a journal line of the executor is not a JSON object: {line!r}")
if not any("listening" in json.dumps(json.loads(line)) for line in lines):
    sys.exit('no JSON journal line of the executor says "listening"')
print(len(lines))
