"""The speed benchmark with the video-* presets' recycling replaced, to price weighted recycling's parts:

    python docs/benchmark-runs/speed_with_other_recycling.py paper \\
        speed --out speed.json --dtypes bfloat16 --threads 2 --repeats 2

``paper``: tau 0.3, theta 0.1, no weights (the presets before 2026-12-05); ``mask``: the same with weights (only the
weighted masks cost more); ``cluster``: every deleted token clustered, no weights (only the clustering costs more).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.benchmark.cli import main
from sparsevlm.config import PRESETS

RECYCLING = {
    "paper": {"recycle_ratio": 0.3, "cluster_ratio": 0.1, "weigh_merged": False},
    "mask": {"recycle_ratio": 0.3, "cluster_ratio": 0.1, "weigh_merged": True},
    "cluster": {"recycle_ratio": 1.0, "cluster_ratio": 0.03, "weigh_merged": False},
}

if __name__ == "__main__":
    for name in ("video-50", "video-25", "video-10", "video-5"):
        PRESETS[name] = {**PRESETS[name], **RECYCLING[sys.argv[1]]}
    main(sys.argv[2:])
