"""apply_patch / remove_patch: exact dense behaviour, per-instance scope, version and input checks."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import build_inputs, build_model, row_inputs

import sparsevlm.patch
from sparsevlm import SparseConfig, apply_patch, is_patched, last_stats, remove_patch


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_dense_preset_matches_unpatched_and_remove_restores(attn: str) -> None:
    model = build_model(attn)
    inputs = build_inputs(model, [5, 9])
    with torch.no_grad():
        reference = model(**inputs).logits
        apply_patch(model, SparseConfig.preset("dense"))
        dense = model(**inputs).logits
        stats = last_stats(model)
        apply_patch(model, "video-10")
        sparse = model(**inputs).logits
        remove_patch(model)
        restored = model(**inputs).logits
    assert (dense - reference).abs().max() <= 1e-5
    assert torch.equal(restored, reference)
    assert sparse.shape[1] < reference.shape[1]  # the sparse run really pruned
    assert [s.visual_tokens_in for s in stats] == [136, 136]
    assert all(s.prefill_flops == s.dense_prefill_flops for s in stats)
    assert not is_patched(model)
    assert type(model) is transformers.VideoLlavaForConditionalGeneration
    assert type(model.model.language_model) is transformers.LlamaModel


def test_patch_is_per_instance() -> None:
    patched, other = build_model(seed=0), build_model(seed=0)
    inputs = build_inputs(other, [4])
    with torch.no_grad():
        before = other(**inputs).logits
        apply_patch(patched, "video-25")
        after = other(**inputs).logits
        pruned = patched(**inputs).logits
    assert torch.equal(before, after)
    assert not is_patched(other)
    assert pruned.shape[1] < before.shape[1]


def test_refuses_other_transformers_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparsevlm.patch, "installed_transformers_version", lambda: "9.9.9")
    with pytest.raises(RuntimeError, match=r"transformers==5\.23\.0.*found transformers==9\.9\.9"):
        apply_patch(build_model(), "video-25")


def test_refuses_unsupported_inputs() -> None:
    with pytest.raises(TypeError, match="VideoLlavaForConditionalGeneration"):
        apply_patch(torch.nn.Linear(2, 2), "video-25")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        apply_patch(build_model(), "nope")
    with pytest.raises(ValueError, match="last_stats needs a patched model"):
        last_stats(build_model())


def test_save_pretrained_writes_the_original_class(tmp_path: object) -> None:
    model = apply_patch(build_model(), "video-25")
    model.save_pretrained(str(tmp_path))
    loaded = transformers.VideoLlavaForConditionalGeneration.from_pretrained(str(tmp_path))
    assert loaded.config.architectures == ["VideoLlavaForConditionalGeneration"]
    assert is_patched(model)


@pytest.mark.parametrize("chunk", [0, 2])
def test_a_video_shared_by_rows_is_encoded_once_and_each_row_answers_as_alone(chunk: int) -> None:
    model = build_model(layers=4)
    apply_patch(model, SparseConfig.preset("video-25").replace(vision_chunk_frames=chunk))
    inputs = build_inputs(model, [6, 9, 7], frames=4)
    inputs["pixel_values_videos"][2] = inputs["pixel_values_videos"][0]  # a caption and a question of one video
    encoded: list[int] = []

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        encoded.append((args[0] if args else kwargs["pixel_values"]).shape[0])

    hook = model.model.video_tower.register_forward_pre_hook(count, with_kwargs=True)
    with torch.no_grad():
        batch = model(**inputs).logits[:, -1]
        assert sum(encoded) == 2 * 4  # two distinct videos of 4 frames, not three
        for row in range(3):
            alone = model(**row_inputs(inputs, row)).logits[0, -1]
            assert torch.allclose(alone, batch[row], atol=1e-5)
    hook.remove()
