"""The ``jointnet`` command line. It only parses arguments and prints: every view it shows is a
library function (`jointnet.persistence.views`, `jointnet.persistence.diff`, `jointnet.persistence.render`).

Subcommands::

    jointnet inspect SNAP [--json]       tasks, nodes with owners, parameters total/shared/owned
    jointnet log SNAP [--json]           the rewrite history, one record per line
    jointnet diff A B [--json]           what changed from snapshot A to snapshot B
    jointnet render SNAP [--task T] -o FILE   Graphviz drawing (.dot always; .svg/.png/.pdf via dot)
    jointnet demo [--out DIR] [--epochs N]    a short end-to-end demo (`jointnet.cli.demo`)

Bad input (a missing or corrupt snapshot, an unknown task) prints one line to stderr and exits
with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from jointnet.errors import JointNetError

__all__ = ["main", "build_parser", "format_inspect", "format_log"]


# ---- loading ------------------------------------------------------------------------------------


def _load(path: str, tensors: bool = False):
    """(net, store) from a snapshot file; the store is None unless `tensors` and the file has them."""
    from pathlib import Path

    from jointnet.persistence import snapshot

    if not Path(path).is_file():
        what = "is a directory, not a snapshot file" if Path(path).is_dir() else "no such snapshot file"
        raise JointNetError(f"{what}: {path}")
    net, store = snapshot.load(path)
    return net, (store if tensors else None)


# ---- formatting (pure: data in, text out) -------------------------------------------------------


def _set(names) -> str:
    return "{" + ",".join(names) + "}"


def format_inspect(summ: dict[str, Any], shared: list[dict[str, list[str]]], source: str = "") -> str:
    """Text for ``jointnet inspect`` from `views.summary` and `views.sharing` output."""
    lines = []
    head = f"{source}: " if source else ""
    lines.append(f"{head}JointNet version {summ['version']}, {len(summ['tasks'])} task(s), "
                 f"{len(summ['nodes'])} node(s)")
    lines.append("tasks:")
    if not summ["tasks"]:
        lines.append("  (none)")
    for t in summ["tasks"]:
        ann = f"  annotations={json.dumps(t['annotations'])}" if t["annotations"] else ""
        lines.append(f"  {t['name']}  input={t['input']}  head={t['head'] or '-'}  "
                     f"added_at=v{t['added_at']}  route={t['route_length']} nodes{ann}")
    lines.append("nodes:")
    nodes = summ["nodes"]
    idw = max((len(n["id"]) for n in nodes), default=4)
    specw = max((len(n["spec"]) for n in nodes), default=4)
    for n in nodes:
        extra = []
        if n["params"]:
            extra.append(f"params={n['params']}")
        if n["cloned_from"]:
            extra.append(f"cloned_from={n['cloned_from']}")
        if n["groups"]:
            extra.append("groups=" + ",".join(f"{g['owner']}:+{g['size']}" for g in n["groups"]))
        if n["masks"]:
            extra.append("masks=" + ",".join(
                f"{m['task']}:{m['param']}{'' if m['kind'] == 'mask' else '/' + m['kind']}({m['state']})"
                for m in n["masks"]))
        for p in n["policy"]:
            who = p["task"] or "all"
            what = "frozen" if p["frozen"] else "trainable"
            if p["lr_scale"] != 1.0:
                what += f",lr x{p['lr_scale']:g}"
            extra.append(f"policy[{who}]={what}")
        if n["annotations"]:
            extra.append("annotations=" + ",".join(n["annotations"]))
        owners = _set(n["users"]) if n["users"] else "{unused}"
        lines.append(f"  {n['id']:<{idw}}  {n['spec']:<{specw}}  owners={owners}"
                     + ("  " + "  ".join(extra) if extra else ""))
    c = summ["params"]
    owned = ", ".join(f"{t}={v}" for t, v in c["owned"].items()) or "-"
    line = f"parameters: total {c['total']}, shared {c['shared']}, owned {owned}"
    if c["unowned"]:
        line += f", unowned {c['unowned']}"
    lines.append(line)
    if c["masks_total"]:
        lines.append("masks: " + ", ".join(f"{t}={v}" for t, v in c["masks"].items() if v))
    if c["buffers"]:
        lines.append(f"buffers: {c['buffers']}")
    if shared:
        lines.append("shared nodes, by the tasks that use them:")
        for entry in shared:
            lines.append(f"  {_set(entry['tasks'])}: {', '.join(entry['nodes'])}")
    return "\n".join(lines)


def format_log(hist: list[dict[str, Any]]) -> str:
    """Text for ``jointnet log``: one ``v<version>  name(k=v, ...)`` line per record."""
    from jointnet.persistence.views import call_text

    width = len(str(hist[-1]["version"])) if hist else 1
    lines = [f"v{rec['version']:<{width}}  {call_text(rec['name'], rec['kwargs'])}" for rec in hist]
    return "\n".join(lines) if lines else "(empty log)"


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


# ---- subcommands --------------------------------------------------------------------------------


def format_views(views: dict[str, Any]) -> str:
    """Text for the method views of `inspect` / `diff`: a titled block each; a view gives a dict
    (one ``key: value`` line each, nested dicts indented) or a list of lines."""
    lines = []

    def emit(value: Any, indent: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (dict, list)) and v and not all(isinstance(x, (int, float, str)) for x in v):
                    lines.append(f"{indent}{k}:")
                    emit(v, indent + "  ")
                else:
                    lines.append(f"{indent}{k}: {_short_value(v)}")
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, (dict, list)):
                    emit(v, indent + "  ")
                else:
                    lines.append(f"{indent}{v}")
        else:
            lines.append(f"{indent}{value}")

    for name, value in views.items():
        lines.append(f"{name}:")
        emit(value, "  ")
    return "\n".join(lines)


def _short_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_short_value(x) for x in v) + "]"
    return str(v)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from jointnet.persistence.views import method_views, sharing, summary

    net, store = _load(args.snapshot, tensors=True)
    summ = summary(net)
    shared = sharing(net)
    views = method_views(net, store)
    if args.json:
        summ = dict(summ)
        summ["sharing"] = shared
        summ["methods"] = views
        print(_json(summ))
    else:
        text = format_inspect(summ, shared, source=args.snapshot)
        print(text + ("\n" + format_views(views) if views else ""))
    return 0


def _cmd_log(args: argparse.Namespace) -> int:
    from jointnet.persistence.views import history

    net, _ = _load(args.snapshot)
    hist = history(net)
    print(_json(hist) if args.json else format_log(hist))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from jointnet.persistence.diff import diff
    from jointnet.persistence.views import method_diffs

    tensors = not args.no_tensors
    a, sa = _load(args.a, tensors=tensors)
    b, sb = _load(args.b, tensors=tensors)
    d = diff(a, b, sa, sb)
    views = method_diffs(a, b, sa, sb)
    if args.json:
        print(_json({**d.to_dict(), "methods": views}))
    else:
        print(str(d) + ("\n" + format_views(views) if views else ""))
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from jointnet.persistence.render import render

    net, _ = _load(args.snapshot)
    for p in render(net, args.output, task=args.task):
        print(f"wrote {p}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("jointnet.cli.demo")
    except ImportError as e:
        raise JointNetError(f"the demo is not available: {e}") from None
    rc = demo.main(args)
    return int(rc or 0)


def _parse_options(items: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse, else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JointNetError(f"{what} options are key=value (got {item!r})")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


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


# ---- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from jointnet import __version__

    p = argparse.ArgumentParser(
        prog="jointnet",
        description="Inspect, diff and draw jointnet snapshots (continual-learning architectures as graphs).",
    )
    p.add_argument("--version", action="version", version=f"jointnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("inspect", help="tasks, nodes with owners, parameter counts")
    s.add_argument("snapshot", metavar="SNAP", help="a snapshot file")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("log", help="the rewrite history, one record per line")
    s.add_argument("snapshot", metavar="SNAP", help="a snapshot file")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.set_defaults(func=_cmd_log)

    s = sub.add_parser("diff", help="what changed from snapshot A to snapshot B")
    s.add_argument("a", metavar="A", help="the older snapshot")
    s.add_argument("b", metavar="B", help="the newer snapshot")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.add_argument("--no-tensors", action="store_true",
                   help="compare structure only, not how far tensors moved")
    s.set_defaults(func=_cmd_diff)

    s = sub.add_parser("render", help="draw the graph (Graphviz DOT; SVG/PNG/PDF need 'dot')")
    s.add_argument("snapshot", metavar="SNAP", help="a snapshot file")
    s.add_argument("--task", default=None, help="draw only this task's route")
    s.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="output file: .dot/.gv (text) or .svg/.png/.pdf (needs Graphviz 'dot')")
    s.set_defaults(func=_cmd_render)

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

    s = sub.add_parser("demo", help="PackNet, fine-tuning and independent nets on split Fashion-MNIST")
    s.add_argument("--out", default=None, metavar="DIR", help="where runs go (default ./jointnet-demo)")
    s.add_argument("--epochs", type=int, default=None, help="training epochs per task (default 2)")
    s.add_argument("--n-train", type=int, default=None, help="training images per task (default 2000)")
    s.add_argument("--data-dir", default=None, metavar="DIR", help="where Fashion-MNIST is")
    s.add_argument("--seed", type=int, default=None)
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
    except OSError as e:
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
