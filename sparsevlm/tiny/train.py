"""Train the tiny Video-LLaVA from scratch on the synthetic video QA task.

    python -m jobs.train_tiny            # the defaults made the committed checkpoint (the command line is there)

The recipe is the measured one of reference/tiny-model-training.md: several questions per video in one
sequence, linear per-patch heads on the projector output that make colour and shape readable from every
visual token, bf16 autocast, AdamW at 2e-3 with a cosine schedule over the time budget (batch 8 here: on a
shared CPU, more updates per minute mattered more than a larger batch). Four more per-patch heads read the
LLM's hidden states after ``--motion-layer`` layers: the motion of the object into each frame, whether
the object is new in that frame, and its order of appearance (among the earliest objects of the video; the
newest so far). A causal LLM can only answer those by comparing a patch with the previous frames, which is
what the direction, "after", first and last questions need. All heads are training-only;
the saved checkpoint is a plain Video-LLaVA. ``--text-loss-weight`` adds a caption turn to every sequence and a
language-model loss on all of its text, not only on the answers (batches.py), so that the prompt's words
learn to look at the objects they name. ``--text-layers`` sets the LLM depth (a deeper model starts from
``python -m jobs.grow_tiny``). The checkpoint, metrics.json and curve are saved at every evaluation, so a
stopped run can be continued with ``--init``. ``--device cuda`` trains on a GPU, where the model's step is
short enough that building the synthetic videos would dominate: ``--loader-workers N`` builds the batches in
N processes ahead of use. Batch ``i`` is the same whichever builds it (its questions come from a generator
seeded by ``(seed, first video of the batch)``), so a run does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import shlex
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, VideoLlavaForConditionalGeneration

from sparsevlm.tiny.batches import IGNORE, SequenceBuilder, TrainBatch, collate
from sparsevlm.tiny.evaluate import family_accuracy
from sparsevlm.tiny.hard_qa import MIN_FRAMES, QuestionSplit, make_task_sample
from sparsevlm.tiny.heads import PatchHeads
from sparsevlm.tiny.looking import looking_losses, ranking_losses
from sparsevlm.tiny.model import TinyModelConfig, build_model
from sparsevlm.tiny.saving import init_provenance, save_checkpoint
from sparsevlm.tiny.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (all recorded in metrics.json); the defaults made the committed checkpoint.

    Attributes:
        out: checkpoint directory (config, weights, tokenizer, metrics.json, curve.jsonl).
        curve: learning-curve JSON-lines file; empty means ``out/curve.jsonl``.
        minutes: wall-clock budget; the cosine schedule and the frame curriculum follow elapsed time.
        max_steps: optional step budget instead of (or as well as) ``minutes``; whichever ends first.
        seed: seeds torch and the question sampling; videos come from the generator's train split.
        batch_size: videos per step (each carries several questions).
        lr: peak AdamW learning rate.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        num_frames: frames per video at the end of training and for evaluation (the native setting).
        warm_frames: frames per video during the first ``warm_fraction`` of the budget: a sequence of
            4 x 65 visual tokens costs about 2.5x less than 8 x 65 (attention dominates on this CPU).
        warm_fraction: share of the budget trained at ``warm_frames``.
        questions_per_family: at most this many questions of each family per sequence.
        aux_weight: weight of the per-patch losses relative to the answer loss.
        order_weight: weight of the two appearance-order heads (earliest, newest) instead of ``aux_weight``;
            0 trains without them, as the first two runs of the committed checkpoint did.
        text_loss_weight: weight of the language-model loss on the non-answer text (prompt template,
            questions, and a caption turn that is added when this is positive); 0 trains on answers only.
        naming_weight: weight of the naming loss (:mod:`sparsevlm.tiny.naming`: object patches relate to their
            colour and shape words, background patches to no word, by raw dot products with the embeddings);
            0 trains without it, as every run before ``tiny-deep``'s 32-layer one did.
        motion_layer: LLM layer whose output feeds the motion and "new object" heads.
        eval_every_minutes: validation period.
        val_videos: validation videos per evaluation.
        test_videos: test videos for the final per-family accuracy.
        text_layers: LLM decoder layers; must match ``init``'s (4 for the bundled checkpoint).
        threads: torch threads. 2 is faster on an idle 2-core machine, but next to another CPU-heavy process
            a 1-thread step was measured 3x faster than a 2-thread one.
        bf16: bfloat16 autocast.
        init: a saved checkpoint directory to continue from instead of random weights (the training-only
            heads start fresh; the schedule restarts with this run's ``lr`` and ``warmup_steps``).
        first_video: index of the first train-split video, so a continued run sees new videos.
        look_weight: weight of the looking loss (:mod:`sparsevlm.tiny.looking`: the answer position's attention at
            ``look_layers`` goes to the question's evidence); 0 trains without it, as every run before the hard
            split's did.
        look_layers: comma-separated decoder layers whose attention the looking loss reads.
        rank_weight: weight of the ranking loss (:func:`sparsevlm.tiny.looking.ranking_losses`: among the
            visual tokens, every prompt token of a question attends most to its evidence, as the text of a real
            VLM does to what it names; what every text-guided pruning method reads); 0 trains without it, as
            every run before the committed ``tiny-deep``'s did.
        rank_layers: comma-separated decoder layers whose attention the ranking loss reads.
        hard_fraction: share of each batch's videos drawn from the hard question split
            (:mod:`sparsevlm.tiny.hard_qa`); the rest come from the easy one, so that it does not regress.
            With a positive share, every evaluation reports both splits.
        device: where the model trains: "cpu", or "cuda" / "cuda:N" for a GPU (bf16 autocast on either).
        loader_workers: processes that build batches ahead of the step; 0 builds each in the training process
            (right on a 2-core CPU, where the step dominates; on a GPU about 4 keep it fed).
    """

    out: str = str(DEFAULT_OUT)
    curve: str = ""
    minutes: float = 45.0
    max_steps: int = 0
    seed: int = 0
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    num_frames: int = 8
    warm_frames: int = 4
    warm_fraction: float = 0.75
    questions_per_family: int = 2
    aux_weight: float = 1.0
    order_weight: float = 1.0
    text_loss_weight: float = 0.0
    naming_weight: float = 0.0
    motion_layer: int = 2
    eval_every_minutes: float = 10.0
    val_videos: int = 48
    test_videos: int = 128
    text_layers: int = 4
    threads: int = 1
    bf16: bool = True
    init: str = ""
    first_video: int = 0
    hard_fraction: float = 0.0
    look_weight: float = 0.0
    look_layers: str = "1,2"
    rank_weight: float = 0.0
    rank_layers: str = "1,2"
    device: str = "cpu"
    loader_workers: int = 0

    @property
    def look_layer_list(self) -> list[int]:
        """``look_layers`` as integers."""
        return [int(v) for v in self.look_layers.split(",") if v.strip()]

    @property
    def rank_layer_list(self) -> list[int]:
        """``rank_layers`` as integers."""
        return [int(v) for v in self.rank_layers.split(",") if v.strip()]

    def __post_init__(self) -> None:
        for flag, weight, text in (
            ("look", self.look_weight, self.look_layers),
            ("rank", self.rank_weight, self.rank_layers),
        ):
            try:
                layers = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--{flag}-layers must be comma-separated layers such as 1,2, got {text!r}") from None
            if weight < 0 or any(not 0 <= x < self.text_layers for x in layers):
                raise ValueError(
                    f"--{flag}-weight must be >= 0 and --{flag}-layers in [0, {self.text_layers}), "
                    f"got {weight} and {text!r}"
                )
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"--hard-fraction must be in [0, 1], got {self.hard_fraction}")
        if self.minutes <= 0 and self.max_steps <= 0:
            raise ValueError("give a positive --minutes or --max-steps")
        if self.init and not (Path(self.init) / "config.json").is_file():
            raise ValueError(f"--init {self.init!r} is not a saved checkpoint directory (no config.json in it)")
        if self.first_video < 0:
            raise ValueError(f"--first-video must be >= 0, got {self.first_video}")
        if self.text_loss_weight < 0:
            raise ValueError(f"--text-loss-weight must be >= 0, got {self.text_loss_weight}")
        if self.naming_weight < 0:
            raise ValueError(f"--naming-weight must be >= 0, got {self.naming_weight}")
        if not 1 <= self.motion_layer <= self.text_layers:
            raise ValueError(
                f"--motion-layer must be in [1, --text-layers={self.text_layers}], got {self.motion_layer}"
            )
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"--device {self.device}: torch {torch.__version__} sees no CUDA GPU here; train with --device cpu "
                "or install a CUDA build of torch that matches the driver (docs/install.md)"
            )
        if self.loader_workers < 0:
            raise ValueError(f"--loader-workers must be >= 0, got {self.loader_workers}")
        if not 4 <= self.warm_frames <= self.num_frames:
            raise ValueError(f"warm_frames must be in [4, num_frames={self.num_frames}], got {self.warm_frames}")
        if self.hard_fraction > 0 and min(self.num_frames, self.warm_frames if self.warm_fraction else 99) < MIN_FRAMES:
            raise ValueError(
                f"--hard-fraction {self.hard_fraction} needs videos of at least {MIN_FRAMES} frames: give "
                f"--num-frames and --warm-frames >= {MIN_FRAMES} (or --warm-fraction 0)"
            )


