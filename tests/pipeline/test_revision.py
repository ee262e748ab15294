"""The model's identity beyond its name: in the config key and in every row (``model_revision``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.commit.ledger import Ledger
from pipeline.commit.revision import model_revision
from pipeline.config import UNRESOLVED, PipelineConfig
from pipeline.stages.decode import decode_rows, source_row
from pipeline.stages.predictor import Predictor
from pipeline.stages.sources import list_sources
from sparsevlm.engine import VideoQAEngine

CLIP = "gradio_video_sample.webm"


@pytest.fixture
def checkpoint(pipeline_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint that a test may change."""
    return Path(shutil.copytree(pipeline_model_dir, tmp_path / "checkpoint"))


def config_for(model: Path | str, tmp_path: Path) -> PipelineConfig:
    return PipelineConfig(
        input_uri=str(tmp_path / "in"),
        output_uri=str(tmp_path / "out"),
        model=str(model),
        segment_seconds=None,
        frames_per_segment=1,
        max_new_tokens=2,
    ).resolved()


def test_a_local_checkpoint_is_named_by_its_content(checkpoint: Path, tmp_path: Path) -> None:
    first = model_revision(str(checkpoint))
    assert first is not None and first.startswith("sha256:") and len(first) == 7 + 32
    assert model_revision(str(shutil.copytree(checkpoint, tmp_path / "copy"))) == first  # same content, same id
    before = config_for(checkpoint, tmp_path)
    assert before.model_revision == first and before.replace(workers=2).model_revision == first

    original = (checkpoint / "config.json").read_bytes()
    (checkpoint / "config.json").write_text(json.dumps({**json.loads(original), "note": "retrained"}))
    assert model_revision(str(checkpoint)) not in (None, first)
    (checkpoint / "config.json").write_bytes(original)
    assert model_revision(str(checkpoint)) == first

    (weights,) = checkpoint.glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one value of the last tensor: retrained weights of the same shapes and sizes
    weights.write_bytes(bytes(data))
    after = config_for(checkpoint, tmp_path)
    assert after.model_revision not in (None, first)
    assert after.config_key() != before.config_key() and after.model == before.model
    assert before.replace(dtype="bfloat16").config_key() != before.config_key()  # other numbers, other rows


def test_a_hub_id_is_named_by_its_cached_commit(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--org--video-model"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert model_revision("org/video-model", cache_dir=cache) == "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)  # the branch moved upstream and was fetched
    assert model_revision("org/video-model", cache_dir=cache) == "b" * 40
    assert model_revision("org/not-cached", cache_dir=cache) is None
    assert model_revision("no-such-dir") is None and model_revision("/no/such/dir") is None


def test_rows_carry_the_revision_and_a_changed_checkpoint_is_processed_again(
    checkpoint: Path, assets: Path, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(assets / CLIP, tmp_path / "in" / CLIP)
    config = config_for(checkpoint, tmp_path)
    (source,) = list_sources(config.input_uri)
    item = source_row(source, config.config_key(), config.questions)
    rows = Predictor(config.model_settings, config.answering, VideoQAEngine.from_pretrained(checkpoint))(
        pa.Table.from_pylist(list(decode_rows(item, config.decoding, 224)))
    )
    assert set(rows.column("model_revision").to_pylist()) == {config.model_revision}
    ledger = Ledger(*config.output.filesystem())
    ledger.write_rows(rows, config.run_id)
    assert ledger.pending([source_row(source, config.config_key(), config.questions)["ledger_key"]]) == []

    settings = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**settings, "note": "a new version, same name"}))
    changed = config_for(checkpoint, tmp_path)
    key = source_row(source, changed.config_key(), changed.questions)["ledger_key"]
    assert ledger.pending([key]) == [key]  # the new model's rows are not there yet


def test_making_a_config_reads_nothing_and_its_key_waits_for_the_driver(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.config

    def no_read(*args: object, **kwargs: object) -> str:
        raise AssertionError("the checkpoint was read while a config was made")

    monkeypatch.setattr(pipeline.config, "model_revision", no_read)
    made = PipelineConfig(input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"), model=str(checkpoint))
    assert made.model_revision == UNRESOLVED and made.replace(workers=2).model_revision == UNRESOLVED
    with pytest.raises(ValueError, match=r"call config.resolved\(\) first"):
        made.config_key()
    with pytest.raises(ValueError, match=r"call config.resolved\(\) first"):
        _ = made.model_settings
    monkeypatch.undo()
    resolved = made.resolved()
    assert resolved.model_revision == model_revision(str(checkpoint)) is not None
    assert resolved.replace(workers=2).model_revision == resolved.model_revision  # the same model: kept
    assert resolved.replace(model=str(tmp_path)).model_revision == UNRESOLVED  # another model: read it again
    assert resolved.model_settings.revision == resolved.model_revision
