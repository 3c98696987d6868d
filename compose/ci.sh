#!/usr/bin/env bash
# The container stage of CI (.ci/run), in three steps:
#
#   compose/ci.sh start   start a Docker engine of our own (dockerd, by hand)
#   compose/ci.sh stage   build the images, run failover-basic and a seeded
#                         chaos run in containers (the docker backend), check
#                         their exit status and reports
#   compose/ci.sh stop    remove every container, network and image this CI
#                         run created, stop our dockerd (by its PID) and
#                         remove its state
#
# Needs root, Debian's docker.io, docker-compose and debootstrap (.ci/run
# installs them), and DOCKER_HOST=unix://$CTLAB_DOCKER_SOCK (the default
# below), exported by the caller so that the tests (tests/docker) find the
# same engine.
#
# Our dockerd leaves the host's network alone: no docker0 bridge, no iptables
# rules, no change to IP forwarding or masquerading (--bridge=none
# --iptables=false --ip-forward=false --ip-masq=false). Containers reach each
# other and the host on the networks we create (all in 198.18.0.0/15), and
# nothing else.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SOCK=${CTLAB_DOCKER_SOCK:-/run/ctlab-docker.sock}
STATE=${CTLAB_CI_STATE:-/run/ctlab-ci-docker}       # our dockerd's pid, what we created
DATA_ROOT=${CTLAB_DOCKER_DATA:-/var/lib/ctlab-ci-docker}  # its images and layers
EXEC_ROOT=$STATE/exec
OUT=${CTLAB_CI_OUT:-$HERE/reports/ci}            # the reports (kept)
IMAGE=${CTLAB_IMAGE:-ctlab:latest}
BASE=${CTLAB_BASE_IMAGE:-ctlab-base:bookworm}
export DOCKER_HOST=unix://$SOCK

say() { echo "ci-docker: $*"; }
die() { echo "ci-docker: $*" >&2; exit 1; }
engine_up() { docker info >/dev/null 2>&1; }

start() {
    [ "$(id -u)" = 0 ] || die "needs root (dockerd)"
    command -v dockerd >/dev/null || die "no dockerd (Debian: apt-get install docker.io)"
    if engine_up; then
        say "an engine already answers at $DOCKER_HOST: using it (not ours to stop)"
        return
    fi
    mkdir -p "$STATE"
    [ -e "$DATA_ROOT" ] || touch "$STATE/data-root.created"
    local driver
    for driver in overlay2 vfs; do
        rm -f "$SOCK"
        dockerd --host "unix://$SOCK" --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" \
            --pidfile "$STATE/dockerd.pidfile" --storage-driver "$driver" \
            --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
            --ip-masq=false --default-address-pool base=198.19.224.0/19,size=24 \
            > "$STATE/dockerd-$driver.log" 2>&1 &
        echo $! > "$STATE/dockerd.pid"
        for _ in $(seq 1 60); do
            engine_up && break
            kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || break
            sleep 0.5
        done
        if engine_up; then
            say "dockerd (pid $(cat "$STATE/dockerd.pid"), storage $driver) at $DOCKER_HOST"
            docker version --format 'ci-docker: engine {{.Server.Version}}, API {{.Server.APIVersion}}'
            return
        fi
        say "dockerd with storage driver $driver did not come up:"
        tail -n 15 "$STATE/dockerd-$driver.log" >&2 || true
        stop_dockerd
    done
    die "no Docker engine could be started (logs in $STATE)"
}

# Images present before the stage are not ours to remove.
remember_images() {
    local img
    : > "$STATE/images.created"
    for img in "$BASE" "$IMAGE"; do
        docker image inspect "$img" >/dev/null 2>&1 || echo "$img" >> "$STATE/images.created"
    done
    [ -e "$HERE/wheels" ] || touch "$STATE/wheels.created"
}

