"""A stand-in for the ``LanguageBind/Video-LLaVA-7B-hf`` checkpoint, written to a folder without a download.

What is real: every ``config.json`` value that decides the data flow (image / video / pad tokens 32000 /
32001 / 32002, vocabulary 32,064, CLIP patch 14 at 224 px, feature layer -2, select strategy ``"default"``,
``max_position_embeddings`` 4096, 32 LLaMA layers), the hub's file layout (bf16 weights in three safetensors
shards plus ``model.safetensors.index.json``, under the legacy key names ``language_model.model.*``,
``language_model.lm_head.*``, ``video_tower.*``, ``image_tower.*``, ``multi_modal_projector.*``) and the
tokenizer's kind (``LlamaTokenizer``: BPE with byte fallback over the real LLaMA ids, the hub's
``tokenizer.json`` layout, ``<image>`` / ``<video>`` / ``<pad>`` as special tokens). What is not: the widths
(text hidden 64 with 2 heads, a 2-layer vision tower of width 32), the weights (random) and the vocabulary,
which holds only the real tokens that the prompts of the tests need (``tests/assets/llama_vocab_subset.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import VideoLlavaForConditionalGeneration

from sparsevlm.bench.layout import IMAGE_TOKEN, PAD_TOKEN, VIDEO_TOKEN, Widths, video_llava_7b_config

VOCAB_ASSET = Path(__file__).parent / "assets" / "llama_vocab_subset.json"
WIDTHS = Widths(
    hidden=64, layers=32, heads=2, ffn=128, vision_hidden=32, vision_layers=3, vision_heads=2, vision_ffn=64
)
SHARDS = 3
# transformers 5.23 names -> the hub checkpoint's names (the inverse of its key mapping for video_llava)
_LEGACY_PREFIXES = (
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.video_tower.", "video_tower."),
    ("model.image_tower.", "image_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def legacy_name(name: str) -> str:
    """The hub checkpoint's key for one of today's parameter names."""
    for today, legacy in _LEGACY_PREFIXES:
        if name.startswith(today):
            return legacy + name[len(today) :]
    raise ValueError(f"no legacy name for parameter {name!r}")


def build_standin(folder: Path, *, legacy_tokenizer: bool | None = False, seed: int = 0) -> Path:
    """Write the stand-in checkpoint into ``folder`` (created) and return it.

    Args:
        folder: the checkpoint directory.
        legacy_tokenizer: the ``legacy`` flag written to ``tokenizer_config.json`` (None: left out).
        seed: seeds the random weights.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = video_llava_7b_config(WIDTHS)
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).eval()
    _write_sharded(model, folder)
    config.dtype = torch.bfloat16  # the hub's config says the weights are bf16, as they are here
    config.save_pretrained(folder)
    write_tokenizer(folder, legacy_tokenizer)
    return folder


def _write_sharded(model: VideoLlavaForConditionalGeneration, folder: Path) -> None:
    tensors = {legacy_name(k): v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    names = sorted(tensors)
    per_shard = -(-len(names) // SHARDS)
    weight_map: dict[str, str] = {}
    total = 0
    for index in range(SHARDS):
        file = f"model-{index + 1:05d}-of-{SHARDS:05d}.safetensors"
        chunk = {n: tensors[n] for n in names[index * per_shard : (index + 1) * per_shard]}
        save_file(chunk, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, file))
        total += sum(t.numel() * t.element_size() for t in chunk.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def write_tokenizer(folder: Path, legacy: bool | None = False) -> None:
    """``tokenizer.json`` in the layout of the hub's LLaMA conversions, ``tokenizer_config.json`` as on the hub."""
    asset = json.loads(VOCAB_ASSET.read_text())
    vocab: dict[str, int] = dict(asset["vocab"])
    specials = {"<image>": IMAGE_TOKEN, "<video>": VIDEO_TOKEN, "<pad>": PAD_TOKEN}
    vocab.update(specials)
    merges = [tuple(m.split(" ")) for m in asset["merges"]]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>", *specials)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in {"<unk>": 0, "<s>": 1, "</s>": 2, **specials}.items()
    }
    settings: dict[str, object] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "VideoLlavaProcessor",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    if legacy is not None:
        settings["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
