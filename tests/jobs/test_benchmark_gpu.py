"""`python -m jobs.benchmark gpu --tiny` on CPU (proves the command; measures nothing meaningful)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.benchmark.cli import main
from sparsevlm.bench.gpu import (
    GPU_PRESETS,
    TEXT_LENGTHS,
    GpuBenchSetup,
    build_model,
    count_decode_syncs,
    make_inputs,
    run_gpu_benchmark,
)
from sparsevlm.bench.layout import PAD_TOKEN, Widths


@pytest.mark.slow  # about 15-35 s: 12 generate calls on 2,096-token prompts
def test_gpu_command_tiny(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    main(["gpu", "--tiny", "--new-tokens", "3", "--repeats", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["device_name"] == "cpu" and report["setup"]["dtype"] == "float32"
    assert report["setup"]["repeats"] == 2 and report["decode_syncs"] == []  # the sync count is CUDA's own
    assert report["versions"]["transformers"] == "5.23.0" and report["versions"]["torch"].startswith("2.")
    assert set(report["versions"]) == {"python", "torch", "cuda", "cudnn", "driver", "transformers"}
    rows = {(r["preset"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(p, b) for p in GPU_PRESETS for b in (1, 2)}
    for (preset, batch), row in rows.items():
        assert row["visual_tokens_in"] == 2056 and row["new_tokens"] == 3
        assert len(row["ttft_s_runs"]) == 2 and min(row["ttft_s_runs"]) <= row["ttft_s"] <= max(row["ttft_s_runs"])
        assert row["ttft_spread"] >= 0 and row["tokens_per_row"] == [5 + 2056 + n for n in TEXT_LENGTHS[:batch]]
        assert row["vision_tower_s"] + row["llm_prefill_s"] == pytest.approx(row["ttft_s"])
        assert 0 < row["vision_tower_s"] < row["ttft_s"] and row["decode_tokens_per_s"] > 0
        assert row["peak_memory_bytes"] is None  # CUDA only
        dense = rows[("dense", batch)]
        assert row["kv_cache_bytes"] == pytest.approx(dense["kv_cache_bytes"] * row["kv_ratio"])
        if preset != "dense":
            assert row["kv_ratio"] < 1 and row["equivalent_tokens"] < 2056
    assert rows[("dense", 2)]["kv_cache_bytes"] == 2 * rows[("dense", 1)]["kv_cache_bytes"]
    assert rows[("video-25", 1)]["equivalent_tokens"] == pytest.approx(0.25 * 2056, rel=0.02)


def test_the_full_setup_is_the_7b_layout_in_bf16_at_batch_1_8_32() -> None:
    setup = GpuBenchSetup()
    assert setup.widths == Widths(hidden=4096, layers=32, heads=32, ffn=11008, vision_hidden=1024, vision_layers=24)
    assert setup.batches == (1, 8, 32) and setup.device == "cuda" and str(setup.dtype) == "torch.bfloat16"
    assert setup.presets == ("dense", "video-50", "video-25", "video-10", "video-5", "video-xf-25")


def test_the_model_is_built_in_the_target_dtype() -> None:
    import torch

    setup = GpuBenchSetup.tiny()
    model = build_model(GpuBenchSetup(widths=setup.widths, device="cpu", dtype=torch.bfloat16))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored


def test_rows_are_left_padded_to_unequal_lengths() -> None:
    inputs = make_inputs(GpuBenchSetup.tiny(), 3)
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert lengths == [5 + 2056 + n for n in TEXT_LENGTHS[:3]] and len(set(lengths)) == 3
    width = inputs["input_ids"].shape[1]
    for row, length in enumerate(lengths):  # the padding is on the left, the prompt ends every row
        assert (
            inputs["attention_mask"][row, width - length :].all()
            and not inputs["attention_mask"][row, : width - length].any()
        )
        assert (inputs["input_ids"][row, : width - length] == PAD_TOKEN).all()
        assert inputs["input_ids"][row, width - length] == 1  # <s>


def test_the_setup_refuses_what_it_cannot_measure() -> None:
    with pytest.raises(ValueError, match="start with 'dense'"):
        GpuBenchSetup(presets=("video-25",))
    with pytest.raises(ValueError, match="repeats >= 1"):
        GpuBenchSetup(repeats=0)
    with pytest.raises(ValueError, match="needs a CUDA device, got 'cpu'"):
        count_decode_syncs(None, GpuBenchSetup.tiny(), "dense", 1)


@pytest.mark.slow  # 5 s here (2 cores): the GPU benchmark at its tiny size on CPU
def test_the_report_so_far_is_handed_over_after_every_row() -> None:
    import dataclasses

    setup = dataclasses.replace(GpuBenchSetup.tiny(), batches=(1,), presets=("dense", "video-25"), new_tokens=2)
    seen: list[list[str]] = []
    report = run_gpu_benchmark(
        dataclasses.replace(setup, repeats=1), progress=lambda r: seen.append([x["preset"] for x in r["results"]])
    )
    assert seen == [["dense"], ["dense", "video-25"]]
    assert [r["preset"] for r in report["results"]] == ["dense", "video-25"]