def train_step(
    model: VideoLlavaForConditionalGeneration, heads: PatchHeads, batch: TrainBatch, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """Forward one batch and return every loss term plus their weighted sum under "total"."""
    captured: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            # No attention mask: padding is on the right and attention is causal, so real tokens never
            # see padding, and without a mask sdpa takes its fast causal path.
            out = model(
                input_ids=batch.input_ids,
                pixel_values_videos=batch.pixel_values_videos,
                output_hidden_states=True,
            )
    finally:
        hook.remove()
    b, num_frames = batch.patch_colour.shape[:2]
    projected = captured[0].view(b, num_frames, -1, captured[0].shape[-1])[:, :, 1:]  # [B, T, P, D], no CLS
    video = batch.input_ids == model.config.video_token_id  # [B, L], the same count in every row
    hidden = out.hidden_states[cfg.motion_layer][video].view(b, num_frames, -1, projected.shape[-1])[:, :, 1:]
    embeddings = model.get_input_embeddings().weight  # [V, D], tied to the LM head
    assert isinstance(embeddings, torch.Tensor)
    losses = heads.loss(projected, hidden, embeddings, batch)
    logits = out.logits.float().flatten(0, 1)  # [B * L, V]
    aux = sum(losses.values()) - losses["earliest"] - losses["newest"] - losses["naming"]
    order = losses["earliest"] + losses["newest"]
    losses["answer"] = nn.functional.cross_entropy(logits, batch.labels.flatten(), ignore_index=IGNORE)
    losses["total"] = losses["answer"] + cfg.aux_weight * aux + cfg.order_weight * order
    if cfg.naming_weight > 0:
        losses["total"] = losses["total"] + cfg.naming_weight * losses["naming"]
    if cfg.look_weight > 0:
        looks = looking_losses(model.model.language_model, out.hidden_states, cfg.look_layer_list, batch)
        losses["look"] = torch.stack(looks).mean()
        losses["total"] = losses["total"] + cfg.look_weight * losses["look"]
    if cfg.rank_weight > 0:
        ranks = ranking_losses(model.model.language_model, out.hidden_states, cfg.rank_layer_list, batch)
        losses["rank"] = torch.stack(ranks).mean()
        losses["total"] = losses["total"] + cfg.rank_weight * losses["rank"]
    if cfg.text_loss_weight > 0:
        losses["text"] = nn.functional.cross_entropy(logits, batch.text_labels.flatten(), ignore_index=IGNORE)
        losses["total"] = losses["total"] + cfg.text_loss_weight * losses["text"]
    return losses


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak as ``progress`` goes from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_batch(builder: SequenceBuilder, cfg: TrainConfig, first_video: int, num_frames: int) -> TrainBatch:
    """The training batch that starts at train-split video ``first_video``, on the CPU.

    Which split each video comes from (``hard_fraction``) and which questions it asks are drawn from a generator
    seeded by ``(cfg.seed, first_video)``: the batch depends on nothing else, so it can be built anywhere.
    """
    rng = np.random.default_rng([cfg.seed, first_video])
    kinds: list[QuestionSplit] = ["hard" if rng.random() < cfg.hard_fraction else "easy" for _ in range(cfg.batch_size)]
    samples = [make_task_sample(kind, "train", first_video + k, num_frames=num_frames) for k, kind in enumerate(kinds)]
    return collate(builder, samples, rng, cfg.questions_per_family, caption=cfg.text_loss_weight > 0)


_worker_builder: SequenceBuilder | None = None


def _worker_batch(cfg: TrainConfig, first_video: int, num_frames: int) -> TrainBatch:
    """:func:`make_batch` in a loader process (its tokenizer is built once per process)."""
    global _worker_builder
    if _worker_builder is None:
        torch.set_num_threads(1)
        _worker_builder = SequenceBuilder(build_tokenizer())
    return make_batch(_worker_builder, cfg, first_video, num_frames)


class BatchStream:
    """Training batches in order, built in ``cfg.loader_workers`` processes ahead of use (or inline with 0).

    Args:
        cfg: the run's settings (seed, batch size, split mix, questions, caption turn, workers).
        builder: the sequence builder used inline.
    """

    def __init__(self, cfg: TrainConfig, builder: SequenceBuilder) -> None:
        self.cfg, self.builder = cfg, builder
        self.ahead = 2 * cfg.loader_workers
        # spawn, not fork: the training process may hold CUDA state that a forked child cannot use.
        self.pool = (
            ProcessPoolExecutor(cfg.loader_workers, mp_context=multiprocessing.get_context("spawn"))
            if cfg.loader_workers
            else None
        )
        self.queued: deque[tuple[int, int, Future[TrainBatch]]] = deque()

    def get(self, first_video: int, num_frames: int) -> TrainBatch:
        """The batch starting at video ``first_video`` with ``num_frames`` frames; queues the ones after it."""
        if self.pool is None:
            return make_batch(self.builder, self.cfg, first_video, num_frames)
        if self.queued and self.queued[0][:2] != (first_video, num_frames):
            for *_, pending in self.queued:  # the frame count changed: what was built ahead is not wanted
                pending.cancel()
            self.queued.clear()
        step = self.cfg.batch_size
        start = self.queued[-1][0] + step if self.queued else first_video
        while len(self.queued) < self.ahead:
            self.queued.append((start, num_frames, self.pool.submit(_worker_batch, self.cfg, start, num_frames)))
            start += step
        return self.queued.popleft()[2].result()

    def close(self) -> None:
        """Stop the loader processes (batches still queued are dropped)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def main(cfg: TrainConfig) -> dict[str, object]:
    """Run the training and write the checkpoint; returns the metrics written to metrics.json."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    curve_path = Path(cfg.curve) if cfg.curve else out_dir / "curve.jsonl"
    curve_path.write_text("")
    tokenizer = build_tokenizer()
    model_cfg = TinyModelConfig(num_frames=cfg.num_frames, text_layers=cfg.text_layers)
    model = _initial_model(cfg, model_cfg, tokenizer)
    nn.Module.to(model, device).train()  # (transformers types its own `to` for dtype moves only)
    heads = PatchHeads(model_cfg.text_hidden, tokenizer).to(device)
    params = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    stream = BatchStream(cfg, SequenceBuilder(tokenizer))
    budget = cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    start, cpu_start = time.time(), time.process_time()
    next_eval = cfg.eval_every_minutes * 60
    step, index = 0, cfg.first_video
    running: dict[str, torch.Tensor] = {}  # moving averages of the loss terms, on the device (no sync per step)

    def run_metrics(val: dict[str, float]) -> dict[str, object]:
        """metrics.json as of now (the final one adds the test accuracy)."""
        return _metrics(cfg, model_cfg, model, val, step, index, time.time() - start, time.process_time() - cpu_start)

    try:
        while True:
            elapsed = time.time() - start
            progress = max(elapsed / budget, step / cfg.max_steps if cfg.max_steps else 0.0)
            if progress >= 1.0:
                break
            frames = cfg.warm_frames if progress < cfg.warm_fraction else cfg.num_frames
            batch = stream.get(index, frames).to(device)
            index += cfg.batch_size
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, progress)
            losses = train_step(model, heads, batch, cfg)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            for k, v in losses.items():
                v = v.detach().float()
                running[k] = 0.98 * running[k] + 0.02 * v if k in running else v
            if step % 50 == 0:
                terms = " ".join(f"{k}={v.item():.3f}" for k, v in running.items())
                lr = learning_rate(cfg, step, progress)
                logger.info("step %d frames %d %.1f min lr %.2e %s", step, frames, elapsed / 60, lr, terms)
            if time.time() - start >= next_eval:
                next_eval += cfg.eval_every_minutes * 60
                val = _log_eval(model, tokenizer, cfg, curve_path, step, time.time() - start, running)
                save_checkpoint(model, tokenizer, out_dir, {"final": False, **run_metrics(val)}, curve_path)
                logger.info("saved step %d in %s", step, out_dir)
    finally:
        stream.close()
    wall = time.time() - start
    model.eval()
    val = _log_eval(model, tokenizer, cfg, curve_path, step, wall, running)
    save_checkpoint(model, tokenizer, out_dir, {"final": False, **run_metrics(val)}, curve_path)
    test = family_accuracy(model, tokenizer, "test", cfg.test_videos, num_frames=cfg.num_frames)
    logger.info("test accuracy %s", _rounded(test))
    hard_test: dict[str, float] = {}
    if cfg.hard_fraction > 0:
        hard_test = family_accuracy(
            model, tokenizer, "test", cfg.test_videos, num_frames=cfg.num_frames, question_split="hard"
        )
        logger.info("hard test accuracy %s", _rounded(hard_test))
    warm_test: dict[str, float] = {}
    if cfg.warm_frames != cfg.num_frames:
        warm_test = family_accuracy(model, tokenizer, "test", cfg.test_videos, num_frames=cfg.warm_frames)
        logger.info("test accuracy at %d frames %s", cfg.warm_frames, _rounded(warm_test))
    metrics: dict[str, object] = {
        "final": True,
        "test_accuracy": test,
        "hard_test_accuracy": hard_test,
        "test_frames": cfg.num_frames,
        "test_videos": cfg.test_videos,
        "test_accuracy_at_warm_frames": warm_test,
        **run_metrics(val),
    }
    save_checkpoint(model, tokenizer, out_dir, metrics, curve_path)
    return metrics


