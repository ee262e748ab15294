"""Search the captions and answers of a results folder or bucket, best matches first (BM25).

    python -m jobs.search /tmp/captions "red circle"
    python -m jobs.search s3://videos/captions/ "a dog on a beach" --limit 5 --format json

OUTPUT is the --output of a caption or index_archive run. Only its result files (part-*.parquet) are read, as
any Parquet reader reads them; rows that are errors are left out. Starts no Ray and no model.
"""

from __future__ import annotations

import argparse
import json
import os

from jobs.common import RUN_FAILED, USAGE_ERROR, HelpFormatter, fail, storage_failure
from jobs.flags import positive

FORMATS = ("text", "json")
NO_CREDENTIALS = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role"
EXIT_CODES = f"""exit codes:
  0  the search ran; its hits (maybe none) are printed on stdout
  {RUN_FAILED}  the storage is unreachable or refused the request, or no credentials
  {USAGE_ERROR}  the command line is wrong: an empty query, a bad --limit, an OUTPUT that holds no results
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.search", description=__doc__, epilog=EXIT_CODES, formatter_class=HelpFormatter
    )
    parser.add_argument("output", metavar="OUTPUT", help="results folder or s3://bucket/prefix (a run's --output)")
    parser.add_argument("query", metavar="QUERY", help="words to search for in the captions and answers")
    parser.add_argument("--limit", type=positive(int), default=10, help="hits to print at most")
    parser.add_argument("--video", metavar="URI", help="search only this video's rows (its source_uri as in the rows)")
    parser.add_argument(
        "--format", choices=FORMATS, default="text", help="text for people, json for programs (a JSON list of hits)"
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS); credentials come from the standard "
        "AWS sources (environment, ~/.aws, instance roles)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, search, print the hits; a failure ends with one line and its exit code."""
    ns = build_parser().parse_args(argv)
    if not ns.query.strip():
        fail("the query is empty: give one or more words to search for")
    # The search's modules (pyarrow, s3fs) are imported after the command line is checked: --help and usage
    # errors answer at once.
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from pipeline.query.search import SearchError, read_answers, search_answers

    try:
        table = read_answers(ns.output, ns.s3_endpoint_url, ns.video)
        hits = search_answers(table, ns.query, ns.limit)
    except SearchError as err:
        fail(str(err))
    except NoCredentialsError:
        fail(NO_CREDENTIALS, RUN_FAILED)
    except (BotoCoreError, ClientError, OSError) as err:
        fail(storage_failure(err), RUN_FAILED)
    if ns.format == "json":
        print(json.dumps([hit.to_dict() for hit in hits]))
        return
    if not hits:
        print(f"no match for {ns.query!r} in {table.num_rows} answers")
        return
    for rank, hit in enumerate(hits, 1):
        where = (
            "whole video"
            if hit.segment_start_s is None or hit.segment_end_s is None
            else f"{hit.segment_start_s:.1f}-{hit.segment_end_s:.1f} s"
        )
        asked = f" {hit.question!r}" if hit.task == "qa" and hit.question else ""
        print(f"{rank:>3}. {hit.score:6.2f}  {hit.source_uri}  {where}  {hit.task}{asked}: {hit.answer}")


if __name__ == "__main__":
    main()
