"""Draw a net as a Graphviz graph: `to_dot(net)` gives DOT text, `render(net, path)` writes files.

Colours: each task gets one colour of a fixed palette, in task order (the 11th task reuses the
first colour). A node used by exactly one task is filled with that task's colour; a node shared
by several tasks is grey with a bold border; a node no task uses is white and dashed. Labels show
the node id, its short spec and its users (``{t1,t2}``; runs of consecutive tasks as
``{t1..t200}``), plus grown channel groups and masks. A task's drawing (``task=``) shows only that
task's masks and the channel groups it sees.
An edge is drawn in the colour(s) of the tasks routed on it and labelled with their names.

>>> from jointnet import backbones
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> print(to_dot(net).splitlines()[0])
digraph "jointnet_v5" {
"""

from __future__ import annotations

from collections import Counter

import shutil
import subprocess
from pathlib import Path

import networkx as nx

from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet
from jointnet.persistence.views import task_runs

__all__ = ["PALETTE", "SHARED_FILL", "task_colors", "to_dot", "render"]

PALETTE = (
    "#8dd3c7", "#fdb462", "#bebada", "#fb8072", "#80b1d3",
    "#b3de69", "#fccde5", "#ffed6f", "#bc80bd", "#ccebc5",
)
"""Task colours (ColorBrewer Set3), assigned in task order."""

SHARED_FILL = "#d9d9d9"
"""Fill of nodes shared by several tasks (drawn with a bold border)."""

_EDGE_DEFAULT = "#555555"

_FORMATS = ("svg", "png", "pdf")


def task_colors(net: JointNet) -> dict[str, str]:
    """Task -> colour, in task order, cycling through `PALETTE`."""
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(net.tasks)}


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(lines: list[str]) -> str:
    esc = [line.replace("\\", "\\\\").replace('"', '\\"') for line in lines]
    return '"' + "\\n".join(esc) + '"'


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _table_label(lines: list[tuple[str, str | None]]) -> str:
    """An HTML-like label: one row per line, a row with a colour filled with it (channel groups
    coloured by their owner)."""
    rows = []
    for text, color in lines:
        bg = f' BGCOLOR="{_html(color)}"' if color else ""
        rows.append(f"<TR><TD{bg}>{_html(text)}</TD></TR>")
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1">' + "".join(rows) + "</TABLE>>"