def _metrics(
    cfg: TrainConfig,
    model_cfg: TinyModelConfig,
    model: VideoLlavaForConditionalGeneration,
    val: dict[str, float],
    step: int,
    next_video: int,
    wall: float,
    cpu: float,
) -> dict[str, object]:
    """The metrics.json fields every save writes: progress, cost, the command and every setting."""
    return {
        "val_accuracy": val,
        "steps": step,
        "train_videos_seen": next_video - cfg.first_video,
        "next_first_video": next_video,  # --first-video for a run continuing from this checkpoint
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),  # this process's CPU time, all threads (the machine is shared)
        "command": shlex.join(["python", "-m", "jobs.train_tiny", *sys.argv[1:]]),
        "train_config": asdict(cfg),
        "model_config": asdict(model_cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "init_from": init_provenance(cfg.init),
    }


def _initial_model(
    cfg: TrainConfig, model_cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase
) -> VideoLlavaForConditionalGeneration:
    """Random weights for ``model_cfg``, or the checkpoint in ``cfg.init`` (which must match it)."""
    if not cfg.init:
        return build_model(model_cfg, tokenizer)
    model = VideoLlavaForConditionalGeneration.from_pretrained(cfg.init, trust_remote_code=False)
    expected = build_model(model_cfg, tokenizer).config
    for part in ("text_config", "vision_config"):
        got, want = getattr(model.config, part), getattr(expected, part)
        ignored = {"_name_or_path": "", "dtype": "", "torch_dtype": ""}  # where it was saved from, how stored
        if got.to_diff_dict() | ignored != want.to_diff_dict() | ignored:
            raise ValueError(
                f"--init {cfg.init}: its {part} (hidden {got.hidden_size}, {got.num_hidden_layers} layers, ...) is "
                f"not the tiny model's (hidden {want.hidden_size}, {want.num_hidden_layers} layers, ...); give a "
                "checkpoint written by this trainer (or by jobs.grow_tiny) and its depth as --text-layers"
            )
    return model


def _log_eval(
    model: VideoLlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    curve_path: Path,
    step: int,
    elapsed: float,
    running: dict[str, torch.Tensor],
) -> dict[str, float]:
    """Validation accuracy per family, printed and appended to the learning curve."""
    model.eval()
    val = family_accuracy(model, tokenizer, "val", cfg.val_videos, num_frames=cfg.num_frames)
    if cfg.hard_fraction > 0:
        hard = family_accuracy(
            model, tokenizer, "val", cfg.val_videos, num_frames=cfg.num_frames, question_split="hard"
        )
        val |= {f"hard_{k}": v for k, v in hard.items()}
    model.train()
    loss = {k: v.item() for k, v in running.items()}
    record = {"step": step, "minutes": round(elapsed / 60, 2), "val": val, "loss": loss}
    with curve_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    logger.info("eval step %d %.1f min val %s", step, elapsed / 60, _rounded(val))
    return val


def _rounded(accuracy: dict[str, float]) -> str:
    return json.dumps({k: round(v, 3) for k, v in accuracy.items()})
