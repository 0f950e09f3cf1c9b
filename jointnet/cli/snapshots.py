"""``jointnet inspect``, ``log``, ``diff`` and ``render``: snapshot views, and the registration of
``report`` (`jointnet.cli.report`) and ``export`` (`jointnet.cli.export`). Every view is a library
function (`jointnet.persistence.views`, `jointnet.persistence.diff`, `jointnet.persistence.render`);
this module only formats it.

Output stays bounded for nets of hundreds of tasks: task sets print as runs in task order
(``{t1..t200}``), per-task numbers as min / median / max beyond `PER_TASK` tasks, the task list
as a summary beyond `TASK_LINES` tasks, similar nodes (same kind, spec and origin) as one line
beyond `NODE_LINES` nodes, and every list is cut with a count of what was left out. ``--full``
prints every task and node on a line of its own; ``--json`` has everything.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from jointnet.cli.common import load_snapshot as _load, to_json as _json

__all__ = ["add_parsers", "format_inspect", "format_log", "format_views", "format_capacity"]

TASK_LINES = 12
"""Beyond this many tasks `format_inspect` summarises the task list (``--full`` lists them)."""
NODE_LINES = 40
"""Beyond this many nodes similar nodes share a line; at most this many node lines print."""
PER_TASK = 10
"""Beyond this many tasks a per-task number prints as min / median / max."""
GROUP_LINES = 10
"""At most this many groups of nodes by task set print."""


# ---- formatting (pure: data in, text out) -------------------------------------------------------


def _set(order: list[str], names, max_runs: int = 6) -> str:
    """A task set as ``{t1..t5,t7}`` (runs in task order, at most `max_runs`)."""
    from jointnet.persistence.views import task_runs

    return "{" + ",".join(task_runs(order, names, max_runs)) + "}"


def _cut(names: list[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit - 1]) + f", ... {names[-1]} ({len(names)} in all)"


def _num(v: float | int, pct: bool) -> str:
    return f"{100 * v:.1f}%" if pct else str(v)


def _per_task(values: dict[str, float | int], pct: bool = False, limit: int = PER_TASK) -> str:
    """``t1=3, t2=4`` for a few tasks; ``N tasks: min X (t), median Y, max Z (t)`` for more."""
    if len(values) <= limit:
        return ", ".join(f"{t}={_num(v, pct)}" for t, v in values.items()) or "-"
    lo = min(values, key=values.get)
    hi = max(values, key=values.get)
    med = statistics.median(values.values())
    med_text = _num(med, pct) if pct or med != int(med) else str(int(med))
    return (f"{len(values)} tasks: min {_num(values[lo], pct)} ({lo}), median {med_text}, "
            f"max {_num(values[hi], pct)} ({hi})")


def _mask_text(masks: list[dict], order: list[str]) -> str:
    if len(masks) <= 4:
        return "masks=" + ",".join(
            f"{m['task']}:{m['param']}{'' if m['kind'] == 'mask' else '/' + m['kind']}({m['state']})" for m in masks)
    kinds: dict[str, int] = {}
    for m in masks:
        what = f"{m['param']}{'' if m['kind'] == 'mask' else '/' + m['kind']} {m['state']}"
        kinds[what] = kinds.get(what, 0) + 1
    tasks = _set(order, {m["task"] for m in masks}, 3)
    return f"masks of {tasks}: " + ", ".join(f"{k} x{v}" for k, v in kinds.items())


def _policy_text(policy: list[dict], order: list[str]) -> list[str]:
    by_what: dict[str, list[str | None]] = {}
    for p in policy:
        what = "frozen" if p["frozen"] else "trainable"
        if p["lr_scale"] != 1.0:
            what += f",lr x{p['lr_scale']:g}"
        if p.get("params"):
            what += ",per-param"
        by_what.setdefault(what, []).append(p["task"])
    out = []
    for what, tasks in by_what.items():
        named = [t for t in tasks if t is not None]
        who = []
        if None in tasks:
            who.append("all")
        if named:
            who.append(_set(order, named, 3)[1:-1])
        out.append(f"policy[{'|'.join(who)}]={what}")
    return out


def _node_extras(n: dict[str, Any], order: list[str], full: bool) -> list[str]:
    extra = []
    if n["params"]:
        extra.append(f"params={n['params']}")
    if n["cloned_from"]:
        extra.append(f"cloned_from={n['cloned_from']}")
    if n["groups"]:
        if full or len(n["groups"]) <= 4:
            extra.append("groups=" + ",".join(f"{g['owner']}:+{g['size']}" for g in n["groups"]))
        else:
            size = sum(g["size"] for g in n["groups"])
            extra.append(f"groups={len(n['groups'])} (+{size} ch, owners "
                         f"{_set(order, {g['owner'] for g in n['groups']}, 3)})")
    if n["masks"]:
        extra.append(_mask_text(n["masks"], order) if not full else "masks=" + ",".join(
            f"{m['task']}:{m['param']}{'' if m['kind'] == 'mask' else '/' + m['kind']}({m['state']})"
            for m in n["masks"]))
    if full:
        for p in n["policy"]:
            what = "frozen" if p["frozen"] else "trainable"
            if p["lr_scale"] != 1.0:
                what += f",lr x{p['lr_scale']:g}"
            extra.append(f"policy[{p['task'] or 'all'}]={what}")
    else:
        extra.extend(_policy_text(n["policy"], order))
    if n["annotations"]:
        keys = list(n["annotations"])
        extra.append("annotations=" + (",".join(keys) if full or len(keys) <= 6
                                       else ",".join(keys[:5]) + f",+{len(keys) - 5} more"))
    return extra


def _node_lines(nodes: list[dict], order: list[str], full: bool) -> list[str]:
    """One line per node; beyond `NODE_LINES` nodes, nodes of one kind, spec and origin share a
    line, and at most `NODE_LINES` lines print."""
    idw = min(max((len(n["id"]) for n in nodes), default=4), 24)
    specw = min(max((len(n["spec"]) for n in nodes), default=4), 24)

    def line(n: dict) -> str:
        owners = _set(order, n["users"], 1 << 30 if full else 6) if n["users"] else "{unused}"
        extra = _node_extras(n, order, full)
        return f"  {n['id']:<{idw}}  {n['spec']:<{specw}}  owners={owners}" + ("  " + "  ".join(extra) if extra else "")

    if full or len(nodes) <= NODE_LINES:
        return [line(n) for n in nodes]
    groups: dict[tuple, list[dict]] = {}
    for n in nodes:
        key = (n["kind"], n["spec"], n["cloned_from"] or "", len(n["users"]) == 1) if n["kind"] != "Input" else (n["id"],)
        groups.setdefault(key, []).append(n)
    lines: list[str] = []
    done: set[tuple] = set()
    for n in nodes:
        key = (n["kind"], n["spec"], n["cloned_from"] or "", len(n["users"]) == 1) if n["kind"] != "Input" else (n["id"],)
        members = groups[key]
        if len(members) < 3:
            lines.append(line(n))
            continue
        if key in done:
            continue
        done.add(key)
        if key[3]:  # one task each: first and last in task order, not in id order
            index = {t: i for i, t in enumerate(order)}
            members = sorted(members, key=lambda m: index.get(m["users"][0], 1 << 30))
        users = [len(m["users"]) for m in members]
        if key[3]:
            who = "one task each, " + _set(order, {m["users"][0] for m in members}, 3)
        else:
            who = f"{min(users)}-{max(users)} tasks each" if min(users) != max(users) else f"{users[0]} tasks each"
        params = [m["params"] for m in members]
        ptext = (f"  params={params[0]} each" if min(params) == max(params) and params[0]
                 else f"  params={min(params)}-{max(params)}" if max(params) else "")
        origin = f"  clones of {key[2]}" if key[2] else ""
        ids = f"{members[0]['id']} .. {members[-1]['id']}"
        lines.append(f"  {ids}  {n['spec']}  {len(members)} nodes, {who}{origin}{ptext}")
    if len(lines) > NODE_LINES:
        left = len(lines) - (NODE_LINES - 1)
        lines = lines[:NODE_LINES - 1] + [f"  ... {left} more lines (--full lists every node, --json has everything)"]
    return lines


def _task_lines(tasks: list[dict], order: list[str], full: bool) -> list[str]:
    if full or len(tasks) <= TASK_LINES:
        lines = ["tasks:"] if tasks else ["tasks:", "  (none)"]
        for t in tasks:
            ann = f"  annotations={json.dumps(t['annotations'])}" if t["annotations"] else ""
            if ann and not full and len(ann) > 120:
                ann = "  annotations=" + ",".join(t["annotations"])
            lines.append(f"  {t['name']}  input={t['input']}  head={t['head'] or '-'}  "
                         f"added_at=v{t['added_at']}  route={t['route_length']} nodes{ann}")
        return lines
    lines = [f"tasks: {len(tasks)} {_set(order, order)}  (--full lists each)"]
    inputs: dict[str, list[str]] = {}
    for t in tasks:
        inputs.setdefault(t["input"], []).append(t["name"])
    lines.append("  inputs: " + "; ".join(f"{i} {_set(order, ts, 3)}" for i, ts in list(inputs.items())[:5])
                 + (f"; +{len(inputs) - 5} more" if len(inputs) > 5 else ""))
    heads = [t["head"] for t in tasks if t["head"]]
    no_head = [t["name"] for t in tasks if not t["head"]]
    htext = f"  heads: {len(heads)} ({heads[0]} .. {heads[-1]})" if heads else "  heads: none"
    if no_head:
        htext += f"; no head yet: {_set(order, no_head, 3)}"
    lines.append(htext)
    routes = [t["route_length"] for t in tasks]
    added = [t["added_at"] for t in tasks]
    lines.append(f"  added at v{min(added)}..v{max(added)}; routes of "
                 + (f"{routes[0]}" if min(routes) == max(routes) else f"{min(routes)}-{max(routes)}") + " nodes")
    keys: dict[str, list[str]] = {}
    for t in tasks:
        for k in t["annotations"]:
            keys.setdefault(k, []).append(t["name"])
    if keys:
        shown = list(keys.items())[:6]
        lines.append("  annotations: " + ", ".join(f"{k} {_set(order, ts, 3)}" for k, ts in shown)
                     + (f", +{len(keys) - 6} more keys" if len(keys) > 6 else ""))
    return lines


def _usage_lines(usage: list[dict], order: list[str]) -> list[str]:
    """Groups of nodes by the tasks that use them, bounded: multi-task groups one line each (at
    most `GROUP_LINES`), single-task groups summarised on one line, unused nodes on one."""
    multi = [g for g in usage if len(g["tasks"]) > 1]
    single = [g for g in usage if len(g["tasks"]) == 1]
    unused = [n for g in usage if not g["tasks"] for n in g["nodes"]]
    lines = ["nodes by the tasks that use them:"]
    for g in multi[:GROUP_LINES]:
        lines.append(f"  {_set(order, g['tasks'])} ({len(g['tasks'])} tasks): {_cut(g['nodes'])}")
    if len(multi) > GROUP_LINES:
        lines.append(f"  ... {len(multi) - GROUP_LINES} more groups of several tasks (--json lists them)")
    if single:
        sizes = [len(g["nodes"]) for g in single]
        per = f"{sizes[0]}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
        first = single[0]
        lines.append(f"  one task only: {len(single)} task(s) with {per} node(s) of their own "
                     f"(e.g. {first['tasks'][0]}: {_cut(first['nodes'], 4)})")
    if unused:
        lines.append(f"  no task (dead until prune): {_cut(unused)}")
    return lines


def format_capacity(cap: dict[str, Any] | None, order: list[str]) -> list[str]:
    """Text for `capacity.capacity`: a line per tensor and gate (at most 20 each), then what each
    task uses and owns (a line per task up to `TASK_LINES` tasks, else min / median / max)."""
    if not cap:
        return []
    lines = ["capacity (fraction of each masked / owned / gated tensor; free = no task's):"]
    items = cap["tensors"]
    width = min(max((len(f"{e['node']}.{e['param']}") for e in items), default=4), 28)
    for e in items[:20]:
        parts = [f"  {e['node'] + '.' + e['param']:<{width}}  {e['numel']:>8}  {e['via']:<13}  free {100 * e['free']:.1f}%"]
        if e["owned"]:
            parts.append(f"owned {_per_task(e['owned'], True, 6)}")
        if e["used"]:
            parts.append(f"used {_per_task(e['used'], True, 6)}")
        lines.append("  ".join(parts))
    if len(items) > 20:
        lines.append(f"  ... {len(items) - 20} more tensors (--json lists them)")
    for u in cap["units"][:20]:
        lines.append(f"  {u['node']:<{width}}  {u['units']:>8}  {'gate units':<13}  free {100 * u['free']:.1f}%  "
                     f"used {_per_task(u['used'], True, 6)}")
    if len(cap["units"]) > 20:
        lines.append(f"  ... {len(cap['units']) - 20} more gates (--json lists them)")
    for e in cap.get("skipped", [])[:5]:
        lines.append(f"  {e['node']}.{e['param']}: not measured: {e['why']}")
    tasks = cap["tasks"]
    used = {t: v["used"] for t, v in tasks.items() if v["used"] is not None}
    owned = {t: v["owned"] for t, v in tasks.items() if v["owned"] is not None}
    free = "" if cap["free"] is None else f"; free {100 * cap['free']:.1f}%"
    lines.append(f"  per task, over these tensors by size{free}:")
    if len(tasks) <= TASK_LINES:
        for t in tasks:
            cells = []
            if t in used:
                cells.append(f"uses {100 * used[t]:.1f}%")
            if t in owned:
                cells.append(f"owns {100 * owned[t]:.1f}%")
            lines.append(f"    {t}: " + (", ".join(cells) or "-"))
    else:
        if used:
            lines.append(f"    uses: {_per_task(used, True)}")
        if owned:
            lines.append(f"    owns: {_per_task(owned, True)}")
    return lines


def format_inspect(summ: dict[str, Any], shared: list[dict[str, list[str]]] | None = None, source: str = "",
                   *, usage: list[dict] | None = None, capacity: dict[str, Any] | None = None,
                   full: bool = False) -> str:
    """Text for ``jointnet inspect`` from `views.summary`, `views.usage` (groups of nodes by the
    tasks that use them; default: from the summary) and `capacity.capacity`. `shared` (the older
    `views.sharing` groups) is accepted and unused: `usage` covers it. Bounded for many tasks
    unless `full` (see the module docstring)."""
    order = [t["name"] for t in summ["tasks"]]
    lines = []
    head = f"{source}: " if source else ""
    lines.append(f"{head}JointNet version {summ['version']}, {len(summ['tasks'])} task(s), "
                 f"{len(summ['nodes'])} node(s)")
    lines.extend(_task_lines(summ["tasks"], order, full))
    lines.append("nodes (each with the tasks that use it):")
    lines.extend(_node_lines(summ["nodes"], order, full))
    c = summ["params"]
    owned = _per_task(c["owned"], limit=1 << 30 if full else PER_TASK)
    line = f"parameters: total {c['total']}, shared {c['shared']}, owned {owned}"
    if c["unowned"]:
        line += f", unowned {c['unowned']}"
    lines.append(line)
    if c["masks_total"]:
        masks = {t: v for t, v in c["masks"].items() if v}
        lines.append("masks: " + _per_task(masks, limit=1 << 30 if full else PER_TASK))
    if c["buffers"]:
        lines.append(f"buffers: {c['buffers']}")
    if usage is None:
        groups: dict[tuple, list[str]] = {}
        for n in summ["nodes"]:
            groups.setdefault(tuple(n["users"]), []).append(n["id"])
        usage = [{"tasks": list(k), "nodes": v} for k, v in groups.items()]
    if summ["nodes"]:
        lines.extend(_usage_lines(usage, order))
    lines.extend(format_capacity(capacity, order))
    return "\n".join(lines)


def format_log(hist: list[dict[str, Any]], full: bool = False) -> str:
    """Text for ``jointnet log``: one ``v<version>  name(k=v, ...)`` line per record; values
    summarised (`views.call_summary`) unless `full` (every argument, exactly)."""
    from jointnet.persistence.views import call_summary, call_text

    width = len(str(hist[-1]["version"])) if hist else 1
    text = call_text if full else call_summary
    lines = [f"v{rec['version']:<{width}}  {text(rec['name'], rec['kwargs'])}" for rec in hist]
    return "\n".join(lines) if lines else "(empty log)"


def format_views(views: dict[str, Any]) -> str:
    """Text for the method views of `inspect` / `diff`: a titled block each; a view gives a dict
    (one ``key: value`` line each, nested dicts indented) or a list of lines."""
    lines = []

    def emit(value: Any, indent: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if v and (isinstance(v, dict) or isinstance(v, list)
                          and not all(isinstance(x, (int, float, str)) for x in v)):
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
    from jointnet.persistence.capacity import capacity
    from jointnet.persistence.views import method_views, sharing, summary, task_params, usage

    net, store = _load(args.snapshot, tensors=True)
    summ = summary(net)
    groups = usage(net)
    # a snapshot saved without tensors has no capacity to show (structure-only views still work)
    cap = capacity(net, store) if store is not None else None
    views = method_views(net, store)
    if args.json:
        summ = dict(summ)
        summ["sharing"] = sharing(net)
        summ["usage"] = groups
        summ["task_params"] = task_params(net, store)
        summ["capacity"] = cap
        summ["methods"] = views
        print(_json(summ))
    else:
        text = format_inspect(summ, source=args.snapshot, usage=groups, capacity=cap, full=args.full)
        if store is None and any(n["masks"] for n in summ["nodes"]):
            text += "\ncapacity: the snapshot holds no tensors"
        print(text + ("\n" + format_views(views) if views else ""))
    return 0


def _cmd_log(args: argparse.Namespace) -> int:
    from jointnet.persistence.views import history

    net, _ = _load(args.snapshot)
    hist = history(net)
    print(_json(hist) if args.json else format_log(hist, full=args.full))
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
    """Add inspect, log, diff, render, report and export to the subparsers `sub`."""
    s = sub.add_parser("inspect", help="tasks, nodes with the tasks that use them, parameters, capacity")
    s.add_argument("snapshot", metavar="SNAP", help="a snapshot file")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON (everything)")
    s.add_argument("--full", action="store_true",
                   help="every task and node on a line of its own (default: bounded summary for many tasks)")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("log", help="the rewrite history, one readable line per record")
    s.add_argument("snapshot", metavar="SNAP", help="a snapshot file")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.add_argument("--full", action="store_true",
                   help="every argument in full (default: long values, maps and tensor keys summarised)")
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

    from jointnet.cli import export as _export
    from jointnet.cli import report as _report

    _report.add_parsers(sub)
    _export.add_parsers(sub)
