"""Video-LLaVA's single-turn prompt as text: its constants and :func:`build_prompt`, without a tokenizer.

The pipeline's config (the default caption instruction) and its stand-in engine (which refuses the same
placeholders as the real one) need only this, and every Ray worker imports them, decoders included; the token
ids and the positions, which need torch and a tokenizer, are in :mod:`sparsevlm.prompt`.
"""

from __future__ import annotations

__all__ = [
    "CAPTION_PROMPT",
    "PLACEHOLDERS",
    "PROMPT_HEAD",
    "SUMMARY_PROMPT",
    "VIDEO_PLACEHOLDER",
    "build_prompt",
    "prompt_tail",
    "text_prompt",
]

CAPTION_PROMPT = "Describe the video."
# The pipeline's ``summary`` task (pipeline/stages/summary.py): the instruction after a video's segment captions.
SUMMARY_PROMPT = "Summarize the whole video in a few sentences."
VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDERS = ("<video>", "<image>")  # a question holding one would ask for features nobody passes
PROMPT_HEAD = "USER: "


def prompt_tail(question: str) -> str:
    """The text after the video tokens: ``"\\n{question} ASSISTANT:"``."""
    return f"\n{question} ASSISTANT:"


def build_prompt(question: str, num_video_tokens: int) -> str:
    """The prompt as text, ``"USER: <video>\\n{question} ASSISTANT:"`` with ``<video>`` repeated.

    This is what ``VideoLlavaProcessor`` builds; the engine sends the ids of
    :func:`sparsevlm.prompt.encode_text` instead.
    """
    return f"{PROMPT_HEAD}{VIDEO_PLACEHOLDER * num_video_tokens}{prompt_tail(question)}"


def text_prompt(question: str) -> str:
    """A single-turn prompt without a video, ``"USER: {question} ASSISTANT:"``: Video-LLaVA's template for a
    text-only turn (the original tokenizes it in one piece, since no placeholder splits it)."""
    return f"{PROMPT_HEAD}{question} ASSISTANT:"
