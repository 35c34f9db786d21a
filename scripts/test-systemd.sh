#!/usr/bin/env bash
# Runs the Debian package's systemd unit under a real systemd: boots systemd as PID 1 in a
# Debian container (image meca-debian-systemd:<suite>: the debootstrap root of
# scripts/build-python-task-images.sh plus systemd, scripts/systemd-check/Dockerfile; built
# once, then reused), installs the package of scripts/build-deb.sh there and checks that
#   1. `systemctl start` brings the executor up after docker.service (which it requires),
#      with image_gc's record in its StateDirectory,
#   2. it serves the echo task (meca-echo:latest, scripts/build-task-images.sh),
#   3. `systemctl stop` leaves none of its containers,
#   4. after a SIGKILL systemd restarts it, and the new instance removes what the killed one
#      left,
#   5. its logs reach the journal, as JSON objects with `log_format: json`,
#   6. `systemctl reload` (SIGHUP) applies a changed budget without a restart.
#
# The executor in the container runs tasks on this machine's dockerd through its socket
# (bind-mounted at /run/docker.sock, group `docker` with the socket's gid); docker.service
# there is a stand-in that only checks the socket (scripts/systemd-check/docker.service).
# Its sandbox socket directory /run/mecanywhere-executor is a volume of the container, which
# the holders it starts mount. The executor gets a name of its own, so it only ever removes
# its own containers; everything it started and the container are removed at the end, also
# on failure. Needs dockerd, root, and a dockerd that lets a container run systemd: the
# container gets all capabilities but CAP_SYS_RESOURCE (which some dockerds cannot grant,
# so no --privileged), its own cgroup namespace (systemd mounts its own cgroup2), no
# seccomp or AppArmor profile, tmpfs at /run and /run/lock, and no network but loopback.
#
# Usage: scripts/test-systemd.sh   (from any directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"

UNIT=mecanywhere-executor
URL=http://127.0.0.1:2591
CONFIG=/etc/mecanywhere/executor.yaml
EXECUTOR_NAME="meca-systemd-$$-$RANDOM"
CONTAINER="meca-systemd-check-$$"
LABEL="org.mecanywhere.executor=$EXECUTOR_NAME"
INSTANCE_LABEL=org.mecanywhere.executor.instance
SUITE="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")"
SUITE="${SUITE:-bookworm}"
BASE="meca-debian-python:$SUITE"
IMAGE="meca-debian-systemd:$SUITE"
WORK=""
VOLUME=""
JOURNAL_SHOWN=0

in_c() { docker exec "$CONTAINER" "$@"; }

# The unit's journal (and docker.service's), once: on a failure, before the container goes.
show_journal() {
    [ "$JOURNAL_SHOWN" = 0 ] || return 0
    JOURNAL_SHOWN=1
    docker container inspect "$CONTAINER" >/dev/null 2>&1 || return 0
    echo "--- journal of $UNIT and docker.service ---" >&2
    timeout 20 docker exec "$CONTAINER" journalctl --no-pager -u "$UNIT" -u docker.service -n 300 >&2 || true
    echo "--- systemctl status $UNIT ---" >&2
    timeout 20 docker exec "$CONTAINER" systemctl --no-pager status "$UNIT" >&2 || true
    echo "---" >&2
}

fail() {
    echo "systemd check failed: $*" >&2
    show_journal
    exit 1
}

labelled() { docker ps -aq --filter "label=$LABEL"; }

