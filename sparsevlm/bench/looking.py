"""Where the prompt looks: per decoder layer, the share of the prompt's attention on visual tokens that goes to
the question's evidence, for the tokens each text-guided scorer reads.

A pruning step at layer ``l`` ranks the visual tokens by the attention of layer ``l``: FastV by the last prompt
token's, SparseVLM by its raters' (question tokens chosen by relevance). If that attention does not single out
the evidence at the pruning layers, no text-guided scorer can beat random there, whatever its rule. This
measures it on the synthetic questions, with the inference prompt (one question per sequence), without any
pruning (the model runs dense).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.bench.fidelity import Question
from sparsevlm.tiny.batches import SequenceBuilder, collate
from sparsevlm.tiny.looking import evidence_shares

__all__ = ["looking_profile"]


def looking_profile(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    items: list[Question],
    layers: list[int],
    batch_size: int,
) -> list[dict[str, float]]:
    """Per layer of ``layers``: ``answer`` (the last prompt token), ``prompt`` (every prompt token from the
    question's first word on) and ``chance`` evidence shares (:func:`sparsevlm.tiny.looking.evidence_shares`),
    averaged over batches weighted by their size.

    Args:
        model: a tiny Video-LLaVA (unpatched or patched with the dense configuration).
        tokenizer: its tokenizer.
        items: the questions (``sparsevlm.bench.fidelity.benchmark_questions``).
        layers: decoder layers to read.
        batch_size: questions per forward.
    """
    builder = SequenceBuilder(tokenizer)
    device = next(model.parameters()).device
    totals = np.zeros((len(layers), 3))
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        samples = [replace(item.sample, questions=(item.qa,)) for item in chunk]
        batch = collate(builder, samples, np.random.default_rng(0), per_family=1).to(device)
        with torch.no_grad():
            out = model(
                input_ids=batch.input_ids, pixel_values_videos=batch.pixel_values_videos, output_hidden_states=True
            )
            rows = evidence_shares(model.model.language_model, out.hidden_states, layers, batch)
        totals += len(chunk) * np.array([[row["answer"], row["prompt"], row["chance"]] for row in rows])
    means = totals / len(items)
    return [
        {"layer": layer, "answer": float(a), "prompt": float(p), "chance": float(c)}
        for layer, (a, p, c) in zip(layers, means, strict=True)
    ]
