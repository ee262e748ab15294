#!/usr/bin/env bash
# Start a loopback-only Ray head with the dashboard and job API, for submitting jobs as on a real cluster.
#
#   infra/local/start_ray_head.sh [NUM_CPUS] [GCS_PORT] [DASHBOARD_PORT]     defaults: all cores, 6380, 8265
#   infra/local/stop_ray.sh                                                   stops it (and only it) again
#
# Everything listens on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray off the host's interface
# address), token auth and usage stats are off, and the session lives under the short /tmp/ray-svl
# (Ray's unix socket paths must stay short). GCS port 6380 leaves 6379 to a Redis you may run. When another
# Ray already runs on this machine, also set AGENT_PORT (dashboard agent HTTP, default 52365) and
# CLIENT_PORT (Ray Client server, default 10001; not in 10002-19999, Ray's worker ports) to free ports.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

NUM_CPUS="${1:-$(nproc)}"
GCS_PORT="${2:-6380}"
DASHBOARD_PORT="${3:-8265}"
AGENT_PORT="${AGENT_PORT:-52365}"
CLIENT_PORT="${CLIENT_PORT:-10001}"
TEMP_DIR=/tmp/ray-svl
# The process group of the head's daemons, for stop_ray.sh (shared with it).
PGID_FILE="$TEMP_DIR/head.pgid"

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
RAY="$(tool ray)"
PYTHON="$(tool python)"

if "$RAY" status --address "127.0.0.1:$GCS_PORT" >/dev/null 2>&1; then
    echo "A Ray head is already running on 127.0.0.1:$GCS_PORT."
else
    # A port held by another process would leave a half-working head (e.g. a job API with no agent).
    "$PYTHON" - "$GCS_PORT" "$DASHBOARD_PORT" "$AGENT_PORT" "$CLIENT_PORT" <<'PY'
import socket
import sys

for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            sys.exit(f"error: port {port} on 127.0.0.1 is in use; pick free ports (see the header of this script)")
PY
    mkdir -p "$TEMP_DIR"
    args=(start --head
        --num-cpus="$NUM_CPUS"
        --node-ip-address=127.0.0.1
        --port="$GCS_PORT"
        --include-dashboard=true
        --dashboard-host=127.0.0.1
        --dashboard-port="$DASHBOARD_PORT"
        --dashboard-agent-listen-port="$AGENT_PORT"
        --ray-client-server-port="$CLIENT_PORT"
        --temp-dir="$TEMP_DIR"
        --disable-usage-stats)
    if command -v setsid >/dev/null 2>&1; then
        # `ray start` leaves its daemons in its own process group: a new session makes that group this
        # head's alone, and its id (the session leader's pid) is what stop_ray.sh signals.
        if ! setsid --wait bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PGID_FILE" "$RAY" "${args[@]}"; then
            rm -f "$PGID_FILE"
            exit 1
        fi
    else
        rm -f "$PGID_FILE"
        "$RAY" "${args[@]}"
    fi
fi

cat <<MSG

Ray head: 127.0.0.1:$GCS_PORT    dashboard and job API: http://127.0.0.1:$DASHBOARD_PORT
In the shell that submits (the client must agree with the head on auth):
  export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . --entrypoint-num-cpus 1 \\
    -- python -m jobs.caption --input tests/assets --output /tmp/svl-out --workers 1
For s3:// paths on the local S3 server, the job takes its credentials from the head's environment: run
infra/local/start_s3.sh first, export the variables it prints, then start this head from that shell, and use
  ... -- python -m jobs.caption --input s3://svl-in/ --output s3://svl-out/captions/ \\
         --s3-endpoint-url http://127.0.0.1:5000 --workers 1
Stop it with infra/local/stop_ray.sh
MSG
