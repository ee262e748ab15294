#!/usr/bin/env bash
# Start a local S3-compatible server (moto) on 127.0.0.1 and create buckets in it.
#
#   infra/local/start_s3.sh [PORT [BUCKET ...]]      default port 5000; e.g. start_s3.sh 5000 svl-in svl-out
#   infra/local/stop_s3.sh [PORT]
#
# Data lives in memory only and is gone when the server stops. moto accepts any credentials; botocore
# still wants some, so the printed variables carry the dummy pair "testing"/"testing".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

PORT="${1:-5000}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$PORT" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [PORT [BUCKET ...]]  (PORT must be a number, got '$PORT')" >&2
    exit 2
fi
ENDPOINT="http://127.0.0.1:$PORT"
PIDFILE="/tmp/svl-moto-$PORT.pid"
LOG="/tmp/svl-moto-$PORT.log"
MOTO="$(tool moto_server)"
PYTHON="$(tool python)"

export AWS_ENDPOINT_URL="$ENDPOINT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1 NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"

if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "moto is already running on $ENDPOINT (pid $(cat "$PIDFILE"))."
else
    nohup "$MOTO" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    # Ready when it answers ListBuckets; give up after ~10 s or as soon as the process dies (port taken?).
    ready=0
    for _ in $(seq 50); do
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            break
        fi
        if "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "$ENDPOINT" 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.2
    done
    if [[ $ready -ne 1 ]] || ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "error: moto_server did not come up on $ENDPOINT; last lines of $LOG:" >&2
        tail -5 "$LOG" >&2
        kill "$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
        exit 1
    fi
fi

"$PYTHON" - "$@" <<'PY'
import os
import sys

import boto3

s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
for bucket in sys.argv[1:]:
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    print(f"bucket s3://{bucket}/")
PY

cat <<MSG
moto S3 on $ENDPOINT (pid $(cat "$PIDFILE"), log $LOG). For clients, Ray heads and jobs:
  export AWS_ENDPOINT_URL=$ENDPOINT AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \\
    AWS_DEFAULT_REGION=us-east-1 NO_PROXY=127.0.0.1,localhost
and pass --s3-endpoint-url $ENDPOINT to the jobs. Stop it with infra/local/stop_s3.sh $PORT
MSG
