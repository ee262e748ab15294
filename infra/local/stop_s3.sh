#!/usr/bin/env bash
# Stop the moto server that infra/local/start_s3.sh started on PORT (default 5000): that process only,
# found through its pid file.
set -euo pipefail

PORT="${1:-5000}"
PIDFILE="/tmp/svl-moto-$PORT.pid"

if [[ ! -f "$PIDFILE" ]]; then
    echo "No moto server started by start_s3.sh on port $PORT (no $PIDFILE)."
    exit 0
fi
PID="$(cat "$PIDFILE")"
# Only a live moto_server: the pid may have been reused after a crash or a reboot.
if kill -0 "$PID" 2>/dev/null && [[ "$(ps -p "$PID" -o command= 2>/dev/null)" == *moto_server* ]]; then
    kill "$PID"
    for _ in $(seq 25); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$PID" 2>/dev/null; then kill -9 "$PID"; fi
    echo "Stopped moto on 127.0.0.1:$PORT (pid $PID)."
else
    echo "moto on port $PORT was not running (stale $PIDFILE)."
fi
rm -f "$PIDFILE"
