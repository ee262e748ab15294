"""apply_patch / remove_patch: exact dense behaviour, per-instance scope, version and input checks."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import build_inputs, build_model

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
