"""What a job prints on stdout when it ends: its run summary, or its ``--dry-run`` plan, as a short block.

Both read the dicts the jobs return (``RunSummary`` fields, plus the nightly job's metrics; the plan of
:func:`pipeline.observability.run_plan.plan_run`), so the block and the JSON line of ``--log-format json`` say the same.
Torch and Ray are not imported here: a dry run prints without them.
"""

from __future__ import annotations

from typing import Any

from pipeline.observability.quality import format_agreement, format_cost

__all__ = ["format_plan", "format_summary"]

PLAN_VIDEOS_SHOWN = 20  # videos listed by name in a plan; the rest are counted


def format_summary(summary: dict[str, Any]) -> str:
    """A finished (or failed) run in a few lines: what answered, what it did with the videos, where it wrote."""
    output = str(summary.get("output_uri", "?"))
    partition = f"/{summary['partition']}" if summary.get("partition") else ""
    lines = [
        f"run {summary.get('run_id', '?')}: {summary.get('status', 'ok')} in {float(summary.get('wall_s') or 0):.1f} s",
        *_identity(summary),
        f"  videos   {_video_counts(summary)}",
        f"  rows     {summary.get('rows', 0)} written"
        + (f", {summary['video_hours']} video-hours" if summary.get("video_hours") else ""),
    ]
    if summary.get("shadow"):
        agreement = format_agreement(summary.get("quality") or {}) or "no sampled segment committed"
        lines.append(f"  quality  agreement with dense: {agreement}")
        lines.append(f"           sample cost: {format_cost(summary['shadow'])}")
    if summary.get("summaries"):
        made = summary["summaries"]
        lines.append(
            f"  summary  {made['committed']} of {made['videos']} videos summarized"
            + (f" ({made['failed']} with an error row)" if made["failed"] else "")
            + f" in {float(made['wall_s']):.1f} s"
        )
    if summary.get("error_classes"):
        classes = ", ".join(f"{name} ({count})" for name, count in sorted(summary["error_classes"].items()))
        lines.append(f"  errors   videos with error rows by class: {classes}")
    if summary.get("error_message"):
        lines.append(f"  failed   {summary.get('error_class')}: {summary['error_message']}")
    lines += [
        f"  output   {output}{partition}",
        f"  report   {output.rstrip('/')}/_runs/{summary.get('run_id', '?')}.html",
    ]
    return "\n".join(lines)


def format_plan(plan: dict[str, Any]) -> str:
    """A dry run as a table: each video and what a run would do with it, then the totals and the estimate."""
    videos = plan.get("videos", [])
    width = max([len("video"), *(len(_name(v["source_uri"])) for v in videos[:PLAN_VIDEOS_SHOWN])])
    lines = [
        f"dry run: {plan.get('input')} -> {plan.get('output')} (config key {plan.get('config_key')}); nothing was "
        "written",
        f"{'video':<{width}}  {'state':<7}  {'bytes':>12}  questions",
    ]
    lines += [
        f"{_name(v['source_uri']):<{width}}  {v['state']:<7}  {v['size'] if v['size'] is not None else '?':>12}  "
        f"{v['questions']}"
        for v in videos[:PLAN_VIDEOS_SHOWN]
    ]
    if len(videos) > PLAN_VIDEOS_SHOWN:
        lines.append(f"... and {len(videos) - PLAN_VIDEOS_SHOWN} more (--log-format json lists every one)")
    estimate = plan.get("estimate") or {}
    lines += [
        f"{plan.get('seen', 0)} seen: {plan.get('new', 0)} new, {plan.get('changed', 0)} changed, "
        f"{plan.get('retry', 0)} to retry, {plan.get('done', 0)} already done; {plan.get('to_process', 0)} to "
        f"process, {plan.get('bytes_to_read', 0) / 1e6:.1f} MB to read",
    ]
    if plan.get("summaries"):
        lines.append(
            f"summaries: {plan['summaries']['of_committed_videos']} of the videos already done (--summarize), and "
            "one for each new video of several segments"
        )
    if estimate:
        lines.append(
            f"per segment: {estimate.get('visual_tokens_per_segment')} visual tokens, "
            f"{estimate.get('equivalent_tokens_per_prompt')} kept per prompt under {estimate.get('sparse_config')} "
            f"({100 * float(estimate.get('kept_fraction') or 0):.1f} %), prefill FLOPs "
            f"{float(estimate.get('flops_ratio') or 0):.3f} of dense over {estimate.get('prompts_per_segment')} prompts"
        )
    return "\n".join(lines)


def _identity(summary: dict[str, Any]) -> list[str]:
    if "model" not in summary:
        return []
    revision = summary.get("model_revision") or "unknown revision"
    prompts = " | ".join(summary.get("questions") or [])
    return [
        f"  model    {summary['model']} ({revision}), preset {summary.get('preset', '?')}",
        f"  prompts  {prompts}",
    ]


def _video_counts(summary: dict[str, Any]) -> str:
    text = (
        f"{summary.get('seen', 0)} seen, {summary.get('skipped', 0)} already done, {summary.get('processed', 0)} "
        f"processed ({summary.get('failed', 0)} failed, {summary.get('partial', 0)} partial)"
    )
    if summary.get("uncommitted"):
        text += f", {summary['uncommitted']} not committed (the next run picks them up)"
    return text


def _name(uri: str) -> str:
    """A video's file name, or its URI's tail when that is all it has."""
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri
