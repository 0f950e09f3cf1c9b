"""``jointnet run``: a strategy over a task stream, with snapshots, results and resume
(`jointnet.experiments.runner`)."""

from __future__ import annotations

import argparse
from typing import Any

from jointnet.cli.common import parse_options as _parse_options
from jointnet.errors import JointNetError

__all__ = ["add_parsers"]


def _cmd_run(args: argparse.Namespace) -> int:
    from jointnet.experiments import runner

    if args.list:
        from jointnet.experiments.strategy import strategies
        from jointnet.experiments.streams import STREAMS

        print("strategies:")
        for name, cls in strategies().items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"  {name:<12} {doc}")
        print("streams:")
        for name in STREAMS:
            print(f"  {name}")
        return 0
    if args.resume:
        results = runner.resume(args.resume, progress=not args.quiet)
    else:
        missing = [f"--{n}" for n in ("strategy", "stream", "out") if not getattr(args, n)]
        if missing:
            raise JointNetError(f"run needs {', '.join(missing)} (or --resume DIR, or --list)")
        config: dict[str, Any] = _parse_options(args.train, "--train")
        if args.epochs is not None:
            config["epochs"] = args.epochs
        config["device"] = args.device
        spec = runner.RunSpec(
            strategy=args.strategy, stream=args.stream, seed=args.seed,
            strategy_options=_parse_options(args.option, "--option"),
            stream_options=_parse_options(args.stream_option, "--stream-option"),
            config=config, reference=args.reference,
        )
        results = runner.run(spec, args.out, progress=not args.quiet)
    runner.print_results(results)
    return 0


def add_parsers(sub) -> None:
    """Add run to the subparsers `sub`."""
    s = sub.add_parser("run", help="run a strategy over a task stream (snapshots, results, resume)")
    s.add_argument("--strategy", help="strategy name (see --list)")
    s.add_argument("--stream", help="stream name (see --list)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=None, help="epochs per task")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--out", metavar="DIR", help="output directory (must not hold a run)")
    s.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last snapshot")
    s.add_argument("--list", action="store_true", help="list strategies and streams")
    s.add_argument("--option", "-O", action="append", metavar="KEY=VALUE", help="strategy option")
    s.add_argument("--stream-option", "-S", action="append", metavar="KEY=VALUE", help="stream option")
    s.add_argument("--train", "-T", action="append", metavar="KEY=VALUE",
                   help="trainer option (batch_size, lr, optimizer, schedule, patience, ...)")
    s.add_argument("--reference", metavar="RESULTS", help="results.json whose diagonal is the FWT reference")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_run)
