"""One self-contained HTML page for one or more runs (`build_report`, `write_report`).

The page loads nothing: CSS is inline, charts are inline SVG (`jointnet.report.svg`) or SVG
images as data URIs (`jointnet.report.mpl`), there is no script, and a Content-Security-Policy
``default-src 'none'`` tells the browser to refuse any load or script anyway. Every string taken
from a run (names, options, paths, log records) is HTML-escaped; element ids are numbers of ours.

Sections: a table of the metrics across runs (runs differing only in their seed aggregated:
mean ± sd and the Student-t 95% CI, `jointnet.experiments.stats.summary`), then per run the
accuracy-matrix heat map, the accuracy curves per task, parameters per task (owned / shared /
reused from other tasks, from the last snapshot: `jointnet.persistence.views.task_params`), the
capacity of mask methods (`jointnet.persistence.capacity`), the architecture of each task's route as SVG (at
most `ARCH_TASKS` tasks: the first, the last and evenly spaced ones) and the condensed rewrite
log (`views.call_summary`, at most `LOG_LINES` records shown).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from jointnet.errors import JointNetError
from jointnet.persistence.fileio import write_bytes_atomically
from jointnet.report import svg
from jointnet.report.runs import METRICS, RunData, RunGroup, group_runs, load_run

__all__ = ["ARCH_TASKS", "CHARTS", "LOG_LINES", "build_report", "write_report"]

ARCH_TASKS = 12
"""At most this many tasks' architectures are drawn per run."""
LOG_LINES = 3000
"""At most this many rewrite-log records are shown per run (first ones, then a count)."""
CHARTS = ("auto", "svg", "matplotlib")
"""Chart renderers: ``svg`` (built in), ``matplotlib`` (the ``plots`` extra), ``auto``
(matplotlib when it is installed, else svg)."""

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
h3{font-size:15px;margin:22px 0 8px}.meta,.note{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.ci{color:#777;font-size:11px}
.charts{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.charts img{max-width:100%}
.arch{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;border:1px solid #eee;padding:6px}figcaption{font-size:12px;color:#444;margin-top:4px}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;font-size:12px;overflow-x:auto;max-height:480px}
nav a{margin-right:12px;font-size:13px}code{font-size:12px}
"""

_PARAM_COLORS = {"owned": svg.OWNED_FILL, "shared": svg.SHARED, "reused from other tasks": svg.REUSED}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _charts(mode: str):
    """The chart module for `mode` (`CHARTS`)."""
    if mode not in CHARTS:
        raise JointNetError(f"--charts must be one of {', '.join(CHARTS)} (got {mode!r})")
    from jointnet.report import mpl

    if mode == "matplotlib" or (mode == "auto" and mpl.available()):
        mpl._mpl()  # one-line error naming the extra when it is missing
        return "matplotlib", mpl
    return "svg", None


def _fmt(v: float, metric: str) -> str:
    if metric in ("params",):
        return f"{v:,.0f}"
    if metric == "wall":
        return f"{v:.1f}"
    return f"{v:+.4f}" if metric in ("BWT", "AF", "FWT", "F") else f"{v:.4f}"


def _cell(s, metric: str) -> str:
    if s is None:
        return "<td>–</td>"
    if s.n == 1:
        return f"<td>{_fmt(s.mean, metric)}</td>"
    lo, hi = s.ci95
    return (f"<td>{_fmt(s.mean, metric)} ± {_fmt(s.sd, metric).lstrip('+')}"
            f"<br><span class=ci>95% CI [{_fmt(lo, metric)}, {_fmt(hi, metric)}]</span></td>")


def _summary_table(groups: list[RunGroup], ids: dict[int, str]) -> str:
    shown = [m for m in METRICS if any(m in g.summaries for g in groups)]
    head = "".join(f"<th>{m}</th>" for m in shown)
    rows = []
    for k, g in enumerate(groups):
        links = ", ".join(f'<a href="#run-{ids[id(r)]}">{r.spec.seed}</a>' for r in g.runs)
        opts = "<br>".join(f"<code>{_e(o)}={_e(v)}</code>" for o, v in g.options.items()) or "–"
        cells = "".join(_cell(g.summaries.get(m), m) for m in shown)
        rows.append(f"<tr><td class=l>{_e(g.strategy)}</td><td class=l>{_e(g.stream)}</td><td class=l>{opts}</td>"
                    f"<td>{len(g.runs)} ({links})</td><td>{len(g.runs[0].tasks)}</td>{cells}"
                    f"{_cell(g.summaries['params'], 'params')}{_cell(g.summaries['wall'], 'wall')}</tr>")
    return (f"<table><tr><th class=l>strategy</th><th class=l>stream</th><th class=l>options</th><th>seeds</th>"
            f"<th>tasks</th>{head}<th>parameters</th><th>time (s)</th></tr>{''.join(rows)}</table>")


_DEFINITIONS = (
    "R[i][j] is the test accuracy on task j after training task i. AP = mean of the last row; "
    "BWT = mean over the first T-1 tasks of R[T-1][j] - R[j][j] (negative = forgetting); AF (PAR's) = "
    "the same mean over all T tasks; F (forgetting, Chaudhry et al. 2018) = mean over the first T-1 tasks "
    "of the best earlier accuracy minus the final one (positive = forgetting); FWT against a reference "
    "run's diagonal. Runs that differ only in their seed are aggregated: mean ± sample sd, and the "
    "Student-t 95% confidence interval of the mean. Parameters: the final net's total."
)


def _metrics_table(r: RunData) -> str:
    m = r.metrics
    cells = "".join(f"<th>{_e(k)}</th>" for k in m) + "<th>parameters</th><th>time (s)</th>"
    vals = "".join(f"<td>{_fmt(v, k)}</td>" for k, v in m.items())
    return (f"<table><tr>{cells}</tr><tr>{vals}<td>{r.params_total:,}</td><td>{r.wall_time:.1f}</td></tr></table>")


def _params_section(r: RunData, charts) -> str:
    from jointnet.persistence.views import task_params

    tp = task_params(r.net, r.store)
    names = list(tp)
    series = {"owned": [tp[t]["owned"] for t in names], "shared": [tp[t]["shared"] for t in names],
              "reused from other tasks": [tp[t]["reused"] for t in names]}
    title = "parameters each task's network uses"
    chart = (charts.bars(names, series, _PARAM_COLORS, title) if charts
             else svg.bars(names, series, _PARAM_COLORS, title))
    rows = "".join(
        f"<tr><td class=l>{_e(t)}</td><td>{tp[t]['owned']:,}</td><td>{tp[t]['shared']:,}</td>"
        f"<td>{tp[t]['reused']:,}</td><td>{tp[t]['total']:,}</td><td>{r.results['params'][i]['total']:,}</td></tr>"
        for i, t in enumerate(names))
    table = ("<details><summary>table</summary><table><tr><th class=l>task</th><th>owned</th><th>shared</th>"
             "<th>reused</th><th>task's network</th><th>net total after the task</th></tr>"
             f"{rows}</table></details>")
    note = ("<p class=note>owned: tensors (or, with an owner map, entries) the task owns; shared: tensors of "
            "nodes several tasks use that no task owns; reused: what other tasks own and this task's forward "
            "pass reads. From the last snapshot.</p>")
    return f"<h3>Parameters per task</h3><div class=charts>{chart}</div>{note}{table}"


def _capacity_section(r: RunData) -> str:
    from jointnet.persistence.capacity import capacity

    if r.store is None:
        return ""
    cap = capacity(r.net, r.store)
    if not cap:
        return ""
    rows = []
    for t, v in cap["tasks"].items():
        used = "–" if v["used"] is None else f"{100 * v['used']:.1f}%"
        owned = "–" if v["owned"] is None else f"{100 * v['owned']:.1f}%"
        rows.append(f"<tr><td class=l>{_e(t)}</td><td>{used}</td><td>{owned}</td></tr>")
    tensors = "".join(
        f"<tr><td class=l>{_e(e['node'])}.{_e(e['param'])}</td><td>{e['numel']:,}</td><td class=l>{_e(e['via'])}</td>"
        f"<td>{100 * e['free']:.1f}%</td></tr>" for e in cap["tensors"])
    free = "" if cap["free"] is None else f" Free capacity overall: {100 * cap['free']:.1f}%."
    return ("<h3>Capacity (mask methods)</h3>"
            f"<p class=note>Fraction of the masked / owned / gated tensors each task uses and owns, weighted by "
            f"tensor size.{free}</p><div class=charts><table><tr><th class=l>task</th><th>uses</th><th>owns</th></tr>"
            f"{''.join(rows)}</table><table><tr><th class=l>tensor</th><th>size</th><th class=l>via</th>"
            f"<th>free</th></tr>{tensors}</table></div>")


def _arch_tasks(tasks: list[str]) -> list[str]:
    if len(tasks) <= ARCH_TASKS:
        return tasks
    n = len(tasks) - 1
    picks = sorted({round(k * n / (ARCH_TASKS - 1)) for k in range(ARCH_TASKS)})
    return [tasks[i] for i in picks]


def _arch_section(r: RunData, rid: str) -> str:
    from jointnet.persistence.views import task_params

    tasks = r.tasks
    shown = _arch_tasks(tasks)
    tp = task_params(r.net, r.store)
    figs = []
    for k, t in enumerate(shown):
        drawing = svg.architecture(r.net, t, f"a{rid}-{k}")
        route = r.net.route(t)
        own = sum(1 for n in route if len(r.net.users(n)) == 1)
        cap = (f"{_e(t)}: {len(route)} nodes ({own} its own, {len(route) - own} shared); "
               f"{tp[t]['total']:,} parameters, {tp[t]['owned']:,} owned")
        figs.append(f"<figure>{drawing}<figcaption>{cap}</figcaption></figure>")
    note = "" if len(shown) == len(tasks) else (
        f"<p class=note>{len(shown)} of {len(tasks)} tasks drawn: the first, the last and evenly spaced ones.</p>")
    legend = ("<p class=note>Coloured boxes: nodes only this task uses; grey with a bold border: nodes several "
              "tasks share (x N: how many).</p>")
    return f"<h3>Architecture per task (final net)</h3>{legend}{note}<div class=arch>{''.join(figs)}</div>"


def _log_section(r: RunData) -> str:
    from jointnet.persistence.views import call_summary, history

    hist = history(r.net)
    width = len(str(hist[-1]["version"])) if hist else 1
    lines = [f"v{rec['version']:<{width}}  {call_summary(rec['name'], rec['kwargs'])}" for rec in hist[:LOG_LINES]]
    more = f"\n... {len(hist) - LOG_LINES} more records (jointnet log SNAP)" if len(hist) > LOG_LINES else ""
    return (f"<h3>Rewrite log</h3><details><summary>{len(hist)} rewrites (one line each; "
            f"<code>jointnet log --full</code> prints every argument)</summary><pre>{_e(chr(10).join(lines) + more)}"
            "</pre></details>")


def _run_section(r: RunData, rid: str, charts) -> str:
    names = r.tasks
    R = r.matrix
    title = f"{r.spec.strategy} on {r.spec.stream}, seed {r.spec.seed}"
    if charts:
        heat, curve = charts.heatmap(names, R, "accuracy matrix"), charts.curves(names, R, "accuracy per task")
    else:
        heat = svg.heatmap(names, R, f"h{rid}", "accuracy matrix")
        curve = svg.curves(names, R, "accuracy per task")
    status = "" if r.complete else (f" <span class=note>(incomplete: {r.results['done']} of "
                                    f"{len(r.results['tasks'])} tasks)</span>")
    return (f'<h2 id="run-{rid}">{_e(title)}{status}</h2>'
            f"<p class=meta>{_e(str(r.path))} · snapshot {_e(r.snapshot.name)} · net version {r.net.version}</p>"
            f"{_metrics_table(r)}<div class=charts>{heat}{curve}</div>"
            f"{_params_section(r, charts)}{_capacity_section(r)}{_arch_section(r, rid)}{_log_section(r)}")


def build_report(runs: list[RunData], *, charts: str = "auto", title: str | None = None) -> str:
    """The HTML page for validated `runs` (`load_run`), charts drawn by `charts` (`CHARTS`)."""
    from jointnet import __version__

    if not runs:
        raise JointNetError("a report needs at least one run")
    mode, module = _charts(charts)
    ids = {id(r): str(k + 1) for k, r in enumerate(runs)}
    groups = group_runs(runs)
    if title is None:
        strategies = ", ".join(dict.fromkeys(r.spec.strategy for r in runs))
        streams = ", ".join(dict.fromkeys(r.spec.stream for r in runs))
        title = f"jointnet report: {strategies} on {streams}"
    nav = "".join(f'<a href="#run-{k + 1}">{_e(r.spec.strategy)} / {_e(r.spec.stream)} / seed {r.spec.seed}</a>'
                  for k, r in enumerate(runs))
    body = [f"<h1>{_e(title)}</h1>",
            f"<p class=meta>{len(runs)} run(s) in {len(groups)} group(s); jointnet {_e(__version__)}; charts: {mode}</p>",
            f"<nav>{nav}</nav>",
            "<h2>Summary across runs</h2>", _summary_table(groups, ids), f"<p class=note>{_e(_DEFINITIONS)}</p>"]
    for k, r in enumerate(runs):
        body.append(_run_section(r, str(k + 1), module))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _check_output(path: Path) -> Path:
    if path.is_dir():
        raise JointNetError(f"-o {str(path)!r} is a directory; give a file name such as report.html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise JointNetError(f"-o {str(path)!r}: the report file name must end in .html or .htm")
    if not path.parent.is_dir():
        raise JointNetError(f"-o {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    if path.exists() and not path.is_file():
        raise JointNetError(f"-o {str(path)!r} exists and is not a regular file")
    return path


def write_report(run_dirs: list[str | os.PathLike], out: str | os.PathLike, *, charts: str = "auto",
                 title: str | None = None) -> tuple[Path, list[RunData]]:
    """Validate every run directory and the output path first, then write the page atomically
    (a temporary file beside `out`, then a rename). Returns the path and the runs.

    Raises:
        JointNetError: a bad run directory (naming it), an output that is a directory or whose
            folder does not exist or whose name does not end in .html / .htm, matplotlib asked
            for and missing.
    """
    out = _check_output(Path(out))
    _charts(charts)  # a missing extra fails before any run is read
    seen: dict[Path, RunData] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key not in seen:  # a run named twice is shown once
            seen[key] = load_run(d)
    runs = list(seen.values())
    text = build_report(runs, charts=charts, title=title)
    write_bytes_atomically(out, text)
    return out, runs
