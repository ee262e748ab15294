#!/usr/bin/env bash
# Stop the Ray head that infra/local/start_ray_head.sh started: only its processes, through the process group
# it recorded, never other Ray instances on this machine (`ray stop` would kill every one of them).
set -euo pipefail

TEMP_DIR=/tmp/ray-svl
PGID_FILE="$TEMP_DIR/head.pgid"
GRACE_SECONDS=16 # as `ray stop`: SIGTERM first, SIGKILL what is left after the grace period

if [[ ! -f "$PGID_FILE" ]]; then
    echo "No head started by start_ray_head.sh (no $PGID_FILE). Without setsid it was not recorded;"
    echo "then 'ray stop' stops it, together with every other Ray process of this user on this machine."
    exit 0
fi
PGID="$(cat "$PGID_FILE")"

# group_alive: some process of the group still runs and is Ray's (the id may be stale after a reboot).
# (awk reads all of ps's output: an early-exiting `grep -q` would make pipefail report a SIGPIPE'd ps.)
group_alive() {
    ps -eo pgid=,command= | awk -v g="$PGID" '$1 == g && /ray|gcs_server|raylet/ { n++ } END { exit n == 0 }'
}

if ! group_alive; then
    echo "The Ray head of $PGID_FILE (process group $PGID) is not running."
    rm -f "$PGID_FILE"
    exit 0
fi
kill -TERM -- "-$PGID" 2>/dev/null || true
for _ in $(seq $((GRACE_SECONDS * 5))); do
    group_alive || break
    sleep 0.2
done
if group_alive; then
    kill -KILL -- "-$PGID" 2>/dev/null || true
fi
rm -f "$PGID_FILE"
# Workers run in their own groups and exit with their raylet; the session files stay for their logs.
echo "Stopped the Ray head (process group $PGID); logs remain under $TEMP_DIR/session_latest/logs."
