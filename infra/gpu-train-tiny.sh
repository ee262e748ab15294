#!/usr/bin/env bash
# Train the tiny model on one GPU, two runs side by side (docs/tiny-model.md, "Training on a GPU"):
# the same start and settings except the layers the looking loss reads, so that one lease compares them.
#   infra/gpu-train-tiny.sh OUT_DIR INIT MINUTES "RUN A FLAGS" "RUN B FLAGS" [COMMON FLAGS...]
# Each run writes its checkpoint, metrics.json, curve and log under a staging folder; at the end both are packed
# into OUT_DIR/runs.tar.gz.NN (15 MiB pieces: `cat runs.tar.gz.* | tar -xz` rebuilds runs/a and runs/b).
# A run that outlives MINUTES + 2 is stopped, and what it saved last (it saves at every evaluation) is packed.
# TRAIN_DEVICE=cpu runs the same on a CPU (to check the script). Wheels of missing packages in $GPU_CHECK_WHEELS (default .whl) are installed first into a private folder.
set -euo pipefail

cd "$(dirname "$0")/.."
out="$1" init="$2" minutes="$3" flags_a="$4" flags_b="$5"
shift 5
py="${PYTHON:-python3}"
wheels="${GPU_CHECK_WHEELS:-.whl}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$out"
if compgen -G "$wheels/*.whl" >/dev/null; then
    site="$(mktemp -d /tmp/gpu-train-site.XXXXXX)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

stage="$(mktemp -d /tmp/gpu-train.XXXXXX)/runs"
mkdir -p "$stage/a" "$stage/b"
limit=$(( ${minutes%.*} * 60 + 120 ))
for run in a b; do
    [ "$run" = a ] && extra="$flags_a" || extra="$flags_b"
    # shellcheck disable=SC2086  # the run's flags are words on purpose
    timeout "$limit" "$py" -m jobs.train_tiny --device "${TRAIN_DEVICE:-cuda}" --init "$init" --minutes "$minutes" \
        --out "$stage/$run" "$@" $extra >"$stage/$run/train.log" 2>&1 &
done
wait
tail -n 4 "$stage"/a/train.log "$stage"/b/train.log
tar -C "$(dirname "$stage")" -czf - runs | split -b 15M -d - "$out/runs.tar.gz."
ls -l "$out"
