"""``jointnet inspect``, ``log``, ``diff`` and ``render``: snapshot views. Every view is a library
function (`jointnet.persistence.views`, `jointnet.persistence.diff`, `jointnet.persistence.render`);
this module only formats it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from jointnet.cli.common import load_snapshot as _load, to_json as _json

__all__ = ["add_parsers", "format_inspect", "format_log", "format_views"]


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


# ---- subcommands --------------------------------------------------------------------------------


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


def add_parsers(sub) -> None:
    """Add inspect, log, diff and render to the subparsers `sub`."""
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
