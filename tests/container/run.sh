#!/usr/bin/env bash
# Build the container image and run the Compose cluster with podman:
#
#   1. a Debian 12 base (python3, python3-venv, python3-pip, ca-certificates,
#      curl; no compiler) made with mmdebstrap from the Debian archive, as no
#      image registry may be reachable, and imported into podman;
#   2. the image, built from the Dockerfile with --build-arg BASE=<that base>;
#   3. compose.yaml's three nodes, started with podman-compose on free host
#      ports; then: a leader is elected, keys written through n1 are read
#      through n2, a file uploaded over FTP (PASV, through the published
#      passive ports) to n1 is downloaded from n3, the health check passes;
#      n1 is stopped (it must exit 0 on the image's stop signal) and every
#      key and the file are read back through n2 and n3, and written there;
#      then "down" + "up": everything is still there (named volumes).
#
# Everything it makes (containers, volumes, network, images) carries a name
# unique to this run and is removed at the end, whatever happens; nothing
# else is touched.  Exit status: 0 passed, 77 podman cannot run containers
# here (skipped), anything else failed.
#
# The base's tarball is cached by date in $KV_TEST_CACHE (default
# ~/.cache/twisted-kv-test), so a second run the same day skips mmdebstrap.
#
# On hosts where podman's default OCI runtime cannot set the resource limits
# it asks for (runc: "error setting rlimit type 6: operation not permitted",
# e.g. on a virtual machine whose limits cannot be raised), the script points
# CONTAINERS_CONF at tests/container/containers.conf (runc, with lower
# default ulimits) and carries on.
#
# pip inside the build uses the network; when PIP_CERT or PIP_INDEX_URL are
# set (a proxy's CA file, a mirror), they are passed to the build stage.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
run_id="kvtest$$x$(date +%s)"
base_image="localhost/$run_id-base:latest"
image="localhost/$run_id-node:latest"
project="$run_id"
work=$(mktemp -d "${TMPDIR:-/tmp}/$run_id.XXXXXX")

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