cleanup() {
    local rc=$?
    trap - EXIT
    [ "$rc" = 0 ] || show_journal
    docker rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
    # What a failed run's executor left (its name is this run's own).
    labelled 2>/dev/null | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    # The sandbox volume, once the holders that mounted it are gone.
    [ -z "$VOLUME" ] || docker volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    [ -z "$WORK" ] || rm -rf "$WORK"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.25 s until it succeeds.
wait_for() {
    local seconds="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited ${seconds}s)"
        sleep 0.25
    done
}

healthy() { [ "$(in_c curl -fsS --max-time 2 "$URL/health" | tr -d ' \n')" = '{"status":"ok"}' ]; }
prop() { in_c systemctl show -P "$2" "$1"; }
main_pid() { prop "$UNIT" MainPID; }

# write_config [KEY: VALUE LINES...]: the executor's config, as an operator would edit it.
BUDGET_CPU=1
BUDGET_MEM=1024
write_config() {
    {
        echo "# written by scripts/test-systemd.sh"
        echo "listen: 127.0.0.1:2591"
        echo "name: $EXECUTOR_NAME"
        echo "cpu: $BUDGET_CPU"
        echo "mem: $BUDGET_MEM"
        echo "timeout: 1"
        # Few containers on the shared dockerd: two sandboxes ahead, no spares.
        echo "sandbox_pool: 2"
        echo "spare_containers: 0"
        local line
        for line in "$@"; do echo "$line"; done
    } | docker exec -i "$CONTAINER" sh -c "cat >$CONFIG"
}

py() { docker exec "$CONTAINER" python3 -c "$@"; }

# echo_ok ANSWER INPUT: whether ANSWER is the echo task's success answer for INPUT.
echo_ok() {
    py 'import json, sys; sys.exit(json.loads(sys.argv[1]) != {"success": True, "msg": sys.argv[2]})' "$1" "$2" 2>/dev/null
}

# run_echo INPUT: runs the echo task through the executor; fails unless it echoes INPUT.
run_echo() {
    local input="$1" body answer
    body="$(py 'import json, sys; print(json.dumps({"id": "meca-echo:latest", "input": sys.argv[1]}))' "$input")"
    answer="$(in_c curl -sS --max-time 120 -X POST "$URL" -H 'Content-Type: application/json' -d "$body")" ||
        fail "the echo task request failed"
    echo_ok "$answer" "$input" || fail "the echo task answered $answer"
}

instances() {
    docker ps -a --filter "label=$LABEL" --format "{{.Label \"$INSTANCE_LABEL\"}}" | sort -u | sed '/^$/d'
}

ensure_docker

# Images: the echo task, the Debian root, and that root with systemd.
docker image inspect meca-echo:latest >/dev/null 2>&1 || scripts/build-task-images.sh >/dev/null
docker image inspect "$BASE" >/dev/null 2>&1 || scripts/build-python-task-images.sh >/dev/null
# Rebuilt when its Dockerfile or its base changed.
STAMP="$( (cat scripts/systemd-check/Dockerfile; docker image inspect -f '{{.Id}}' "$BASE") | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "org.mecanywhere.systemd-check"}}' "$IMAGE" 2>/dev/null)" != "$STAMP" ]; then
    echo "building $IMAGE ..." >&2
    log="$(mktemp "${TMPDIR:-/tmp}/meca-build.XXXXXX")"
    # The host's network: apt reaches the mirror without Docker's default bridge.
    if ! docker build -q --network host -t "$IMAGE" --label org.mecanywhere.test-image=1 \
        --label "org.mecanywhere.systemd-check=$STAMP" --build-arg "BASE=$BASE" \
        scripts/systemd-check >"$log" 2>&1; then
        echo "docker build of $IMAGE failed:" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
fi

DEB="$(scripts/build-deb.sh)"
echo "built $DEB" >&2
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meca-systemd.XXXXXX")"
cp "$DEB" "$WORK/package.deb"
cp scripts/systemd-check/docker.service scripts/systemd-check/journal_json.py "$WORK/"
chmod -R a+rX "$WORK"

# Boot systemd.
SOCKET_GID="$(stat -c %g /var/run/docker.sock)"
# No network but loopback: the executor reaches dockerd through the socket, serves on its own
# 127.0.0.1, and reaches its (isolated) tasks through the sandbox sockets.
docker run -d --name "$CONTAINER" --label org.mecanywhere.test-image=1 --network none \
    --cgroupns=private --cap-add ALL --cap-drop SYS_RESOURCE \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --tmpfs /run --tmpfs /run/lock --stop-signal SIGRTMIN+3 \
    -v /var/run/docker.sock:/run/docker.sock -v /run/mecanywhere-executor \
    -v "$WORK:/pkg:ro" "$IMAGE" >/dev/null
VOLUME="$(docker container inspect -f \
    '{{range .Mounts}}{{if eq .Destination "/run/mecanywhere-executor"}}{{.Name}}{{end}}{{end}}' "$CONTAINER")"
# Until systemd has finished booting (its bus may not answer in the first moments).
deadline=$((SECONDS + 60))
while :; do
    state="$(timeout 30 docker exec "$CONTAINER" systemctl is-system-running --wait 2>/dev/null || true)"
    case "$state" in running | degraded) break ;; esac
    { [ "$SECONDS" -lt "$deadline" ] && [ "$(docker container inspect -f '{{.State.Running}}' "$CONTAINER")" = true ]; } || break
    sleep 0.25
done
case "$state" in
    running) ;;
    degraded) echo "systemd booted degraded; failed units: $(in_c systemctl --failed --no-legend --plain | awk '{print $1}' | xargs)" >&2 ;;
    *) docker logs "$CONTAINER" 2>&1 | tail -n 30 >&2; fail "systemd did not boot in the container (state: ${state:-none})" ;;
esac

