"""`python -m jobs.benchmark fidelity` at a tiny size, and the fidelity library on an untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from sparsevlm.bench.fidelity import FIDELITY_METHODS, benchmark_questions, run_fidelity
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.tokenizer import build_tokenizer


@pytest.mark.slow  # 5 s here (2 cores): every method on an untrained tiny model
def test_fidelity_rows_on_an_untrained_model() -> None:
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(num_frames=8), tokenizer).eval()
    items = benchmark_questions(seed=1, count=4)
    assert len({q.sample.seed for q in items}) == 4
    report = run_fidelity(model, tokenizer, items, trained=False, budgets=(0.25,), batch_size=2)
    assert report["dense"]["accuracy"] is None
    rows = report["results"]
    assert [r["method"] for r in rows] == list(FIDELITY_METHODS) and len(rows) == 7
    for r in rows:
        assert 0.0 <= r["agreement"] <= 1.0 and r["kl"] >= -1e-6
        assert r["accuracy"] is None and r["retention"] is None and r["family_accuracy"] is None
        assert abs(r["equivalent_fraction"] - 0.25) <= 0.02
        assert 0.0 < r["prefill_flops_ratio"] < 1.0
        assert r["evidence_recall"] is None or 0.0 <= r["evidence_recall"] <= 1.0


@pytest.mark.slow  # 7 s here (2 cores): the fidelity command end to end
def test_fidelity_command_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = tmp_path / "fidelity.json", tmp_path / "fidelity.png"
    main(
        ["fidelity", "--samples", "2", "--budgets", "0.1", "--schedule", "1:20", "--out", str(out), "--plot", str(plot)]
    )
    report = json.loads(out.read_text())
    assert {"model", "dense", "results"} <= set(report)
    rows = report["results"]
    assert [r["budget"] for r in rows[:7]] == [0.1] * 7  # every method at the one budget
    assert [(r["method"], r["budget"], r["schedule"]) for r in rows[7:]] == [
        ("sparsevlm", None, "1:20"),
        ("sparsevlm-text", None, "1:20"),
        ("fastv", None, "1:20"),
        ("random", None, "1:20"),
    ]
    assert rows[9]["equivalent_tokens"] == (520 + 3 * 20) / 4  # 8 frames x 65 tokens, 4 layers, kept after 1
    for r in rows if report["trained"] else []:  # accuracy per family, averaging to the whole
        families = [q.qa.family for q in benchmark_questions(seed=0, count=2)]
        assert set(r["family_accuracy"]) == set(families)
        mean = sum(r["family_accuracy"][f] for f in families) / len(families)
        assert abs(mean - r["accuracy"]) < 1e-9
    assert plot.stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


def test_a_bad_schedule_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fidelity", "--schedule", "0,1:52", "--out", "unused.json"])
    assert exit_info.value.code == 2
    assert "'0,1:52' has 2 layers but 1 keep counts" in capsys.readouterr().err


@pytest.mark.slow  # 29 s here (2 cores): fidelity on the hard split, two seeds, presets and withdrawal
def test_presets_withdrawal_and_seeds_on_the_hard_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    easy, out, alone, plot = (tmp_path / name for name in ("easy.json", "hard.json", "seed4.json", "both.png"))
    main(["fidelity", "--samples", "2", "--methods", "random", "--budgets", "0.1", "--out", str(easy)])
    common = ["--samples", "5", "--methods", "random", "--budgets", "--presets", "video-10", "--withdraw", "0,2"]
    main(["fidelity", "--split", "hard", "--seeds", "3,4", *common, "--out", str(out)])
    main(["fidelity", "--split", "hard", "--seed", "4", *common, "--out", str(alone)])
    main(["fidelity", "--split", "hard", "--seed", "3", *common, "--out", str(tmp_path / "3.json")])
    main(
        [
            "fidelity",
            "--samples",
            "2",
            "--budgets",
            "0.1",
            "--out",
            str(easy),
            "--plot",
            str(plot),
            "--plot-with",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["split"] == "hard" and report["seeds"] == [3, 4] and len(report["per_seed"]) == 2
    rows = report["results"]
    assert [(r["preset"], r["method"]) for r in rows] == [
        ("video-10", "sparsevlm"),
        ("video-10", "fastv"),
        ("video-10", "random"),
        (None, "withdraw-after-0"),
        (None, "withdraw-after-2"),
    ]
    tokens = [r["equivalent_tokens"] for r in rows[:3]]
    assert max(tokens) - min(tokens) <= 0.02 * 520  # the baselines at the preset's own budget
    assert rows[3]["equivalent_tokens"] == pytest.approx(1.0)  # 4-layer model: one token after layer 0
    seed4 = json.loads(alone.read_text())["results"]
    assert [r["agreement"] for r in seed4] == [r["agreement"] for r in report["per_seed"][1]["results"]]
    for k, row in enumerate(rows):  # the mean over seeds of each seed's own row, and its spread
        if row["accuracy"] is not None:
            per_seed = [r["results"][k]["accuracy"] for r in report["per_seed"]]
            assert row["accuracy"] == pytest.approx(sum(per_seed) / 2)
            assert row["seed_spread"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)
            assert set(row["family_accuracy"]) <= {"direction_of", "order", "count_of", "striped", "binding"}
    bounds = report["chance_bounds"]
    assert 0.0 < bounds["all"]["random_0.1"] <= 1.0 and bounds["all"]["random_0.05"] <= bounds["all"]["random_0.25"]
    assert plot.stat().st_size > 1000
    assert "by construction" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"), [(["--seeds", "3,x"], "comma-separated"), (["--split", "medium"], "invalid choice")]
)
def test_bad_fidelity_flags_exit_2(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fidelity", *flags, "--out", "unused.json"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
