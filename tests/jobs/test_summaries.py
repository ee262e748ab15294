"""What a job prints when it ends: a short block for people, with what answered first."""

from __future__ import annotations

from jobs.summaries import PLAN_VIDEOS_SHOWN, format_plan, format_summary

SUMMARY = {
    "run_id": "r1",
    "model": "bundled:tiny-synthetic",
    "model_revision": "sha256:abc",
    "preset": "video-25",
    "questions": ["describe the video.", "what happens?"],
    "config_key": "k",
    "output_uri": "/out",
    "seen": 12,
    "skipped": 10,
    "processed": 2,
    "failed": 1,
    "partial": 0,
    "rows": 4,
    "uncommitted": 0,
    "wall_s": 3.25,
    "error_classes": {"CorruptMedia": 1},
    "replaced": [],
    "status": "ok",
    "error_class": None,
    "error_message": None,
    "started_at": "",
}


def test_the_summary_block_leads_with_what_answered_and_counts_like_the_ledger() -> None:
    lines = format_summary(SUMMARY).splitlines()
    assert lines[0] == "run r1: ok in 3.2 s"
    assert lines[1] == "  model    bundled:tiny-synthetic (sha256:abc), preset video-25"
    assert lines[2] == "  prompts  describe the video. | what happens?"
    assert lines[3] == "  videos   12 seen, 10 already done, 2 processed (1 failed, 0 partial)"
    assert "  errors   videos with error rows by class: CorruptMedia (1)" in lines
    assert lines[-1] == "  report   /out/_runs/r1.html"
    assert len(lines) <= 10 and "RunSummary(" not in format_summary(SUMMARY)


def test_the_summary_shows_the_shadow_samples_agreement_and_cost_only_when_it_sampled() -> None:
    sampled = {
        **SUMMARY,
        "quality": {"qa": {"samples": 15, "agreement": 0.8667, "ci_low": 0.6212, "ci_high": 0.9626}},
        "shadow": {
            "fraction": 0.02,
            "prompts": 15,
            "failed": 1,
            "answers_share": 0.021,
            "dense_s": 3.24,
            "model_time_share": 0.04,
        },
    }
    lines = format_summary(sampled).splitlines()
    assert lines[5:7] == [
        "  quality  agreement with dense: qa 0.87 [0.62, 0.96] n=15",
        "           sample cost: 15 dense prompts (2.1 % of the answers), 3.2 s, 4.0 % of the model's generate time, "
        "1 failed",
    ]
    assert "quality" not in format_summary({**SUMMARY, "quality": {}, "shadow": {}})


def test_a_failed_run_says_why_and_what_is_left() -> None:
    failed = {**SUMMARY, "status": "failed", "error_class": "LeaseLost", "error_message": "lost", "uncommitted": 1}
    text = format_summary(failed)
    assert text.startswith("run r1: failed in 3.2 s")
    assert "1 not committed (the next run picks them up)" in text and "  failed   LeaseLost: lost" in text


def test_the_plan_is_a_table_of_videos_then_the_totals() -> None:
    videos = [
        {"source_uri": f"s3://b/v/clip{i:02d}.mp4", "video_id": "x", "size": 1000, "questions": 1, "state": "done"}
        for i in range(PLAN_VIDEOS_SHOWN + 3)
    ]
    plan = {
        "dry_run": True,
        "input": "s3://b/v/",
        "output": "s3://b/o/",
        "config_key": "k",
        "seen": len(videos),
        "new": 0,
        "changed": 0,
        "retry": 0,
        "done": len(videos),
        "to_process": 0,
        "bytes_to_read": 0,
        "estimate": {},
        "videos": videos,
    }
    lines = format_plan(plan).splitlines()
    assert lines[1].split() == ["video", "state", "bytes", "questions"]
    assert lines[2].split() == ["clip00.mp4", "done", "1000", "1"]
    assert lines[2 + PLAN_VIDEOS_SHOWN] == "... and 3 more (--log-format json lists every one)"
    assert lines[-1].startswith("23 seen: 0 new, 0 changed, 0 to retry, 23 already done; 0 to process")
