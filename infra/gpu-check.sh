#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with one CUDA GPU and only torch, transformers==5.23.0 and
# safetensors (no ray, av or decord), in under 8 minutes on an H100/H200:
#   1. preflight: the packages and the GPU are there (fails in seconds, naming what is missing);
#   2. the `gpu`-marked tests (tests/sparsevlm/test_gpu.py: patched dense == unpatched, cache == no cache, batch == alone);
#   3. the GPU benchmark, `python -m jobs.benchmark gpu --out OUT_DIR/gpu.json`: the 7B layout in bf16, left-
#      padded rows of unequal lengths, 3 timed repeats, and the synchronising CUDA calls per decode step.
# Usage, from the repository root:  infra/gpu-check.sh [OUT_DIR]   (default: $OUT, else ./gpu-check-out)
# Writes into OUT_DIR: preflight.json, tests.xml (JUnit), gpu.json, and each step's log.
# Wheels of missing packages in $GPU_CHECK_WHEELS (default .whl) are installed first into a private folder.
# GPU_CHECK_TINY=1 runs the same steps on a CPU at a tiny size (the tests are then skipped): it checks the script.
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
tiny="${GPU_CHECK_TINY:-0}"
wheels="${GPU_CHECK_WHEELS:-.whl}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

step() { echo "== $(date -u +%H:%M:%S) $*"; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

if compgen -G "$wheels/*.whl" >/dev/null; then
    step "installing the wheels in $wheels"
    site="$(mktemp -d /tmp/gpu-check-site.XXXXXX)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
        || fail "could not install the wheels in $wheels"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

step "preflight"
"$py" - "$out/preflight.json" "$tiny" <<'EOF' || fail "preflight (the line above names what is missing)"
import importlib, json, sys

path, tiny = sys.argv[1], sys.argv[2] == "1"
missing = []
for name in ("torch", "transformers", "safetensors", "tokenizers", "numpy", "pytest"):
    try:
        importlib.import_module(name)
    except ImportError as err:
        missing.append(f"{name} ({err})")
if missing:
    sys.exit(f"missing packages: {', '.join(missing)}; carry their wheels in .whl (docs/gpu.md)")
import torch, transformers

if transformers.__version__ != "5.23.0":
    sys.exit(f"transformers {transformers.__version__} found, 5.23.0 expected (the patch's pin): carry "
             "transformers-5.23.0-py3-none-any.whl and regex in .whl (docs/gpu.md)")
if not tiny and not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda}): "
             "check nvidia-smi and that this torch build matches the driver, or set GPU_CHECK_TINY=1 on a CPU")
from sparsevlm.bench.gpu import versions  # also proves the benchmark imports without the pipeline

report = {"versions": versions(), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
json.dump(report, open(path, "w"), indent=2)
print(report)
EOF

# Each step has its own limit, so a hang fails the step instead of the whole lease; rc 124 = the limit.
status=0
if [ "$tiny" = 1 ]; then bench=(--tiny --new-tokens 2 --repeats 1 --batches 1); tests_limit=120; bench_limit=300
else bench=(); tests_limit=150; bench_limit=290; fi

step "gpu tests (limit ${tests_limit}s)"
timeout "$tests_limit" "$py" -m pytest -q -m gpu -p no:cacheprovider tests/sparsevlm/test_gpu.py --junitxml="$out/tests.xml" \
    2>&1 | tee "$out/tests.log" || { status=1; echo "gpu-check: the gpu tests failed (see tests.log)" >&2; }

step "gpu benchmark (limit ${bench_limit}s)"
timeout "$bench_limit" "$py" -m jobs.benchmark gpu --out "$out/gpu.json" "${bench[@]}" \
    2>&1 | tee "$out/benchmark.log" || { status=1; echo "gpu-check: the benchmark failed (see benchmark.log)" >&2; }

step "done (exit $status); files in $out:"
ls -l "$out"
exit "$status"
