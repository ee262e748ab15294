#!/usr/bin/env bash
# Resolves on paper what `make install TORCH_DEVICE=LINE` (and the image, for its line) would install on Linux
# x86-64 for one Python version: the project and its dependencies under the lock (constraints.txt), torch from
# PyTorch's index for LINE, everything else from PyPI. Nothing is installed and no wheel is downloaded (pip's
# --dry-run reads the indexes' metadata only), so it runs on any machine, GPU or not, in under a minute.
# Usage, from anywhere:  infra/resolve-check.sh LINE PYTHON_VERSION [REPORT_JSON]
#   LINE            cpu | cu126 | cu130 (the torch build; cu130 is also PyPI's own torch 2.13.0)
#   PYTHON_VERSION  3.11 | 3.12 | 3.13 (what pyproject.toml allows)
#   REPORT_JSON     where pip's installation report goes (default: a temporary file)
# It fails when pip cannot resolve, or when the torch it picked is not LINE's build (e.g. PyTorch's index was
# unreachable and PyPI's CUDA 13 build came instead). This machine's pip settings are ignored (--isolated):
# the check is of the public indexes, not of a local mirror. PIP overrides the pip to run (pip 22.2 or newer).
set -euo pipefail

line="${1:?usage: infra/resolve-check.sh cpu|cu126|cu130 3.11|3.12|3.13 [REPORT_JSON]}"
python_version="${2:?usage: infra/resolve-check.sh cpu|cu126|cu130 3.11|3.12|3.13 [REPORT_JSON]}"
case "$line" in cpu | cu126 | cu130) ;; *) echo "resolve-check: LINE is cpu, cu126 or cu130, not '$line'" >&2; exit 2 ;; esac
case "$python_version" in 3.11 | 3.12 | 3.13) ;; *)
    echo "resolve-check: pyproject.toml allows Python 3.11-3.13, not '$python_version'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
scratch="$(mktemp -d /tmp/resolve-check.XXXXXX)"  # pip's --target, and the report unless one is asked for
trap 'rm -rf "$scratch"' EXIT
report="${3:-$scratch/report.json}"
read -r -a pip <<<"${PIP:-python3 -m pip}"

# pip given --platform matches exactly the tags listed, so list every manylinux level an x86-64 glibc 2.28
# machine (the oldest the CUDA wheels accept) takes: NVIDIA's libraries are manylinux_2_27, torch's 2_28.
platforms=()
for glibc in $(seq 28 -1 5); do platforms+=(--platform "manylinux_2_${glibc}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

# PyTorch's index is an extra one, as in the Makefile. PyPI's torch 2.13.0 is the cu130 build, so that line
# resolves without PyTorch's index; the others cannot.
torch_index="https://download.pytorch.org/whl/$line"
indexes=(--index-url https://pypi.org/simple)
if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$torch_index/torch/" \
    2>/dev/null; then
    indexes+=(--extra-index-url "$torch_index")
elif [ "$line" = cu130 ]; then
    echo "resolve-check: $torch_index is unreachable from here; PyPI's torch (the same cu130 build) stands in"
else
    echo "resolve-check: $torch_index is unreachable from here, and only it has the $line build" >&2
    exit 1
fi

"${pip[@]}" --isolated install --dry-run --ignore-installed --quiet --report "$report" \
    --only-binary :all: "${platforms[@]}" --python-version "$python_version" --implementation cp \
    --target "$scratch/target" "${indexes[@]}" -c constraints.txt .

python3 - "$report" "$line" "$python_version" <<'EOF'
import json, re, sys

report, line, python_version = sys.argv[1], sys.argv[2], sys.argv[3]


def normal(name: str) -> str:
    """A project name as PEP 503 compares it (runs of -, _ and . are one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()



installed = {normal(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(open(report))["install"]}
locked = {}
for row in open("constraints.txt"):
    if "==" in row and not row.startswith("#"):
        name, version = row.strip().split("==")
        locked[normal(name)] = version
torch = installed["torch"]
cuda = sorted(f"{n}=={v}" for n, v in installed.items() if n.startswith(("nvidia-", "cuda-", "triton")))
# PyPI's plain 2.13.0 is the CUDA 13.0 build; PyTorch's index labels its builds (+cpu, +cu126, +cu130).
build = torch.partition("+")[2] or ("cu130" if any("cu13" in n for n in cuda) else "?")
off_lock = sorted(n for n, v in installed.items() if n in locked and v.partition("+")[0] != locked[n])
# pip freeze, which wrote the lock, leaves out setuptools (torch requires it) and the project itself.
unlisted = ("nvidia-", "cuda-", "triton", "setuptools", "sparse-video-llava")
beyond = sorted(n for n in installed if n not in locked and not n.startswith(unlisted))
print(f"Python {python_version}, line {line}: {len(installed)} packages resolve; torch {torch}")
print(f"  CUDA libraries ({len(cuda)}): {', '.join(cuda) or 'none'}")
print(f"  other packages not in the lock: {', '.join(beyond) or 'none'}")
if off_lock:
    sys.exit(f"resolve-check: versions other than the lock's: {', '.join(off_lock)}")
if build != line:
    sys.exit(f"resolve-check: torch {torch} is the {build} build, not {line}'s: was "
             f"https://download.pytorch.org/whl/{line} reachable?")
EOF
