"""`python -m jobs.benchmark fidelity` at a tiny size, and the fidelity library on an untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark import main
from sparsevlm.bench.fidelity import benchmark_questions, run_fidelity
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import build_tokenizer


def test_fidelity_rows_on_an_untrained_model() -> None:
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(num_frames=8), tokenizer).eval()
    items = benchmark_questions(seed=1, count=4)
    assert len({q.sample.seed for q in items}) == 4
    report = run_fidelity(model, tokenizer, items, trained=False, budgets=(0.25,), batch_size=2)
    assert report["dense"]["accuracy"] is None
    rows = report["results"]
    assert [r["method"] for r in rows] == ["sparsevlm", "sparsevlm-xf", "fastv", "random", "pool"]
    for r in rows:
        assert 0.0 <= r["agreement"] <= 1.0 and r["kl"] >= -1e-6
        assert r["accuracy"] is None and r["retention"] is None
        assert abs(r["equivalent_fraction"] - 0.25) <= 0.02
        assert 0.0 < r["prefill_flops_ratio"] < 1.0
        assert r["evidence_recall"] is None or 0.0 <= r["evidence_recall"] <= 1.0


def test_fidelity_command_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = tmp_path / "fidelity.json", tmp_path / "fidelity.png"
    main(["fidelity", "--samples", "2", "--budgets", "0.1", "--out", str(out), "--plot", str(plot)])
    report = json.loads(out.read_text())
    assert {"model", "dense", "results"} <= set(report)
    assert len(report["results"]) == 5  # every method at the one budget
    assert plot.stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
