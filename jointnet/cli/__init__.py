"""The ``jointnet`` command line (`commands`: the parser and `main`; one module per group of
subcommands) and the demo (`demo`)."""

from jointnet.cli.commands import build_parser, main
from jointnet.cli.snapshots import format_inspect, format_log

__all__ = ["main", "build_parser", "format_inspect", "format_log"]
