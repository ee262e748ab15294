#!/usr/bin/env bash
# Train two variants of the tiny model on one GPU and compare them on the dev seed, in one lease
# (docs/tiny-model.md, "Training on a GPU"): infra/gpu-train-tiny.sh, then the fidelity benchmark of both runs on
# seed 0 (never a reporting seed) of each split, so that the choice between them is made on the dev seed.
#   infra/gpu-train-compare.sh OUT_DIR INIT MINUTES "RUN A FLAGS" "RUN B FLAGS" "FIDELITY FLAGS" [COMMON FLAGS...]
# OUT_DIR gets runs.tar.gz.NN (both checkpoints) and dev.tar.gz (dev/{a,b}-{hard,easy}.json and their logs).
set -euo pipefail

cd "$(dirname "$0")/.."
out="$1" init="$2" minutes="$3" flags_a="$4" flags_b="$5" fidelity="$6"
shift 6
py="${PYTHON:-python3}"
wheels="${GPU_CHECK_WHEELS:-.whl}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$wheels/*.whl" >/dev/null; then  # installed once here, for the training and the benchmark
    site="$(mktemp -d /tmp/gpu-compare-site.XXXXXX)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
GPU_CHECK_WHEELS=/nonexistent infra/gpu-train-tiny.sh "$out" "$init" "$minutes" "$flags_a" "$flags_b" "$@"
work="$(mktemp -d /tmp/gpu-compare.XXXXXX)"
cat "$out"/runs.tar.gz.* | tar -C "$work" -xz
mkdir -p "$work/dev"
for run in a b; do
    for split in hard easy; do
        # shellcheck disable=SC2086  # the fidelity flags are words on purpose
        "$py" -m jobs.benchmark fidelity --model "$work/runs/$run" --split "$split" --seed 0 --device "${TRAIN_DEVICE:-cuda}" \
            $fidelity --out "$work/dev/$run-$split.json" >"$work/dev/$run-$split.log" 2>&1 || echo "fidelity $run $split failed"
    done
done
tar -C "$work" -czf "$out/dev.tar.gz" dev
ls -l "$out"
