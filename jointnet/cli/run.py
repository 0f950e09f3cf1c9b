"""``jointnet run`` and ``jointnet options``: a strategy over a task stream, with snapshots,
results and resume (`jointnet.experiments.runner`), several seeds at once (`jointnet.cli.sweep`),
and every option a run takes (`jointnet.experiments.options`).

Every option is checked before anything is written; a bad one is a single line
``jointnet: error: ...`` naming it and what it accepts (exit status 2). Ctrl-C stops with one
line saying how to resume (exit status 130).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from jointnet.cli.common import parse_options as _parse_options
from jointnet.errors import JointNetError

__all__ = ["add_parsers", "format_options", "format_listing"]

DEFAULT_THREADS = 1
"""``--threads`` when neither it nor ``-T threads=`` is given: 1 (README, "Threads")."""

# Trainer fields with a flag of their own; -T may set them too (both must then agree).
_CONFIG_FLAGS = {"epochs": "--epochs", "device": "--device", "threads": "--threads"}
# Keys that -T / -S must not set: another flag does.
_NOT_T = {"seed": "--seed", "progress": "-q/--quiet (progress bars are on unless -q)"}
_NOT_S = {"seed": "--seed", "data_dir": "--data-dir DIR"}


def _echo(quiet: bool) -> tuple[Callable[[str], Any], bool]:
    """(where run lines go, whether progress bars show): nothing with -q, else through tqdm so
    that lines never break a bar."""
    if quiet:
        return (lambda _msg: None), False
    from tqdm import tqdm

    return (lambda msg: tqdm.write(msg)), True


def _int_flag(flag: str, value: Any, lo: int) -> int | None:
    if value is not None and (type(value) is not int or value < lo):
        raise JointNetError(f"{flag} must be an int >= {lo} (got {value!r})")
    return value


def _given(args: argparse.Namespace) -> tuple[dict, dict]:
    """What the command line sets: ``{"strategy", "stream", "seed", "reference", "data_dir",
    "strategy_options", "stream_options", "config"}`` (only what was given) and the flag each
    trainer key came from. Checks what the flags alone can check."""
    strategy_options = _parse_options(args.option, "-O")
    stream_options = _parse_options(args.stream_option, "-S")
    config = _parse_options(args.train, "-T")
    for key, flag in _NOT_S.items():
        if key in stream_options:
            raise JointNetError(f"the stream's {key} is set with {flag}, not -S {key}=")
    for key, flag in _NOT_T.items():
        if key in config:
            raise JointNetError(f"the trainer's {key} is set with {flag}, not -T {key}=")
    origin = {k: f"-T {k}" for k in config}
    _int_flag("--epochs", args.epochs, 0)
    _int_flag("--threads", args.threads, 1)
    for key, flag in _CONFIG_FLAGS.items():
        value = getattr(args, key)
        if value is None:
            continue
        if key in config and config[key] != value:
            raise JointNetError(f"{flag} {value} and -T {key}={json.dumps(config[key])} disagree; give one")
        config[key] = value
        origin[key] = flag
    if "device" in config:
        from jointnet.experiments.options import check_device

        check_device(config["device"], flag=origin["device"])
    given: dict[str, Any] = {"strategy_options": strategy_options, "stream_options": stream_options,
                             "config": config}
    for key in ("strategy", "stream"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    if args.seed is not None:
        given["seed"] = _int_flag("--seed", args.seed, 0)
    if args.reference is not None:
        given["reference"] = os.path.abspath(os.path.expanduser(args.reference))  # from here, not --out
    if args.data_dir is not None:
        given["data_dir"] = os.path.abspath(os.path.expanduser(args.data_dir))
        if not os.path.isdir(given["data_dir"]):
            raise JointNetError(f"--data-dir {args.data_dir}: no such directory")
    return given, origin


def _interrupted(out: str | None) -> int:
    if out is not None and any((Path(out) / name).exists() for name in ("run.json", "sweep.json")):
        print(f"jointnet: interrupted; resume with: jointnet run --resume {out}", file=sys.stderr)
    else:
        print("jointnet: interrupted before anything was written", file=sys.stderr)
    return 130


def _cmd_run(args: argparse.Namespace) -> int:
    from jointnet.experiments import runner

    if args.list:
        print(format_listing())
        return 0
    _int_flag("--jobs", args.jobs, 1)
    if args.seeds is not None:
        from jointnet.experiments.sweep import check_seeds as _check_seeds

        if args.seed is not None:
            raise JointNetError("give --seed N (one run) or --seeds N [N ...] (a sweep), not both")
        _check_seeds(list(args.seeds))
    given, origin = _given(args)
    if args.resume:
        return _resume(args, given, origin)
    missing = [f"--{n}" for n in ("strategy", "stream", "out") if not getattr(args, n)]
    if missing:
        raise JointNetError(f"run needs {', '.join(missing)} (or --resume DIR, or --list)")
    if args.jobs is not None and args.seeds is None:
        raise JointNetError("--jobs runs the seeds of --seeds in parallel; a single run takes no --jobs")
    given["config"].setdefault("threads", DEFAULT_THREADS)
    spec = runner.RunSpec(
        strategy=given["strategy"], stream=given["stream"], seed=given.get("seed", 0),
        strategy_options=given["strategy_options"], stream_options=given["stream_options"],
        config=given["config"], reference=given.get("reference"), data_dir=given.get("data_dir"))
    echo, progress = _echo(args.quiet)
    try:
        if args.seeds is not None:
            from jointnet.cli import sweep

            return sweep.run_sweep(spec, list(args.seeds), args.out, jobs=args.jobs or 1, quiet=args.quiet)
        results = runner.run(spec, args.out, echo=echo, progress=progress)
    except KeyboardInterrupt:
        return _interrupted(args.out)
    runner.print_results(results)
    return 0


def _conflict_line(out: str, found: list, origin: dict) -> str:
    kind, key, value, recorded = found[0]
    flag = {"strategy": "--strategy", "stream": "--stream", "seed": "--seed", "reference": "--reference",
            "strategy_options": f"-O {key}", "stream_options": f"-S {key}"}.get(kind) or origin.get(key, f"-T {key}")
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (f"{flag} {json.dumps(value)} conflicts with the run in {out}, which used {key}="
            f"{json.dumps(recorded)}{more}; drop it to resume the run as it was, or start a new run "
            "with another --out")


def _check_given(rec: dict, given: dict) -> None:
    """Options given again with --resume are options of the recorded run's strategy, stream and
    trainer, of the right types (before they are compared with the recorded values)."""
    from jointnet.experiments import options

    options.check_strategy_options(given.get("strategy", rec["strategy"]), given["strategy_options"])
    options.check_stream_options(given.get("stream", rec["stream"]), given["stream_options"])
    options.check_train_options(given["config"])


def _resume(args: argparse.Namespace, given: dict, origin: dict) -> int:
    from jointnet.experiments import rundir, runner, sweep

    out = args.resume
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(out):
        raise JointNetError(f"--resume {out} continues the run in {out}; --out {args.out} does not apply")
    if not Path(out).is_dir():
        raise JointNetError(f"--resume {out}: no such directory")
    seeds = sweep.read_sweep(out)
    check = {k: v for k, v in given.items() if k != "data_dir"}
    if seeds is not None:
        if args.seeds is not None and list(args.seeds) != seeds:
            raise JointNetError(f"--seeds {' '.join(map(str, args.seeds))} conflicts with the sweep in {out}, "
                                f"which has seeds {' '.join(map(str, seeds))}")
        if "seed" in check:
            raise JointNetError(f"{out} is a sweep over seeds {' '.join(map(str, seeds))}; --seed does not apply")
        for s in seeds:
            d = sweep.seed_dir(out, s)
            if (d / "run.json").exists():
                _check_given(rundir.read_record(d / "run.json"), check)
                found = runner.conflicts(d, check)
                if found:
                    raise JointNetError(_conflict_line(str(d), found, origin))
        from jointnet.cli import sweep

        try:
            return sweep.resume_sweep(out, seeds, jobs=args.jobs or 1, quiet=args.quiet,
                                      data_dir=given.get("data_dir"))
        except KeyboardInterrupt:
            return _interrupted(out)
    if args.seeds is not None:
        raise JointNetError(f"{out} holds one run, not a sweep; --seeds does not apply")
    if args.jobs is not None:
        raise JointNetError("--jobs runs the seeds of a sweep in parallel; a single run takes no --jobs")
    _check_given(rundir.read_record(Path(out) / "run.json"), check)
    found = runner.conflicts(out, check)
    if found:
        raise JointNetError(_conflict_line(out, found, origin))
    echo, progress = _echo(args.quiet)
    try:
        results = runner.resume(out, echo=echo, progress=progress, data_dir=given.get("data_dir"))
    except KeyboardInterrupt:
        return _interrupted(out)
    runner.print_results(results)
    return 0


# ---- listings ------------------------------------------------------------------------------------


def format_listing() -> str:
    """Every strategy and stream with its one-line summary, and where their options are."""
    from jointnet.experiments import options
    from jointnet.experiments.strategy import strategy_names
    from jointnet.experiments.streams import STREAMS

    lines = ["strategies (--strategy NAME; options: jointnet options NAME, set with -O key=value):"]
    for name in strategy_names():
        try:
            _kind, summary, _ = options.describe(name)
        except JointNetError as e:  # a plugin that does not import: say so, list the rest
            summary = f"(cannot load: {' '.join(str(e).split())})"
        lines.append(f"  {name:<20} {summary}")
    lines.append("streams (--stream NAME; options: jointnet options NAME, set with -S key=value):")
    for name in STREAMS:
        _kind, summary, _ = options.describe(name)
        lines.append(f"  {name:<20} {summary}")
    lines.append("trainer options: jointnet options trainer (set with -T key=value; --epochs, --device "
                 "and --threads too)")
    return "\n".join(lines)


def format_options(name: str) -> str:
    """Every option of strategy, stream or ``trainer`` `name`: flag, name, type, default, doc."""
    from jointnet.experiments import options

    kind, summary, found = options.describe(name)
    flag = {"strategy": "-O", "stream": "-S", "trainer": "-T"}[kind]
    head = {"strategy": f"strategy {name}", "stream": f"stream {name}", "trainer": "trainer"}[kind]
    lines = [f"{head}: {summary}" if summary else head]
    if kind == "stream":
        lines.append("  (--seed N and --data-dir DIR set its seed and data folder)")
    if kind == "trainer":
        lines.append("  (--epochs, --device and --threads set those fields too; jointnet run's --threads "
                     f"default is {DEFAULT_THREADS})")
    if not found:
        lines.append("  no options")
    rows = [(f"{flag} {o.name}", o.type, json.dumps(o.default), o.doc or "(undocumented)") for o in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return "\n".join(lines)


def _cmd_options(args: argparse.Namespace) -> int:
    from jointnet.experiments import options

    if not args.names:
        print(format_listing())
        return 0
    if args.json:
        out = []
        for name in args.names:
            kind, summary, found = options.describe(name)
            out.append({"name": name, "kind": kind, "summary": summary,
                        "options": [{"name": o.name, "type": o.type, "default": o.default, "doc": o.doc}
                                    for o in found]})
        print(json.dumps(out, indent=2))
        return 0
    print("\n\n".join(format_options(name) for name in args.names))
    return 0


def add_parsers(sub) -> None:
    """Add run and options to the subparsers `sub`."""
    s = sub.add_parser(
        "run", help="run a strategy over a task stream (snapshots, results, resume, seeds)",
        description="Run a strategy over a task stream: one snapshot per task, results.json/.csv, "
                    "resume after a crash. Options are checked before anything is written.")
    s.add_argument("--strategy", help="strategy name (see --list)")
    s.add_argument("--stream", help="stream name (see --list)")
    s.add_argument("--seed", type=int, default=None, help="seed of the stream, the initial weights and the "
                   "batch order (default 0)")
    s.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="run each seed into OUT/seedN, then aggregate (mean, sd, 95%% CI) into "
                        "OUT/aggregate.json and .csv")
    s.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="with --seeds: seeds run in N processes at once (default 1)")
    s.add_argument("--epochs", type=int, default=None, help="epochs per task (-T epochs=; default: the "
                   "strategy's recommended config, else 5)")
    s.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N (-T device=)")
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"torch CPU threads (-T threads=; default {DEFAULT_THREADS}: fastest on a "
                        "shared 2-core machine; see README)")
    s.add_argument("--out", metavar="DIR", help="output directory (must not hold a run)")
    s.add_argument("--resume", metavar="DIR", help="continue the run (or sweep) in DIR; options given "
                   "again must equal the recorded ones")
    s.add_argument("--list", action="store_true", help="list strategies and streams")
    s.add_argument("--option", "-O", action="append", metavar="KEY=VALUE",
                   help="strategy option (jointnet options STRATEGY lists them)")
    s.add_argument("--stream-option", "-S", action="append", metavar="KEY=VALUE",
                   help="stream option (jointnet options STREAM lists them)")
    s.add_argument("--train", "-T", action="append", metavar="KEY=VALUE",
                   help="trainer option: lr, batch_size, optimizer, schedule, patience, ... "
                        "(jointnet options trainer lists them)")
    s.add_argument("--reference", metavar="RESULTS",
                   help="results.json (or directory) of a finished run of the same stream whose "
                        "diagonal is the FWT reference; relative to the current directory")
    s.add_argument("--data-dir", metavar="DIR", help="where the stream's data files are (e.g. Fashion-MNIST)")
    s.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars and no per-epoch or per-task lines (results still print)")
    s.set_defaults(func=_cmd_run)

    o = sub.add_parser("options", help="every option of a strategy, a stream or the trainer",
                       description="Every option of a strategy (-O), a stream (-S) or the trainer (-T): "
                                   "name, type, default, one line of doc. No NAME: list them.")
    o.add_argument("names", nargs="*", metavar="NAME", help="strategy or stream name, or 'trainer'")
    o.add_argument("--json", action="store_true", help="print machine-readable JSON")
    o.set_defaults(func=_cmd_options)
