"""Charts and architecture drawings as self-contained SVG text, written without any plotting
library: the accuracy-matrix heat map, accuracy curves per task, parameters per task as stacked
bars, and a task's route as a layered drawing. Every string that goes into the SVG is escaped;
element ids come from a caller-given prefix of our own, never from input.

Heat maps of more than `RECT_LIMIT` tasks are one embedded PNG (a pixel per cell, drawn
pixelated), so the page stays small for hundreds of tasks; `png` writes it with zlib alone.

>>> svg = heatmap(["t1", "t2"], [[0.9], [0.8, 0.7]], "m1")
>>> svg.startswith("<svg") and svg.count("<rect") >= 3 and "0.90" in svg
True
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence

import networkx as nx

from jointnet.graph.net import JointNet

__all__ = ["RECT_LIMIT", "PALETTE", "SHARED", "REUSED", "architecture", "bars", "color", "curves", "heatmap",
           "png", "task_color"]

RECT_LIMIT = 40
"""Heat maps of more tasks are drawn as one PNG image."""

# viridis at 9 evenly spaced points (matplotlib's colormap data, as sRGB bytes)
_VIRIDIS = (
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
"""Line and task colours (matplotlib's tab10), cycled in task order."""
OWNED_FILL = "#8dd3c7"
SHARED = "#bdbdbd"
"""Fill of shared nodes and of shared parameters."""
REUSED = "#fdb462"
"""Fill of parameters a task reuses from other tasks."""
_FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def color(v: float) -> tuple[int, int, int]:
    """The viridis colour of `v` in [0, 1] (clamped), as RGB bytes."""
    v = min(max(float(v), 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(v), len(_VIRIDIS) - 2)
    f = v - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(x + (y - x) * f) for x, y in zip(a, b))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def task_color(i: int) -> str:
    """The colour of the i-th task (0-based) in task order."""
    return PALETTE[i % len(PALETTE)]


def png(rows: Sequence[Sequence[tuple[int, int, int, int]]]) -> bytes:
    """An RGBA PNG of `rows` (each a sequence of (r, g, b, a) bytes, all rows equally long).

    >>> png([[(255, 0, 0, 255)]])[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    h, w = len(rows), len(rows[0])
    raw = bytearray()
    for row in rows:
        raw.append(0)  # filter: none
        for px in row:
            raw.extend(px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def heatmap(names: list[str], R: list[list[float]], prefix: str, title: str = "") -> str:
    """The accuracy matrix R[i][j] (row: after training task i; column: task j) as a heat map,
    viridis from 0 to 1, cells above the diagonal left empty; values written in the cells for up to
    12 tasks. `prefix` makes the SVG's element ids unique on a page."""
    T = len(R)
    cell = max(4, min(40, 400 // max(T, 1)))
    left, top = 80, 30 if title else 10
    label_every = max(1, T // 20)
    size = cell * T
    w, h = left + size + 70, top + size + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'role="img" {_FONT} font-size="11">']
    if title:
        out.append(f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>')
    if T <= RECT_LIMIT:
        for i, row in enumerate(R):
            for j, a in enumerate(row[: i + 1]):
                x, y = left + j * cell, top + i * cell
                rgb = color(a)
                out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_hex(rgb)}">'
                           f'<title>after {_e(names[i])}, {_e(names[j])}: {a:.4f}</title></rect>')
                if T <= 12:
                    ink = "#000" if sum(rgb) > 400 else "#fff"
                    out.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                               f'fill="{ink}" font-size="{min(11, cell // 3.5):.0f}">{a:.2f}</text>')
    else:
        rows = [[(*color(a), 255) for a in row[: i + 1]] + [(0, 0, 0, 0)] * (T - i - 1) for i, row in enumerate(R)]
        data = base64.b64encode(png(rows)).decode("ascii")
        out.append(f'<image x="{left}" y="{top}" width="{size}" height="{size}" preserveAspectRatio="none" '
                   f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/>')
    out.append(f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#999"/>')
    for k in range(0, T, label_every):
        out.append(f'<text x="{left - 4}" y="{top + k * cell + cell / 2 + 4:.1f}" text-anchor="end">'
                   f'{_e(_short(names[k], 10))}</text>')
        out.append(f'<text x="{left + k * cell + cell / 2:.1f}" y="{top + size + 14}" text-anchor="middle">'
                   f'{_e(_short(names[k], 8))}</text>')
    out.append(f'<text x="{left + size / 2:.1f}" y="{top + size + 32}" text-anchor="middle">task evaluated</text>')
    out.append(f'<text x="14" y="{top + size / 2:.1f}" transform="rotate(-90 14 {top + size / 2:.1f})" '
               f'text-anchor="middle">after training</text>')
    # colour bar
    bx = left + size + 20
    steps = 20
    for s in range(steps):
        v = 1 - s / steps
        out.append(f'<rect x="{bx}" y="{top + s * size / steps:.1f}" width="12" height="{size / steps + 0.5:.1f}" '
                   f'fill="{_hex(color(v))}"/>')
    out.append(f'<text x="{bx + 16}" y="{top + 9}">1</text><text x="{bx + 16}" y="{top + size}">0</text>')
    out.append("</svg>")
    return "".join(out)


def _axes(out: list[str], left: int, top: int, pw: int, ph: int, ylabel: str, yticks: list[tuple[float, str]]) -> None:
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>')
    for frac, label in yticks:
        y = top + ph - frac * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2:.1f}" transform="rotate(-90 14 {top + ph / 2:.1f})" '
               f'text-anchor="middle">{_e(ylabel)}</text>')


def curves(names: list[str], R: list[list[float]], title: str = "") -> str:
    """Accuracy of each task j after every task i >= j (one line per task, a legend for up to
    10 tasks)."""
    T = len(R)
    left, top, pw, ph = 56, 30 if title else 10, 400, 240
    legend = T <= 10
    w, h = left + pw + (90 if legend else 20), top + ph + 44
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'role="img" {_FONT} font-size="11">']
    if title:
        out.append(f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>')
    _axes(out, left, top, pw, ph, "accuracy", [(k / 5, f"{k / 5:.1f}") for k in range(6)])

    def x(i: int) -> float:
        return left + (pw * (i + 0.5) / T)

    def y(a: float) -> float:
        return top + ph - min(max(a, 0.0), 1.0) * ph

    label_every = max(1, T // 16)
    for i in range(0, T, label_every):
        out.append(f'<text x="{x(i):.1f}" y="{top + ph + 14}" text-anchor="middle">{_e(_short(names[i], 8))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 32}" text-anchor="middle">after training</text>')
    for j in range(T):
        pts = [(x(i), y(R[i][j])) for i in range(j, T)]
        c = task_color(j)
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.6" points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + f'"><title>{_e(names[j])}</title></polyline>')
        if T <= 40:
            for a, b in pts:
                out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{c}"/>')
        if legend:
            ly = top + 8 + j * 16
            out.append(f'<line x1="{left + pw + 10}" x2="{left + pw + 28}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/>'
                       f'<text x="{left + pw + 32}" y="{ly + 4}">{_e(_short(names[j], 10))}</text>')
    out.append("</svg>")
    return "".join(out)


def bars(names: list[str], series: dict[str, list[int]], colors: dict[str, str], title: str = "",
         ylabel: str = "parameters") -> str:
    """Stacked bars: one bar per name, one segment per series (in the order given)."""
    T = len(names)
    left, top, pw, ph = 72, 30 if title else 10, 400, 220
    w, h = left + pw + 170, top + ph + 44
    totals = [sum(s[i] for s in series.values()) for i in range(T)]
    peak = max(totals + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'role="img" {_FONT} font-size="11">']
    if title:
        out.append(f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>')
    _axes(out, left, top, pw, ph, ylabel, [(k / 4, f"{peak * k / 4:,.0f}") for k in range(5)])
    slot = pw / max(T, 1)
    bw = max(1.0, slot * 0.7)
    for i, name in enumerate(names):
        base = 0
        x = left + i * slot + (slot - bw) / 2
        for label, values in series.items():
            v = values[i]
            if v <= 0:
                continue
            hgt = ph * v / peak
            y = top + ph - ph * (base + v) / peak
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{hgt:.1f}" fill="{colors[label]}">'
                       f'<title>{_e(name)}: {_e(label)} {v:,}</title></rect>')
            base += v
    label_every = max(1, T // 16)
    for i in range(0, T, label_every):
        out.append(f'<text x="{left + (i + 0.5) * slot:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                   f'{_e(_short(names[i], 8))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 32}" text-anchor="middle">task</text>')
    for k, label in enumerate(series):
        ly = top + 8 + k * 16
        out.append(f'<rect x="{left + pw + 10}" y="{ly - 6}" width="12" height="10" fill="{colors[label]}"/>'
                   f'<text x="{left + pw + 26}" y="{ly + 3}">{_e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def architecture(net: JointNet, task: str, prefix: str) -> str:
    """`task`'s route drawn top-down in layers (a node's layer is its longest distance from the
    input along the route): a box per node with its id and short spec, filled with the task's
    colour when the task is its only user, grey with a bold border when tasks share it (the box
    says how many); arrows along the task's edges. `prefix` makes the marker id unique."""
    route = net.route(task)
    on = set(route)
    edges = [(u, v) for u, v, d in net.graph.edges(data=True) if task in d["tasks"] and u in on and v in on]
    depth = {n: 0 for n in route}
    g = nx.DiGraph(edges)
    g.add_nodes_from(route)
    for n in nx.topological_sort(g):
        for v in g.successors(n):
            depth[v] = max(depth[v], depth[n] + 1)
    layers: dict[int, list[str]] = {}
    for n in route:
        layers.setdefault(depth[n], []).append(n)
    bw, bh, gapx, gapy = 150, 34, 18, 22
    widest = max(len(v) for v in layers.values())
    w = widest * (bw + gapx) + gapx
    h = len(layers) * (bh + gapy) + gapy
    pos = {}
    for d, nodes in layers.items():
        row_w = len(nodes) * (bw + gapx) - gapx
        x0 = (w - row_w) / 2
        for k, n in enumerate(nodes):
            pos[n] = (x0 + k * (bw + gapx), gapy + d * (bh + gapy))
    marker = f"{prefix}-arrow"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" '
           f'role="img" {_FONT} font-size="10">',
           f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
           f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for u, v in edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        out.append(f'<line x1="{x1 + bw / 2:.1f}" y1="{y1 + bh:.1f}" x2="{x2 + bw / 2:.1f}" y2="{y2 - 1:.1f}" '
                   f'stroke="#555" stroke-width="1.2" marker-end="url(#{marker})"/>')
    index = {t: i for i, t in enumerate(net.tasks)}
    for n in route:
        x, y = pos[n]
        node = net.node(n)
        users = net.users(n)
        shared = len(users) > 1
        fill = SHARED if shared else task_color(index[task])
        stroke = ' stroke="#333" stroke-width="2.2"' if shared else ' stroke="#666" stroke-width="1"'
        rx = 16 if node.kind == "Input" else 4
        opacity = "" if shared else ' fill-opacity="0.55"'
        who = f"shared by {len(users)} tasks" if shared else f"{task} only"
        out.append(f'<g><title>{_e(n)}: {_e(node.spec.short())}, {_e(who)}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw}" height="{bh}" rx="{rx}" fill="{fill}"{stroke}'
                   f'{opacity}/>'
                   f'<text x="{x + bw / 2:.1f}" y="{y + 14:.1f}" text-anchor="middle" font-weight="bold">'
                   f'{_e(_short(n, 24))}</text>'
                   f'<text x="{x + bw / 2:.1f}" y="{y + 27:.1f}" text-anchor="middle">'
                   f'{_e(_short(node.spec.short(), 20) + ("  x" + str(len(users)) if shared else ""))}</text></g>')
    out.append("</svg>")
    return "".join(out)
