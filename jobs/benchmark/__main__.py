"""``python -m jobs.benchmark <command> ...``; the commands are listed in the package docstring."""

from jobs.benchmark.cli import main

main()
