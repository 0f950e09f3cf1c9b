"""The ``jointnet`` command line. It only parses arguments and prints; each group of subcommands is a
module with an ``add_parsers(sub)`` (`snapshots`: inspect, log, diff, render; `run`; the demo hook
here), and every view it shows is a library function.

Subcommands::

    jointnet inspect SNAP [--json]       tasks, nodes with owners, parameters total/shared/owned
    jointnet log SNAP [--json]           the rewrite history, one record per line
    jointnet diff A B [--json]           what changed from snapshot A to snapshot B
    jointnet render SNAP [--task T] -o FILE   Graphviz drawing (.dot always; .svg/.png/.pdf via dot)
    jointnet run --strategy S --stream T --out DIR [...]   a strategy over a stream (`jointnet.cli.run`)
    jointnet run --resume DIR            continue a run (or a --seeds sweep)
    jointnet options [NAME]              every option of a strategy, a stream or the trainer
    jointnet demo [--out DIR] [--epochs N]    a short end-to-end demo (`jointnet.cli.demo`)

Bad input (a missing or corrupt snapshot, an unknown task, a bad option or argument) prints one
line ``jointnet: error: ...`` to stderr and exits with status 2, without a traceback; Ctrl-C
prints one line and exits with status 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from jointnet.cli import run as _run
from jointnet.cli import snapshots as _snapshots
from jointnet.errors import JointNetError

__all__ = ["main", "build_parser"]


def _cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("jointnet.cli.demo")
    except ImportError as e:
        raise JointNetError(f"the demo is not available: {e}") from None
    rc = demo.main(args)
    return int(rc or 0)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with usage errors on one line (``jointnet: error: ...``, status 2)
    like every other error of the command line; subcommands' parsers are of this class too."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"jointnet: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from jointnet import __version__

    p = _Parser(
        prog="jointnet",
        description="Inspect, diff and draw jointnet snapshots (continual-learning architectures as graphs).",
    )
    p.add_argument("--version", action="version", version=f"jointnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _snapshots.add_parsers(sub)
    _run.add_parsers(sub)

    s = sub.add_parser("demo", help="PackNet, fine-tuning and independent nets on split Fashion-MNIST")
    s.add_argument("--out", default=None, metavar="DIR", help="where runs go (default ./jointnet-demo)")
    s.add_argument("--epochs", type=int, default=None, help="training epochs per task (default 2)")
    s.add_argument("--n-train", type=int, default=None, help="training images per task (default 2000)")
    s.add_argument("--data-dir", default=None, metavar="DIR", help="where Fashion-MNIST is")
    s.add_argument("--seed", type=int, default=None, help="seed of every run (default 0)")
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default 1, as jointnet run)")
    s.set_defaults(func=_cmd_demo)
    return p


def _fail(message: str) -> int:
    print(f"jointnet: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed --help (status 0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except FileNotFoundError as e:
        return _fail(f"no such file: {e.filename or e}")
    except IsADirectoryError as e:
        return _fail(f"is a directory, not a snapshot: {e.filename or e}")
    except JointNetError as e:
        # SnapshotError, RewriteError, ... : one line, the class name and the message
        msg = " ".join(str(e).split())
        name = type(e).__name__
        return _fail(msg if name == "JointNetError" else f"{name}: {msg}")
    except BrokenPipeError:  # pragma: no cover - e.g. `jointnet log X | head`
        return 0
    except KeyboardInterrupt:  # `run` says how to resume; anything else has nothing to resume
        print("jointnet: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