# The docker group (the unit's SupplementaryGroups) with the socket's gid, the stand-in
# docker.service, then the package.
in_c groupadd -o -g "$SOCKET_GID" docker
in_c cp /pkg/docker.service /etc/systemd/system/docker.service
in_c systemctl daemon-reload
in_c dpkg -i /pkg/package.deb >/dev/null || fail "dpkg -i of the package failed"
write_config
echo "systemd booted, package installed (executor name $EXECUTOR_NAME)"

# 1. Start: docker.service first (pulled in by Requires=), then the executor.
[ "$(prop docker.service ActiveState)" = inactive ] || fail "docker.service was active before the executor started"
timeout 60 docker exec "$CONTAINER" systemctl start "$UNIT" || fail "systemctl start $UNIT failed"
wait_for 30 "the executor did not answer /health after systemctl start" healthy
[ "$(prop "$UNIT" ActiveState)" = active ] || fail "$UNIT is $(prop "$UNIT" ActiveState) while /health answers"
[ "$(prop docker.service ActiveState)" = active ] || fail "docker.service is $(prop docker.service ActiveState), not active"
docker_up="$(prop docker.service ActiveEnterTimestampMonotonic)"
exec_start="$(prop "$UNIT" ExecMainStartTimestampMonotonic)"
{ [ "$docker_up" -gt 0 ] && [ "$exec_start" -ge "$docker_up" ]; } ||
    fail "the executor started (at ${exec_start}us) before docker.service was up (at ${docker_up}us)"
# image_gc (on, as installed) keeps its record in the unit's StateDirectory.
wait_for 10 "no image_gc record in /var/lib/mecanywhere-executor (StateDirectory)" \
    docker exec "$CONTAINER" test -s /var/lib/mecanywhere-executor/images.json
echo "check 1 passed: systemctl start: active, /health ok, started $(((exec_start - docker_up) / 1000)) ms after docker.service was up, image_gc record in its StateDirectory"

# 2. The seed's request, as its README writes it.
answer="$(in_c curl -s --max-time 120 -X POST "$URL" -H 'Content-Type: application/json' \
    -d '{"id": "meca-echo:latest", "input": "{\"name\": \"meca\"}"}')" || fail "the echo task request failed"
echo_ok "$answer" '{"name": "meca"}' || fail "the echo task answered: $answer"
echo "check 2 passed: the echo task answered {\"success\":true,\"msg\":\"{\\\"name\\\": \\\"meca\\\"}\"}"

# 3. Stop removes every container of this executor.
[ -n "$(labelled)" ] || fail "no container of the executor found on the host's dockerd while it runs"
timeout 90 docker exec "$CONTAINER" systemctl stop "$UNIT" || fail "systemctl stop $UNIT failed"
[ "$(prop "$UNIT" ActiveState)" = inactive ] || fail "$UNIT is $(prop "$UNIT" ActiveState) after stop"
[ "$(prop "$UNIT" Result)" = success ] || fail "$UNIT stopped with result $(prop "$UNIT" Result)"
left="$(labelled)"
[ -z "$left" ] || fail "containers left after systemctl stop: $(docker ps -a --filter "label=$LABEL" --format '{{.Names}} ({{.Status}})' | xargs)"
echo "check 3 passed: systemctl stop: inactive (success), no container labelled $LABEL left"

# 4. A SIGKILL: systemd restarts the executor, which removes what the killed one left.
timeout 60 docker exec "$CONTAINER" systemctl start "$UNIT" || fail "systemctl start $UNIT failed"
wait_for 30 "the executor did not answer /health after the second start" healthy
run_echo "before the kill"
old_pid="$(main_pid)"
old_instances="$(instances)"
{ [ -n "$old_instances" ] && [ "$(wc -l <<<"$old_instances")" = 1 ]; } ||
    fail "expected the containers of one instance before the kill, found instances: $(xargs <<<"$old_instances")"
restarts="$(prop "$UNIT" NRestarts)"
in_c systemctl kill -s KILL "$UNIT"
wait_for 30 "systemd did not restart the executor after SIGKILL (MainPID $old_pid)" \
    sh -c "p=\$(docker exec $CONTAINER systemctl show -P MainPID $UNIT) && [ \"\$p\" != 0 ] && [ \"\$p\" != $old_pid ]"
wait_for 30 "the restarted executor did not answer /health" healthy
new_pid="$(main_pid)"
[ "$(prop "$UNIT" NRestarts)" -gt "$restarts" ] || fail "NRestarts did not grow after the SIGKILL"
old_left() { docker ps -a --filter "label=$INSTANCE_LABEL=$old_instances" --format '{{.Names}}'; }
deadline=$((SECONDS + 30))
while [ -n "$(old_left)" ]; do
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "the new instance did not remove the containers of the killed instance $old_instances: $(old_left | xargs)"
    sleep 0.25
