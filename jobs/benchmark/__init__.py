"""Benchmarks: `python -m jobs.benchmark <command> ...`.

presets [--layers 32 --hidden 4096 --ffn 11008 --visual 2056 --text 40] [--out FILE.json]
    equivalent tokens and prefill FLOPs ratio of every preset on a model layout (default:
    Video-LLaVA-7B, 8 frames x 257 tokens), from the token arithmetic and the FLOPs formula.
fidelity --out FILE.json [--plot FILE.png] [--model tiny|tiny-deep|DIR] [--seed 0-99] [--samples N (512)]
         [--schedule LAYERS:KEEPS|LAYERS@FRACTION ...]
    dense vs every method at 50/25/10/5 % on synthetic video QA: agreement, KL, evidence recall, accuracy.
looking --out FILE.json [--model tiny-deep|DIR] [--split hard|easy] [--layers 0,1,2,4,6,8,15,16]
    per layer, the share of the prompt's attention on visual tokens that goes to the question's evidence.
show (--synthetic I | --video FILE --question Q) --out FILE.png
    the sampled frames with the visual tokens each method keeps.
speed --out FILE.json
    prefill time, peak memory and KV cache of dense vs the video presets on the Video-LLaVA-7B layout.
long --out FILE.json [--videos N] [--preset video-long]
    32-frame clips with a brief event: 32 frames compressed to the 8-frame budget vs 8 uniform frames.
pipeline --out FILE.json [--synthetic N] [--copies K]
    the Ray pipeline vs a plain sequential loop on the same videos: whole-run and steady-state throughput,
    model busy fraction, decode cost per segment vs raw decord.
gpu --out FILE.json [--tiny] [--new-tokens 32] [--repeats 3] [--batches 1 8 32]
    the full Video-LLaVA-7B layout in bf16 with random weights on one GPU: dense vs video-50/25/10/5 and
    video-xf-25 at batch 1, 8 and 32, left-padded rows of unequal lengths (vision tower and LLM prefill time,
    decode tokens/s, peak memory, KV cache; medians of the repeats with their spread), the synchronising CUDA
    calls per decode step, and the torch / CUDA / driver / transformers versions; --tiny, or no CUDA, runs a
    tiny model on CPU to check the command. Needs torch, transformers and safetensors only.
syncs --out FILE.json [--batches 1 2 8 32]
    device-to-host synchronisations of one prefill per preset and batch size on the 7B token layout
    (counted by operator on the CPU: what a GPU would wait for).
load --out FILE.json [--videos 1000]
    many short videos in one Ray run: completes exactly once, memory (PSS of the whole job's process tree)
    over time and its growth after warm-up, throughput, and the time of a rerun that skips everything.
shots --out FILE.json [--real 6] [--repeats 3]
    process CPU seconds of the decode stage with --segment-by shots vs fixed 10 s segments on the real clips.

One module per family: ``cost`` (presets, speed, syncs, gpu), ``quality`` (fidelity, show, long), ``throughput``
(pipeline, load, shots); ``table`` prints every table; ``cli`` holds the parser.
"""

from __future__ import annotations

from pipeline.ray_env import use_local_ray_env

# Ray reads its loopback setting once, at import: set the local-Ray environment before a module of this package
# imports Ray (the pipeline commands start a Ray of their own). The door is jobs.benchmark.cli.main.
use_local_ray_env()