cleanup() {
    local status=$?
    set +e
    if [ -n "${compose_started:-}" ] && [ $status -ne 0 ]; then
        say "the nodes' last log lines:"
        "${compose[@]}" logs > "$work/compose.log" 2>&1
        tail -n 30 "$work/compose.log" | sed 's/^/    /'
    fi
    say "cleaning up: containers, volumes, network, images"
    podman ps -aq --filter "label=io.podman.compose.project=$project" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
    podman volume ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1
    podman network ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman network rm -f >/dev/null 2>&1
    podman rmi -f "$image" "$base_image" >/dev/null 2>&1
    podman images -q --filter "label=twisted-kv-test=$run_id" | xargs -r podman rmi -f >/dev/null 2>&1
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in podman podman-compose mmdebstrap curl python3; do
    command -v "$tool" >/dev/null || { say "SKIPPED: $tool is not installed"; exit 77; }
done

# -- 1. the Debian 12 base ------------------------------------------------
started=$SECONDS
cache="${KV_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/twisted-kv-test}"
tarball="$cache/debian12-python-$(date +%Y%m%d).tar"
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    say "making the Debian 12 base with mmdebstrap (cached as $tarball)"
    rm -f "$cache"/debian12-python-*.tar
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,curl \
        --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$work/base.tar" http://deb.debian.org/debian > "$work/mmdebstrap.log" 2>&1 \
        || { tail -n 20 "$work/mmdebstrap.log"; fail "mmdebstrap"; }
    mv "$work/base.tar" "$tarball"
fi
podman import --quiet "$tarball" "$base_image" >/dev/null
say "base image $base_image ready in $((SECONDS - started)) s"

# Can podman run a container here at all, and with which settings?
if ! podman run --rm "$base_image" true 2> "$work/preflight.err"; then
    if grep -q "rlimit" "$work/preflight.err"; then
        export CONTAINERS_CONF="$here/containers.conf"
        say "podman's runtime cannot set its default resource limits here: using CONTAINERS_CONF=$CONTAINERS_CONF"
    fi
    if ! podman run --rm "$base_image" true 2> "$work/preflight.err"; then
        say "SKIPPED: podman cannot run containers on this host: $(tail -n 1 "$work/preflight.err")"
        exit 77
    fi
fi

# -- 2. the image ---------------------------------------------------------
started=$SECONDS
build=(podman build --quiet --format docker --layers=false --label "twisted-kv-test=$run_id"
       --build-arg "BASE=$base_image" --tag "$image")
if [ -n "${PIP_CERT:-}" ]; then
    build+=(--volume "$PIP_CERT:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
fi
if [ -n "${PIP_INDEX_URL:-}" ]; then
    build+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi
"${build[@]}" "$repo" > "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; fail "podman build"; }
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base_image")
say "image $image built in $((SECONDS - started)) s: $((size / 1000000)) MB ($(((size - base_size) / 1000000)) MB over the base)"

# -- 3. the Compose cluster ------------------------------------------------
# Free host ports: one HTTP and one FTP port per node, and a range of five
# passive ports each, so that other clusters on this host are left alone.
read -r -a ports < <(python3 - <<'EOF'
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
chosen = []
while len(chosen) < 6:
    port = random.randrange(20000, 29000)
    if free(port) and port not in chosen:
        chosen.append(port)
while len(chosen) < 9:
    low = random.randrange(40000, 60000, 5)
    if all(free(p) for p in range(low, low + 5)):
        chosen.append(low)
print(*chosen)
EOF
)
for i in 1 2 3; do
    export "KV_N${i}_HTTP_PORT=${ports[$((i - 1))]}"
    export "KV_N${i}_FTP_PORT=${ports[$((i + 2))]}"
    low=${ports[$((i + 5))]}
    export "KV_N${i}_FTP_PASSIVE_PORTS=$low-$((low + 4))"
done
export KV_IMAGE="$image" KV_FTP_PASSIVE_ADDRESS=127.0.0.1
http1="http://127.0.0.1:$KV_N1_HTTP_PORT" http2="http://127.0.0.1:$KV_N2_HTTP_PORT" http3="http://127.0.0.1:$KV_N3_HTTP_PORT"
compose=(podman-compose --project-name "$project" --file "$repo/compose.yaml")

# Poll until a command succeeds, for at most $1 seconds.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" > /dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "$what (waited $limit s)"
        sleep 0.5
    done
}
# (The logs go to a file first: a grep that stops reading early would fail the pipe.)
leader_logged() { "${compose[@]}" logs > "$work/logs.txt" 2>/dev/null; grep -q "partition leader" "$work/logs.txt"; }
healthy() { for url in "$@"; do curl -fsS -m 5 "$url/health" || return 1; done; }
container() { echo "${project}_$1_1"; }

up() {
    local started=$SECONDS
    "${compose[@]}" up -d --no-build > "$work/up.log" 2>&1 || { tail -n 20 "$work/up.log"; fail "podman-compose up"; }
    compose_started=1
    say "podman-compose up -d: three containers started in $((SECONDS - started)) s"
    wait_for 90 "a partition leader in the logs" leader_logged
    # From the last container's start to the leader's line, by their clocks.
    local last_start leader_line
    last_start=$(podman inspect --format '{{.State.StartedAt}}' "$(container n1)" "$(container n2)" "$(container n3)" | sort | tail -n 1)
    leader_line=$(grep -m 1 'partition leader' "$work/logs.txt")
    say "cluster up: partition leader${leader_line#*partition leader}, $((SECONDS - started)) s after podman-compose up," \
        "$(( $(date -d "$(grep -o '20[0-9-]*T[0-9:]*[+-][0-9]*' <<< "$leader_line" | head -n 1)" +%s) \
             - $(date -d "${last_start% UTC}" +%s) )) s after the last container started"
    wait_for 90 "every node healthy" healthy "$http1" "$http2" "$http3"
    say "every node answers 200 on /health after $((SECONDS - started)) s"
}

up
podman healthcheck run "$(container n2)" || fail "the image's health check in n2"
say "the image's HEALTHCHECK passes in $(container n2)"

keys=20
for i in $(seq 1 $keys); do
    curl -fsS -m 10 -X PUT -H 'Content-Type: text/plain' --data-binary "value $i" "$http1/kv/deploy/$i" > /dev/null \
        || fail "PUT deploy/$i through n1"
done
check_keys() {
    local url=$1
    for i in $(seq 1 $keys); do
        [ "$(curl -fsS -m 10 "$url/kv/deploy/$i")" = "value $i" ] || fail "GET deploy/$i through $url"
    done
}
check_keys "$http2"
say "$keys keys written through n1, read back through n2"

head -c 100000 /dev/urandom > "$work/upload.bin"
curl -fsS -m 30 --disable-epsv -T "$work/upload.bin" "ftp://alice:wonderland@127.0.0.1:$KV_N1_FTP_PORT/deploy.bin" \
    || fail "FTP upload (PASV) to n1"
curl -fsS -m 30 --disable-epsv -o "$work/download.bin" "ftp://alice:wonderland@127.0.0.1:$KV_N3_FTP_PORT/deploy.bin" \
    || fail "FTP download (PASV) from n3"
cmp -s "$work/upload.bin" "$work/download.bin" || fail "the file downloaded from n3 differs from the one uploaded to n1"
say "a 100 kB file uploaded over FTP (PASV) to n1, downloaded identical from n3"

# (podman without systemd as init says it cannot remove the health check's timer.)
podman stop -t 20 "$(container n1)" > /dev/null 2>> "$work/podman.log"
status=$(podman inspect --format '{{.State.ExitCode}}' "$(container n1)")
[ "$status" = 0 ] || fail "n1 exited with status $status on the stop signal"
say "n1 stopped: exit status 0 on its stop signal"
check_keys "$http2"
check_keys "$http3"
curl -fsS -m 30 --disable-epsv "ftp://alice:wonderland@127.0.0.1:$KV_N2_FTP_PORT/deploy.bin" | cmp -s - "$work/upload.bin" \
    || fail "FTP download from n2 with n1 stopped"
wait_for 30 "a write through n3 with n1 stopped" \
    curl -fsS -m 10 -X PUT -H 'Content-Type: text/plain' --data-binary "after" "$http3/kv/deploy/after"
say "with n1 stopped: every key read back through n2 and n3, the file through n2, a new key written through n3"

"${compose[@]}" down > "$work/down.log" 2>&1 || { tail -n 20 "$work/down.log"; fail "podman-compose down"; }
say "down (volumes kept); up again"
up
check_keys "$http1"
[ "$(curl -fsS -m 10 "$http1/kv/deploy/after")" = after ] || fail "GET deploy/after through n1 after down + up"
curl -fsS -m 30 --disable-epsv "ftp://alice:wonderland@127.0.0.1:$KV_N1_FTP_PORT/deploy.bin" | cmp -s - "$work/upload.bin" \
    || fail "FTP download from n1 after down + up"
say "after down + up: every key and the file read back through n1"
say "PASSED"
