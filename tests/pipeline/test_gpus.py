"""The jobs' default of --num-gpus-per-worker: one GPU per model actor when the Ray cluster has GPUs, else the CPU,
and one warning line when a real checkpoint would run on the CPU."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from jobs.caption import build_parser
from pipeline.config import PipelineConfig
from pipeline.harness.standin import StandInCost
from pipeline.run import resolve_gpus
from sparsevlm.tiny import CHECKPOINT_DIR


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint folder that is not one of the bundled tiny models (stands for the 7B)."""
    folder = tmp_path_factory.mktemp("model") / "video-llava"
    shutil.copytree(CHECKPOINT_DIR, folder)
    return str(folder)


def config(model: str, gpus: float | None, **changes: object) -> PipelineConfig:
    return PipelineConfig(input_uri="/in", output_uri="/out", model=model, num_gpus_per_worker=gpus, **changes)  # type: ignore[arg-type]


def test_the_jobs_leave_the_choice_to_the_cluster() -> None:
    ns = build_parser().parse_args(["--input", "/in", "--output", "/out"])
    assert ns.num_gpus_per_worker is None


def test_a_cluster_with_gpus_gives_each_actor_one(real_model: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.run"):
        resolved = resolve_gpus(config(real_model, None), cluster_gpus=4.0)
    assert resolved.num_gpus_per_worker == 1.0 and resolved.device == "cuda"
    assert "4 GPUs: 1 per model actor" in caplog.text and "on the CPU" not in caplog.text


def test_without_gpus_a_real_checkpoint_runs_on_the_cpu_with_a_warning(
    real_model: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        resolved = resolve_gpus(config(real_model, None), cluster_gpus=0.0)
    assert resolved.num_gpus_per_worker == 0.0 and resolved.device == "cpu"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and f"run {real_model} on the CPU" in record.getMessage()
    assert "pass --num-gpus-per-worker 1" in record.getMessage()


def test_an_explicit_count_stays_and_zero_still_warns(real_model: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        assert resolve_gpus(config(real_model, 0.5), cluster_gpus=8.0).num_gpus_per_worker == 0.5
        assert not caplog.records
        assert resolve_gpus(config(real_model, 0.0), cluster_gpus=8.0).num_gpus_per_worker == 0.0
    assert "(8 GPUs in the Ray cluster, --num-gpus-per-worker 0)" in caplog.text


def test_the_tiny_model_and_stand_ins_run_without_a_gpu_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        assert resolve_gpus(config(str(CHECKPOINT_DIR), None), cluster_gpus=0.0).num_gpus_per_worker == 0.0
        stand_in = config(str(CHECKPOINT_DIR), None, stand_in=StandInCost(ms_per_segment=10.0))
        assert resolve_gpus(stand_in, cluster_gpus=2.0).num_gpus_per_worker == 0.0  # a stand-in takes no GPU
    assert not caplog.records


def test_a_negative_count_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"num_gpus_per_worker must be >= 0 or None \(Ray decides\), got -1"):
        config(str(Path(CHECKPOINT_DIR)), -1)