# A run passes with exit status 0 and both reports written.
check_report() {
    # The run must have worked end to end in containers and met its expectation
    # (failover-basic: pass; chaos: no failing invariant): exit status 0, a
    # report (JSON and HTML), every fault carried out by Docker.
    local what=$1 dir=$2 rc=$3
    if ! [ -s "$dir/report.json" ] || ! [ -s "$dir/report.html" ]; then
        say "$what: no report in $dir (exit status $rc)"
        return 1
    fi
    python3 - "$dir/report.json" "$what" "$rc" <<'PY' || return 1
import json, sys
r = json.load(open(sys.argv[1]))
bad = [f for f in r["faults"] if not f["applied"]]
print(f"== {sys.argv[2]}: verdict {r['verdict']}, expectation met: {r['expectation_met']}, "
      f"{len(r['faults'])} fault records, exit status {sys.argv[3]}")
for i in r["invariants"]:
    print(f"   {i['verdict']:<8} {i['name']}: {i['detail'][:160]}")
if not r["faults"] or bad:
    sys.exit(f"faults not applied: {bad or 'none recorded'}")
if not r["expectation_met"] or sys.argv[3] != "0":
    sys.exit(f"{sys.argv[2]}: expectation not met in containers")
PY
    return 0
}

stage() {
    engine_up || die "no Docker engine at $DOCKER_HOST (compose/ci.sh start)"
    mkdir -p "$STATE" "$OUT"
    [ -e "$STATE/images.created" ] || remember_images
    local t0 t rc failed=0
    t0=$(date +%s)
    "$HERE/build-image.sh" --tag "$IMAGE"
    say "images built in $(( $(date +%s) - t0 ))s"

    t=$(date +%s); rc=0
    ctlab run "$REPO/scenarios/library/failover-basic.yaml" --backend docker \
        --out "$OUT/failover-basic" --quiet || rc=$?
    say "failover-basic in containers: exit $rc, $(( $(date +%s) - t ))s"
    check_report failover-basic "$OUT/failover-basic" "$rc" || failed=1

    t=$(date +%s); rc=0
    ctlab chaos --duration 20 --seed 5 --backend docker --out "$OUT/chaos-5" --quiet || rc=$?
    say "chaos (seed 5, 20 s) in containers: exit $rc, $(( $(date +%s) - t ))s"
    check_report "chaos seed 5" "$OUT/chaos-5" "$rc" || failed=1

    local left
    left=$(docker ps -aq --filter label=ctlab.run; docker network ls -q --filter label=ctlab.run)
    if [ -n "$left" ]; then
        say "the runs left containers or networks behind: $left"
        failed=1
    fi
    say "stage done in $(( $(date +%s) - t0 ))s"
    [ "$failed" = 0 ] || die "the container stage failed (reports in $OUT)"
}

stop_dockerd() {
    local pid
    [ -f "$STATE/dockerd.pid" ] || return 0
    pid=$(cat "$STATE/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    fi
    rm -f "$STATE/dockerd.pid" "$SOCK"
}

stop() {
    if engine_up; then
        # containers and networks of every ctlab run (labelled ctlab.run), then
        # those of projects of our compose file (the tests' `down` did not run)
        (cd "$REPO" && python3 -m scenarios.backends.docker cleanup) || true
        local project ids
        for project in $(docker ps -a --filter label=ctlab.role \
                         --format '{{.Label "com.docker.compose.project"}}' | sort -u); do
            [ -n "$project" ] || continue
            ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
            [ -z "$ids" ] || docker rm -f $ids >/dev/null || true
            ids=$(docker network ls -q --filter "label=com.docker.compose.project=$project")
            [ -z "$ids" ] || docker network rm $ids >/dev/null || true
        done
        if [ -f "$STATE/images.created" ]; then
            while read -r img; do
                [ -z "$img" ] || docker rmi -f "$img" >/dev/null 2>&1 || true
            done < "$STATE/images.created"
            rm -f "$STATE/images.created"
        fi
    fi
    if [ -f "$STATE/wheels.created" ]; then
        rm -rf "$HERE/wheels"
        rm -f "$STATE/wheels.created"
    fi
    if [ -f "$STATE/dockerd.pid" ]; then
        stop_dockerd
        # our engine's own state (images, layers, build cache): nothing else uses it
        if [ -f "$STATE/data-root.created" ]; then
            rm -rf --one-file-system "$DATA_ROOT" 2>/dev/null || true
        fi
        rm -rf --one-file-system "$EXEC_ROOT" 2>/dev/null || true
        rm -rf "$STATE"
        say "dockerd stopped, its state removed"
    fi
}

case "${1:-}" in
    start) start ;;
    stage) stage ;;
    stop) stop ;;
    *) echo "usage: compose/ci.sh start|stage|stop" >&2; exit 2 ;;
esac
