"""The config key: what it hashes, and that segmenting by shots changes it only for runs that use shots."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.config import PipelineConfig
from pipeline.stages.shots import ShotSegmenting
from sparsevlm.config import SparseConfig


def config(tmp_path: Path, **changes: object) -> PipelineConfig:
    made = PipelineConfig(str(tmp_path / "in"), str(tmp_path / "out"), "bundled:tiny-synthetic", **changes)  # type: ignore[arg-type]
    return made.resolved()


def key_before_shots(c: PipelineConfig) -> str:
    """The config key as it was computed before segmenting by shots existed, written out again."""
    material: dict[str, object] = {
        "model_revision": c.model_revision,
        "dtype": c.dtype,
        "sparse": c.sparse.to_json(),
        "segment_seconds": c.segment_seconds,
        "frames_per_segment": c.frames_per_segment,
        "max_new_tokens": c.max_new_tokens,
        "caption_prompt": c.caption_prompt,
        "questions": list(c.questions),
        "schema": "3",  # the result schema then; version 4 (the summary task) changed no key
    }
    if c.repeat_stop:
        material["repeat_stop"] = c.repeat_stop
    return hashlib.sha1(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"questions": ("what?",), "segment_seconds": 5.0, "frames_per_segment": 4},
        {"segment_seconds": None, "repeat_stop": 3, "sparse": SparseConfig.preset("video-10")},
    ],
)
def test_fixed_segments_keep_the_key_they_had_before_shots(tmp_path: Path, changes: dict[str, object]) -> None:
    fixed = config(tmp_path, **changes)
    assert fixed.segment_by == "fixed" and fixed.shots is None
    assert fixed.config_key() == key_before_shots(fixed)  # outputs of earlier runs are not reprocessed


def test_shots_key_their_mode_and_every_parameter(tmp_path: Path) -> None:
    fixed = config(tmp_path)
    shots = fixed.replace(shots=ShotSegmenting())
    assert shots.segment_by == "shots" and shots.config_key() != fixed.config_key()
    variants = [
        dataclasses.replace(ShotSegmenting(), **{f.name: getattr(ShotSegmenting(), f.name) * 1.5})
        for f in dataclasses.fields(ShotSegmenting)
    ]
    keys = {shots.replace(shots=v).config_key() for v in variants}
    assert len(keys) == len(variants) and shots.config_key() not in keys
    # segment_seconds does nothing under shots, so it does not reprocess them either
    assert shots.replace(segment_seconds=5.0).config_key() == shots.config_key()


def test_a_config_refuses_shots_of_another_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shots must be a pipeline\.stages\.shots\.ShotSegmenting or None"):
        config(tmp_path, shots={"threshold": 30})


def test_the_shadow_sample_keeps_the_key_and_takes_fractions_in_0_1(tmp_path: Path) -> None:
    base = config(tmp_path)
    for fraction in (0.0, 0.02, 1.0):  # the sample changes no result row, so it reprocesses nothing
        shadowed = config(tmp_path, shadow_fraction=fraction)
        assert shadowed.config_key() == base.config_key() == key_before_shots(shadowed)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"shadow_fraction must be a number in \[0, 1\]"):
            config(tmp_path, shadow_fraction=bad)