def to_dot(net: JointNet, task: str | None = None) -> str:
    """Graphviz DOT text of `net`; with `task`, only that task's route (nodes and edges).

    Raises `JointNetError` when `task` is not a task of the net.
    """
    if task is not None and task not in net.tasks:
        known = ", ".join(net.tasks) or "none"
        raise JointNetError(f"no task {task!r} to render; tasks are {known}")
    colors = task_colors(net)
    order = {t: i for i, t in enumerate(net.tasks)}

    def sort_tasks(ts):
        return sorted(ts, key=lambda t: (order.get(t, 1 << 30), t))

    keep = set(net.route(task)) if task is not None else set(net.nodes)
    name = f"jointnet_v{net.version}" + (f"_{task}" if task else "")
    out = [
        f"digraph {_q(name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8];',
    ]
    title = f"jointnet v{net.version}" + (f", task {task}" if task else f", tasks {', '.join(net.tasks) or '-'}")
    out.append(f"  label={_q(title)}; labelloc=t;")
    for n in nx.lexicographical_topological_sort(net.graph):
        if n not in keep:
            continue
        node = net.node(n)
        users = sort_tasks(net.users(n))
        # users as runs in task order ({t1..t200}), so a label stays short for many tasks
        lines: list[tuple[str, str | None]] = [
            (n, None), (node.spec.short(), None),
            ("{" + ",".join(task_runs(net, users, 6)) + "}" if users else "{unused}", None)]
        for g in node.out_groups:  # channel groups, coloured by the task that owns them
            if task is None or net.group_visible(task, g):  # a task's drawing: the channels it sees
                lines.append((f"+{g.size} ch ({g.owner})", colors.get(g.owner, "white")))
        # One line per (task, param, kind, state), with the number of blocks it covers (a GROWN
        # node holds a mask per grown block: a line each would be ~100 lines); a task's drawing
        # shows only its own masks.
        counts = Counter((m.task, m.param, m.kind, m.state) for m in node.masks if task is None or m.task == task)
        for (t, param, kind, state), c in counts.items():
            k = "" if kind == "mask" else f"/{kind}"
            lines.append((f"mask {t}:{param}{k} ({state})" + (f" x{c}" if c > 1 else ""), None))
        if node.cloned_from:
            lines.append((f"clone of {node.cloned_from}", None))
        grouped = bool(node.out_groups)
        attrs = {"label": _table_label(lines) if grouped else _label([t for t, _ in lines])}
        if len(users) > 1:
            attrs.update(fillcolor=_q(SHARED_FILL), style=_q("rounded,filled,bold"), penwidth="2.5")
        elif len(users) == 1:
            attrs.update(fillcolor=_q(colors[users[0]]))
        else:
            attrs.update(fillcolor=_q("white"), style=_q("rounded,dashed"))
        if node.kind == "Input":
            attrs["shape"] = "ellipse"
        elif node.kind == "Head":
            attrs["shape"] = "doubleoctagon"
        body = ", ".join(f"{k}={v}" for k, v in attrs.items())
        out.append(f"  {_q(n)} [{body}];")
    for u, v, d in net.graph.edges(data=True):
        tasks = sort_tasks(d["tasks"])
        if task is not None:
            if task not in tasks:
                continue
            tasks = [task]
        cols = ":".join(colors.get(t, _EDGE_DEFAULT) for t in tasks) or _EDGE_DEFAULT
        label = ",".join(tasks)
        if d.get("port"):
            label += f" [port {d['port']}]"
        attrs = {"label": _q(label), "color": _q(cols), "fontcolor": _q(_EDGE_DEFAULT)}
        if len(tasks) > 1:
            attrs["penwidth"] = "2"
        body = ", ".join(f"{k}={v}" for k, v in attrs.items())
        out.append(f"  {_q(u)} -> {_q(v)} [{body}];")
    if task is None and net.tasks:
        out.append("  subgraph cluster_legend {")
        out.append('    label="tasks"; fontsize=9; style=dashed;')
        for t, c in colors.items():
            out.append(f"    {_q('legend:' + t)} [label={_q(t)}, fillcolor={_q(c)}, shape=box];")
        out.append(f"    {_q('legend:shared')} [label=\"shared\", fillcolor={_q(SHARED_FILL)}, "
                   'style="rounded,filled,bold", penwidth=2.5];')
        keys = [_q("legend:" + t) for t in colors] + [_q("legend:shared")]
        out.append("    {rank=same; " + "; ".join(keys) + ";}")
        out.append("    " + " -> ".join(keys) + " [style=invis];")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def render(net: JointNet, path: str | Path, task: str | None = None) -> list[Path]:
    """Write `net` (or `task`'s route) as a drawing; returns the paths written.

    The DOT text is always written: to `path` itself when it ends in ``.dot`` or ``.gv``, else
    next to it with the suffix ``.dot``. When `path` ends in ``.svg``, ``.png`` or ``.pdf``, the
    Graphviz ``dot`` program then draws it; if ``dot`` is not on PATH this raises
    `JointNetError` naming the missing program (the ``.dot`` file is still there).
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("dot", "gv") + _FORMATS:
        raise JointNetError(
            f"cannot render to {str(path)!r}: the file name must end in .dot, .gv, "
            + ", ".join("." + f for f in _FORMATS)
        )
    text = to_dot(net, task=task)
    dot_path = path if suffix in ("dot", "gv") else path.with_suffix(".dot")
    dot_path.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(text)
    written = [dot_path]
    if suffix in _FORMATS:
        exe = shutil.which("dot")
        if exe is None:
            raise JointNetError(
                f"rendering {path.name} needs the Graphviz program 'dot', which is not on PATH "
                f"(install Graphviz, e.g. apt-get install graphviz); the DOT text is in {dot_path}"
            )
        proc = subprocess.run([exe, f"-T{suffix}", str(dot_path), "-o", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise JointNetError(f"'dot -T{suffix}' failed on {dot_path}: {proc.stderr.strip()}")
        written.append(path)
    return written
