"""The ``jointnet`` command line (`commands`) and the demo (`demo`)."""

from jointnet.cli.commands import build_parser, format_inspect, format_log, main

__all__ = ["main", "build_parser", "format_inspect", "format_log"]
