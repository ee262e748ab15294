"""Grow a trained tiny Video-LLaVA in depth without changing what it computes.

    python -m jobs.grow_tiny --layers 16 --out /work/deep_train/grown16   # from the bundled checkpoint

The deeper model has the same class and widths; its LLM gets new LLaMA decoder layers whose output
projections (``self_attn.o_proj`` and ``mlp.down_proj``) are zero. A LLaMA layer adds its attention and MLP
outputs to the residual stream, so a layer with both projections at zero is the identity, and the grown
model's logits equal the original's. The new layers' other weights are random (the model's own
initialisation), so their gradients are not zero and training can use them at once.

The old layers stay first by default (old layer ``i`` at depth ``i``): the trained text-to-video lookup
then stays in the first layers, where the early pruning of SparseVLM and FastV reads the prompt's attention
(a real 32-layer Video-LLaVA prunes after layer 2, when its prompt has read the video), and the trainer's
``--motion-layer 2`` heads still read the hidden states they were trained on. Spreading the old layers out
(``old_positions``) would put untrained identities where the pruning happens.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, VideoLlavaForConditionalGeneration

from sparsevlm.tiny.saving import init_provenance


def grow_depth(
    model: VideoLlavaForConditionalGeneration, num_layers: int, old_positions: Sequence[int] | None = None
) -> VideoLlavaForConditionalGeneration:
    """A copy of ``model`` whose LLM has ``num_layers`` decoder layers and computes the same logits.

    Args:
        model: a Video-LLaVA with a LLaMA language model (left unchanged).
        num_layers: depth of the grown LLM; at least the current depth.
        old_positions: the depth of each old layer in the grown LLM, strictly increasing; None keeps them
            first (``0 .. old - 1``).

    Returns:
        The grown model in eval mode, sdpa attention; every weight outside the new layers is a copy of
        ``model``'s.

    Raises:
        ValueError: when ``num_layers`` is smaller than the current depth or ``old_positions`` is not a
            strictly increasing list of one position per old layer inside ``[0, num_layers)``.
    """
    old_layers = model.model.language_model.layers
    old = len(old_layers)
    if num_layers < old:
        raise ValueError(f"num_layers {num_layers} is below the model's {old} layers; growing only adds layers")
    positions = list(range(old)) if old_positions is None else [int(p) for p in old_positions]
    increasing = all(a < b for a, b in itertools.pairwise(positions))
    if len(positions) != old or not increasing or positions[0] < 0 or positions[-1] >= num_layers:
        raise ValueError(f"old_positions {positions} must give {old} strictly increasing depths in [0, {num_layers})")
    config = copy.deepcopy(model.config)
    if not isinstance(config.text_config, LlamaConfig):
        raise TypeError(f"expected a LLaMA language model, got {type(config.text_config).__name__}")
    config.text_config.num_hidden_layers = num_layers
    grown = VideoLlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    grown.generation_config = copy.deepcopy(model.generation_config)
    new_layers = grown.model.language_model.layers
    state = {k: v for k, v in model.state_dict().items() if ".language_model.layers." not in k}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    if unexpected or any(".language_model.layers." not in k for k in missing):
        raise RuntimeError(f"grown model does not match the original: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for source, target in zip(old_layers, (new_layers[p] for p in positions), strict=True):
            target.load_state_dict(source.state_dict())
        for depth, layer in enumerate(new_layers):
            if depth not in positions:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    grown.tie_weights()
    return grown.eval()


def grow_checkpoint(source: Path, layers: int, out: Path, command: str) -> dict[str, object]:
    """Grow the checkpoint in ``source`` to ``layers`` LLM layers and save it (with its tokenizer and a
    metrics.json whose provenance chain the trainer reads) in ``out``.

    Args:
        source: a saved checkpoint directory.
        layers: LLM depth of the grown model.
        out: directory for the grown checkpoint (created).
        command: the command line that asked for it, kept in metrics.json.

    Returns:
        The metrics written.

    Raises:
        FileNotFoundError: ``source`` holds no config.json.
    """
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a saved checkpoint directory (no config.json in it)")
    model = VideoLlavaForConditionalGeneration.from_pretrained(str(source), trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    grown = grow_depth(model, layers)
    out.mkdir(parents=True, exist_ok=True)
    grown.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The trainer's provenance chain (saving.init_provenance) reads these fields: a run continuing from the
    # grown checkpoint then lists every run that made the 4-layer one, then this step.
    metrics: dict[str, object] = {
        "command": command,
        "steps": 0,
        "train_videos_seen": 0,
        "wall_time_s": 0.0,
        "grown_from": {"source": str(source), "layers": len(model.model.language_model.layers)},
        "num_parameters": sum(p.numel() for p in grown.parameters()),
        "init_from": init_provenance(source),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
