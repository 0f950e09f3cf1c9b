"""``jointnet report RUN [RUN...] -o report.html``: one self-contained HTML page of runs
(`jointnet.report`)."""

from __future__ import annotations

import argparse

__all__ = ["add_parsers"]


def _cmd_report(args: argparse.Namespace) -> int:
    from jointnet.report import write_report
    from jointnet.report.runs import group_runs

    path, runs = write_report(args.runs, args.output, charts=args.charts, title=args.title)
    size = path.stat().st_size
    print(f"wrote {path} ({len(runs)} run(s) in {len(group_runs(runs))} group(s), {size / 1024:.0f} KiB)")
    return 0


def add_parsers(sub) -> None:
    """Add report to the subparsers `sub`."""
    from jointnet.report.page import CHARTS

    s = sub.add_parser("report", help="one self-contained HTML page of runs: metrics across seeds, heat maps, "
                                      "curves, parameters, architectures, rewrite logs")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the --out of 'jointnet run')")
    s.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write (.html or .htm)")
    s.add_argument("--charts", choices=CHARTS, default="auto",
                   help="who draws the charts: matplotlib (needs jointnet[plots]), svg (built in), or auto "
                        "(default: matplotlib when installed, else svg)")
    s.add_argument("--title", default=None, help="the page title (default: the runs' strategies and streams)")
    s.set_defaults(func=_cmd_report)
