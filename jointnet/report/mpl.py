"""The report's charts drawn with matplotlib (the optional extra ``jointnet[plots]``): the same
three charts as `jointnet.report.svg` (heat map, accuracy curves, parameters per task), each an
SVG document embedded as an ``<img>`` data URI, so that element ids of several figures never
clash on one page and nothing is loaded from the network.

matplotlib is imported only here, only when a report asks for it (`available` says whether it
can be); figures are made with ``matplotlib.figure.Figure`` (no pyplot, no global state, no
display needed) and written with a fixed hash salt and no date, so one input gives one output.
"""

from __future__ import annotations

import base64
import importlib.util
import io

from jointnet.errors import JointNetError

__all__ = ["EXTRA", "available", "bars", "curves", "heatmap"]

EXTRA = "pip install 'jointnet[plots]'"


def available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def _mpl():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise JointNetError(f"charts drawn with matplotlib need the optional extra: {EXTRA} "
                            "(or use --charts svg)") from None
    return matplotlib, Figure


def _img(fig, alt: str) -> str:
    import html

    matplotlib, _ = _mpl()
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "jointnet", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/svg+xml;base64,{data}">'


def heatmap(names: list[str], R: list[list[float]], title: str = "") -> str:
    """The accuracy matrix as an ``<img>``: viridis 0..1, values in cells for up to 12 tasks."""
    _, Figure = _mpl()
    T = len(R)
    grid = [[R[i][j] if j <= i else float("nan") for j in range(T)] for i in range(T)]
    side = min(7.0, 2.2 + 0.35 * T)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    step = max(1, T // 20)
    ax.set_xticks(range(0, T, step), [names[k] for k in range(0, T, step)], rotation=90 if T > 8 else 0)
    ax.set_yticks(range(0, T, step), [names[k] for k in range(0, T, step)])
    ax.set_xlabel("task evaluated")
    ax.set_ylabel("after training")
    if T <= 12:
        for i in range(T):
            for j in range(i + 1):
                ax.text(j, i, f"{R[i][j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if R[i][j] > 0.6 else "white")
    if title:
        ax.set_title(title)
    return _img(fig, title or "accuracy matrix")


def curves(names: list[str], R: list[list[float]], title: str = "") -> str:
    """Accuracy of each task after every later task, as an ``<img>``."""
    _, Figure = _mpl()
    T = len(R)
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    for j in range(T):
        xs = list(range(j, T))
        ax.plot(xs, [R[i][j] for i in xs], marker="o" if T <= 40 else None, markersize=3, linewidth=1.2,
                label=names[j])
    step = max(1, T // 16)
    ax.set_xticks(range(0, T, step), [names[k] for k in range(0, T, step)])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("after training")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if T <= 10:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title)
    return _img(fig, title or "accuracy curves")


def bars(names: list[str], series: dict[str, list[int]], colors: dict[str, str], title: str = "",
         ylabel: str = "parameters") -> str:
    """Stacked bars (one per name, a segment per series), as an ``<img>``."""
    _, Figure = _mpl()
    T = len(names)
    fig = Figure(figsize=(6.4, 3.0))
    ax = fig.add_subplot()
    base = [0] * T
    for label, values in series.items():
        ax.bar(range(T), values, bottom=base, color=colors[label], label=label, width=0.7)
        base = [b + v for b, v in zip(base, values)]
    step = max(1, T // 16)
    ax.set_xticks(range(0, T, step), [names[k] for k in range(0, T, step)])
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title)
    return _img(fig, title or f"{ylabel} per task")
