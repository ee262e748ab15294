"""`python -m jobs.benchmark looking`: where the prompt's attention on the video goes, per layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from sparsevlm.bench.fidelity import benchmark_questions


def test_looking_reports_each_layers_evidence_shares_with_the_even_spread_as_chance(tmp_path: Path) -> None:
    out = tmp_path / "looking.json"
    main(
        ["looking", "--model", "tiny-deep", "--samples", "4", "--layers", "1,6", "--batch-size", "2", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert [row["layer"] for row in report["rows"]] == [1, 6]
    items = benchmark_questions(0, 4, question_split="hard")
    with_evidence = [len(item.evidence) / 520 for item in items if len(item.evidence)]  # 8 frames x 65 tokens
    for row in report["rows"]:
        assert row["chance"] == pytest.approx(sum(with_evidence) / len(with_evidence), rel=1e-5)
        assert 0.0 <= row["prompt"] <= 1.0 and 0.0 <= row["answer"] <= 1.0
    # Layer 1 is one the committed model's looking loss trained: its answer position looks at the evidence.
    assert report["rows"][0]["answer"] > 0.9


def test_looking_names_a_layer_past_the_model(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="past the model's last decoder layer"):
        main(["looking", "--model", "tiny-deep", "--samples", "2", "--layers", "40", "--out", str(tmp_path / "x")])