done
echo "check 4 passed: SIGKILL of MainPID $old_pid: restarted by systemd as $new_pid, /health ok, containers of instance $old_instances removed"

# 5. The journal: text lines, then JSON objects with log_format: json.
# (Read whole first: `grep -q` in the pipe would close it early, a SIGPIPE under pipefail.)
journal="$(in_c journalctl --no-pager -o cat -u "$UNIT")"
grep -q listening <<<"$journal" || fail 'the journal has no "listening" line of the executor'
cursor="$(in_c journalctl -u "$UNIT" -n 0 --show-cursor | sed -n 's/^-- cursor: //p')"
[ -n "$cursor" ] || fail "no journal cursor"
write_config "log_format: json"
timeout 90 docker exec "$CONTAINER" systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
wait_for 30 "the executor did not answer /health after the restart with log_format: json" healthy
json_pid="$(main_pid)"
# journald may take a moment to store the last lines.
wait_for 10 'no "listening" journal line of the restarted executor' \
    sh -c "docker exec $CONTAINER journalctl --no-pager -o cat _PID=$json_pid | grep -q listening"
count="$(in_c sh -c "journalctl --no-pager -o json -u $UNIT --after-cursor='$cursor' | python3 /pkg/journal_json.py $json_pid 2>&1")" ||
    fail "the executor's journal lines with log_format: json: $count"
echo "check 5 passed: the journal has the executor's lines (\"listening\"), and $count JSON objects after log_format: json"

# 6. Reload: a changed budget applies without a restart (last: it needs SIGHUP support).
before="$(in_c curl -fsS --max-time 5 "$URL/stats")" || fail "GET /stats failed"
# budget STATS: "CPU MEM" of a /stats answer ("none" when it has no budget).
budget() {
    py 'import json, sys; d = json.loads(sys.argv[1]); print(float(d["task_cpu"]), float(d["task_mem"]))' "$1" 2>/dev/null ||
        echo none
}
[ "$(budget "$before")" = "1.0 1024.0" ] || fail "/stats before the reload: budget $(budget "$before"), expected cpu 1, mem 1024"
restarts="$(prop "$UNIT" NRestarts)"
BUDGET_CPU=0.5
BUDGET_MEM=512
write_config "log_format: json"
# What ExecReload= runs must exist on a clean Debian (systemd fails the reload with 203/EXEC).
reload_exe="$(prop "$UNIT" ExecReload | sed -n 's/.*path=\([^ ;]*\).*/\1/p' | head -n 1)"
[ -n "$reload_exe" ] || fail "$UNIT has no ExecReload="
in_c test -x "$reload_exe" ||
    fail "ExecReload= runs $reload_exe, which a clean Debian root (debootstrap minbase) lacks, so the reload fails (203/EXEC)$([ "$reload_exe" != /bin/kill ] || echo ": Debian's /bin/kill is in package procps, which the .deb does not depend on")"
timeout 30 docker exec "$CONTAINER" systemctl reload "$UNIT" || fail "systemctl reload $UNIT failed"
deadline=$((SECONDS + 15))
while :; do
    after="$(in_c curl -fsS --max-time 2 "$URL/stats" 2>/dev/null || true)"
    [ -n "$after" ] && [ "$(budget "$after")" = "0.5 512.0" ] && break
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.25
done
pid_now="$(main_pid)"
{ [ "$pid_now" = "$json_pid" ] && [ "$(prop "$UNIT" NRestarts)" = "$restarts" ]; } ||
    fail "systemctl reload restarted the executor (MainPID $json_pid -> $pid_now, NRestarts $restarts -> $(prop "$UNIT" NRestarts)): it does not reload its config on SIGHUP"
[ "$(prop "$UNIT" ActiveState)" = active ] || fail "$UNIT is $(prop "$UNIT" ActiveState) after the reload"
{ [ -n "$after" ] && [ "$(budget "$after")" = "0.5 512.0" ]; } ||
    fail "/stats after systemctl reload: ${after:-no answer}, expected the budget cpu 0.5, mem 512"
echo "check 6 passed: systemctl reload: /stats budget cpu 1 -> 0.5, mem 1024 -> 512, same MainPID $pid_now"

# The end: stop, shut systemd down, nothing of this executor left.
timeout 90 docker exec "$CONTAINER" systemctl stop "$UNIT" || fail "systemctl stop $UNIT failed"
docker stop -t 30 "$CONTAINER" >/dev/null
left="$(labelled)"
[ -z "$left" ] || fail "containers left at the end: $(xargs <<<"$left")"
echo "systemd service checks passed"
