"""A byte-level BPE tokenizer for the tiny Video-LLaVA, trained in code (no download).

Every answer word of the synthetic task is a single token when it follows a space (``" red"``), because
benchmarks compare the distribution of the first answer token between dense and pruned models.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sparsevlm.tiny.video_qa import ANSWER_WORDS, make_sample

SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>")
VOCAB_SIZE = 512


def _corpus(num_samples: int = 300) -> list[str]:
    """Training text: the prompt frame, every question template and caption, and the answer words."""
    lines = ["USER: <video>\n ASSISTANT:", "USER: <image>\n ASSISTANT:"]
    for index in range(num_samples):
        sample = make_sample("train", index)
        lines.append(sample.caption)
        lines.extend(f"USER: <video>\n{qa.question} ASSISTANT: {qa.answer}</s>" for qa in sample.questions)
    # Repeat the answers so BPE merges each " word" into one token whatever their frequency above.
    lines.extend(" ".join(ANSWER_WORDS) for _ in range(50))
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the tokenizer and wrap it for transformers.

    The wrapped tokenizer prepends ``<s>`` and exposes ``video_token`` / ``video_token_id`` (and the image
    equivalents), which Video-LLaVA code reads.

    Returns:
        The tokenizer; ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it offline.

    Raises:
        RuntimeError: if an answer word did not become a single token.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    split = [w for w in ANSWER_WORDS if len(wrapped.encode(f" {w}", add_special_tokens=False)) != 1]
    if split:
        raise RuntimeError(f"answer words {split} are not single tokens; raise VOCAB_SIZE ({VOCAB_SIZE})")
    return wrapped


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token string (``convert_tokens_to_ids`` typed for a single token)."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise TypeError(f"expected one id for {token!r}, got {found!r}")
    return found


def answer_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The token id of ``" word"`` for every answer word."""
    return {w: tokenizer.encode(f" {w}", add_special_tokens=False)[0] for w in ANSWER_WORDS}
