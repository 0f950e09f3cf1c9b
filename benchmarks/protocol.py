"""The benchmark protocol the method benchmarks share (L2BG, SPG, GROWN, PAR, LASEM, baselines).

A benchmark is a grid of *arms* (a strategy with options, under one label) x *streams* x
*paired seeds*: every arm runs on the same seeds, so seed ``s`` of two arms sees the same stream
draw, and differences are compared seed by seed (paired 95% CIs,
`jointnet.experiments.stats.paired`), which is far tighter than comparing unpaired intervals.

- `run_grid` runs every (stream, arm, seed) through the core's one runner loop
  (`jointnet.experiments.runner.run_tasks`, the same seeds and calls as ``jointnet run``, the
  strategy's ``recommended_config`` under the grid's config as `jointnet run` applies it) and
  writes a run directory per cell: ``OUT/STREAM/ARM/seed-S-DIGEST/`` with ``run.json`` (the
  `RunSpec`, as `jointnet run` writes it) and ``result.json`` (accuracy matrix, metrics,
  parameter counts, wall and CPU seconds per task, the final net's annotations; with
  ``snapshots="last"`` / ``"every"`` the snapshot after the last / every task,
  ``snapshot-I.jn`` for task index I, read back with `Run.load`). A cell whose directory holds
  a finished result is *reused* only after its ``run.json`` is checked to equal the spec wanted
  now (strategy, every option, stream options, train config, seed); a directory whose spec
  differs is never overwritten (the digest in the name differs, so the changed cell reruns
  beside it); a result that lacks what the tables read (CPU seconds, a snapshot asked for now)
  is run again in place. A run whose loss diverges
  (`jointnet.errors.NonFiniteLoss`) is a *failed* cell: its one-line reason is recorded and
  reused like a result, tables leave it out and say how many seeds failed.
- An arm's options may depend on earlier arms' runs of the same seed (`Arm.derive`: e.g. a
  random-growth control matched to the guided run's parameter count): arms run in order, seed by
  seed, and the derived options are part of the recorded spec.
- `table` prints one markdown table per stream: each metric's mean ± sd over seeds and, for the
  paired metrics, the mean difference against a named control arm with its 95% CI.
- `check_validation` refuses a stream whose tasks have fewer than ``min_val`` (200) validation
  images: measurements taken on validation data (RSA, gains) are noise below that.

Defaults: seeds 0-4 (`SEEDS`), 200 validation images per task at least (`MIN_VAL`).

>>> s = fmt_ci(paired([0.90, 0.91, 0.95], [0.80, 0.82, 0.84]))
>>> s
'+0.1000 [+0.0752, +0.1248]'
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from jointnet.errors import JointNetError, NonFiniteLoss
from jointnet.experiments.runner import RunSpec, run_tasks
from jointnet.experiments.stats import Summary, paired, summary
from jointnet.experiments.strategy import get, train_config
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet
from jointnet.persistence.views import param_counts

__all__ = [
    "SEEDS", "MIN_VAL", "Arm", "Run", "Metric", "METRICS", "run_grid", "run_cell", "load_cell", "cell_dir",
    "check_validation", "table", "fmt_summary", "fmt_ci", "by_seed", "finished", "values", "failures",
]

SEEDS = (0, 1, 2, 3, 4)
MIN_VAL = 200
RESULT_FORMAT = 1
SNAPSHOTS = ("none", "last", "every")


@attrs.frozen
class Arm:
    """One row of a benchmark: `label` runs `strategy` with `options`.

    `derive(seed, runs)` (optional) returns options added for `seed`, from ``runs``: the
    finished `Run` of every earlier arm of the same stream and seed, by label. `seeds` limits the
    arm to a subset of the grid's seeds (None: all).
    """

    label: str
    strategy: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    derive: Callable[[int, Mapping[str, "Run"]], Mapping[str, Any]] | None = None
    seeds: tuple[int, ...] | None = None


@attrs.frozen
class Run:
    """A finished cell: its arm label, stream, seed, directory, spec and result dict."""

    label: str
    stream: str
    seed: int
    dir: Path
    spec: dict
    result: dict
    reused: bool = False

    @property
    def failed(self) -> str | None:
        """The one-line reason the run stopped (its loss diverged), None for a finished run."""
        return self.result.get("failed")

    @property
    def metrics(self) -> dict:
        return self.result["metrics"]

    @property
    def matrix(self) -> list:
        return self.result["matrix"]

    @property
    def params(self) -> int:
        return int(self.result["params"][-1]["total"])

    @property
    def node_params(self) -> dict[str, int]:
        """Parameters of every node of the final net (buffers excluded)."""
        return self.result["node_params"]

    @property
    def annotations(self) -> dict:
        """The final net's annotations: ``{"net": {...}, "tasks": {task: {...}}, "nodes": {...}}``."""
        return self.result["annotations"]

    @property
    def cpu(self) -> list[float]:
        """CPU seconds of each task's step (`jointnet.experiments.runner.TaskOutcome.cpu`)."""
        return self.result["cpu_time"]

    def load(self, index: int = -1):
        """``(net, store)`` of the snapshot after task `index` (negative: from the end), written
        by ``snapshots="every"`` (any task) or ``"last"`` (the last one)."""
        n = len(self.matrix)
        i = index + n if index < 0 else index
        path = self.dir / f"snapshot-{i}.jn"
        if not 0 <= i < n or i not in self.result.get("snapshots", []):
            raise JointNetError(f"{self.dir}: no snapshot after task index {index} (ran with snapshots="
                                f"{'every' if len(self.result.get('snapshots', [])) > 1 else 'last or none'})")
        from jointnet.persistence import snapshot

        return snapshot.load(path)


def _slug(label: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_")
    return s[:80] or "arm"


def _digest(spec: dict) -> str:
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=5).hexdigest()


def cell_dir(out: Path, stream: str, label: str, spec: dict) -> Path:
    """The directory of one cell: ``OUT/STREAM/ARM/seed-S-DIGEST`` (DIGEST: of the whole spec)."""
    return Path(out) / _slug(stream) / _slug(label) / f"seed-{spec['seed']}-{_digest(spec)}"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON-ready copy of an annotation value (frozen maps and tuples thawed)."""
    v = thaw(value)
    return json.loads(json.dumps(v, default=str))


def _annotations(net: JointNet) -> dict:
    return {
        "net": {k: _plain(v) for k, v in net.annotations.items()},
        "tasks": {t: {k: _plain(v) for k, v in info.annotations.items()} for t, info in net.tasks.items()},
        "nodes": {n: {k: _plain(v) for k, v in net.node(n).annotations.items()}
                  for n in net.nodes if net.node(n).annotations},
    }


def load_cell(path: Path, spec: dict, snapshots: str = "none") -> dict | None:
    """The result in cell directory `path` when it is finished, its ``run.json`` equals `spec`
    and it kept the `snapshots` wanted (a failed cell keeps none); None when there is nothing to
    reuse (no directory, an unfinished or unreadable result, snapshots missing).

    Raises:
        JointNetError: the directory holds a run of another spec (a digest collision or an edited
            file): it is never overwritten.
    """
    run_json, result_json = path / "run.json", path / "result.json"
    if not run_json.exists():
        return None
    try:
        recorded = json.loads(run_json.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded != spec:
        raise JointNetError(f"{run_json} records another run than the one wanted here; move it away to rerun "
                            f"(recorded {json.dumps(recorded, sort_keys=True)[:200]})")
    try:
        result = json.loads(result_json.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT or not result.get("done"):
        return None
    if result.get("failed") is None and (
            "cpu_time" not in result  # written before CPU seconds were recorded: run it again
            or not set(_kept(snapshots, len(result["matrix"]))) <= set(result.get("snapshots", []))):
        return None
    return result


def _kept(snapshots: str, n_tasks: int) -> list[int]:
    """Task indices whose snapshot a cell keeps."""
    if snapshots not in SNAPSHOTS:
        raise JointNetError(f"snapshots must be one of {', '.join(SNAPSHOTS)}, not {snapshots!r}")
    return {"none": [], "last": [n_tasks - 1], "every": list(range(n_tasks))}[snapshots]


def run_cell(spec: RunSpec, out: Path, *, label: str, stream_obj: Any = None, snapshots: str = "none",
             folder: str | None = None, echo: Callable[[str], Any] | None = None) -> Run:
    """Run (or reuse) one cell; returns its `Run`. `stream_obj`: the stream already built from
    the spec's stream name, options and seed (built here when None); `folder`: the stream's
    folder under `out` (default the stream's name); `snapshots`: ``"none"``, ``"last"`` or
    ``"every"`` (the snapshot after every task)."""
    want = attrs.asdict(spec)
    path = cell_dir(out, folder or spec.stream, label, want)
    _kept(snapshots, 1)  # a bad value fails before anything runs
    old = load_cell(path, want, snapshots)
    if old is not None:
        return Run(label, folder or spec.stream, spec.seed, path, want, old, reused=True)
    strategy = get(spec.strategy, **spec.strategy_options)
    config = train_config(strategy, **{**spec.config, "seed": spec.seed})
    if stream_obj is None:
        from jointnet.experiments.streams import get_stream

        stream_obj = get_stream(spec.stream, seed=spec.seed, **spec.stream_options)
    path.mkdir(parents=True, exist_ok=True)
    _write(path / "run.json", json.dumps(want, indent=2, sort_keys=True))
    from jointnet.persistence import snapshot

    n = len(stream_obj.tasks)
    keep = _kept(snapshots, n)
    matrix, params, wall, cpu, net, kept = [], [], [], [], None, []
    t0 = time.perf_counter()
    result = {"format": RESULT_FORMAT, "done": True, "tasks": [t.name for t in stream_obj.tasks]}
    try:
        for o in run_tasks(strategy, stream_obj, config, seed=spec.seed, echo=echo):
            matrix.append(o.row)
            c = param_counts(o.net)
            params.append({"total": c["total"], "shared": c["shared"], "owned": dict(c["owned"])})
            wall.append(o.wall)
            cpu.append(o.cpu)
            net = o.net
            if o.index in keep:
                snapshot.save(path / f"snapshot-{o.index}.jn", o.net, o.store)
                kept.append(o.index)
    except NonFiniteLoss as e:  # recorded, reused, left out of the tables; any other error propagates
        result.update(failed=f"task {len(matrix) + 1} of {n}: {str(e).splitlines()[0]}", matrix=matrix,
                      seconds=time.perf_counter() - t0)
        _write(path / "result.json", json.dumps(result))
        return Run(label, folder or spec.stream, spec.seed, path, want, result)
    from jointnet.experiments.metrics import summarize

    result.update({
        "matrix": matrix, "metrics": summarize(matrix), "params": params, "wall_time": wall, "cpu_time": cpu,
        "seconds": time.perf_counter() - t0, "snapshots": kept,
        "n_val": [len(t.y_val) for t in stream_obj.tasks], "n_test": [len(t.y_test) for t in stream_obj.tasks],
        "annotations": _annotations(net),
        "node_params": {n: sum(p.numel for p in net.node(n).params if not p.buffer) for n in net.nodes},
    })
    _write(path / "result.json", json.dumps(result))
    return Run(label, folder or spec.stream, spec.seed, path, want, result)


def check_validation(stream: Any, min_val: int = MIN_VAL) -> None:
    """Refuse a stream with a task of fewer than `min_val` validation images (one clear line)."""
    small = [(t.name, len(t.y_val)) for t in stream.tasks if len(t.y_val) < min_val]
    if small:
        raise JointNetError(f"stream {stream.name!r}: tasks {small} have fewer than {min_val} validation images; "
                            "raise the stream's validation size (val_fraction / per-class sizes)")


def run_grid(
    arms: Sequence[Arm], streams: Mapping[str, Mapping[str, Any]], *, out: str | Path, seeds: Sequence[int] = SEEDS,
    config: Mapping[str, Any] | None = None, min_val: int = MIN_VAL, snapshots: str = "none",
    echo: Callable[[str], Any] | None = functools.partial(print, flush=True),
    stream_names: Mapping[str, str] | None = None,
) -> dict[tuple[str, str, int], Run]:
    """Run every arm on every stream and seed (reusing finished cells); returns
    ``{(stream key, arm label, seed): Run}``.

    `streams`: ``{key: stream options}``; the stream registered as `stream_names[key]` (default:
    the key itself) is built once per seed with those options. `config`: `TrainConfig` fields
    for every run. `snapshots`: which snapshots every cell keeps (`run_cell`). Labels must be
    unique.
    """
    from jointnet.experiments.streams import get_stream

    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise JointNetError(f"arm labels repeat: {labels}")
    out = Path(out)
    grid: dict[tuple[str, str, int], Run] = {}
    for key, s_opts in streams.items():
        name = (stream_names or {}).get(key, key)
        for seed in seeds:
            stream = get_stream(name, seed=seed, **dict(s_opts))
            check_validation(stream, min_val)
            done: dict[str, Run] = {}
            for arm in arms:
                if arm.seeds is not None and seed not in arm.seeds:
                    continue
                opts = dict(arm.options)
                if arm.derive is not None:
                    opts.update(arm.derive(seed, done))
                spec = RunSpec(arm.strategy, name, seed, strategy_options=json.loads(json.dumps(opts)),
                               stream_options=dict(s_opts), config=dict(config or {}))
                t0 = time.perf_counter()
                r = run_cell(spec, out, label=arm.label, stream_obj=stream, snapshots=snapshots, folder=key)
                done[arm.label] = r
                grid[(key, arm.label, seed)] = r
                if echo is not None:
                    how = "reused" if r.reused else f"{time.perf_counter() - t0:.1f}s"
                    what = f"FAILED ({r.failed})" if r.failed else f"AP {r.metrics['AP']:.4f}"
                    echo(f"  {key} seed {seed} {arm.label}: {what}  ({how})")
    return grid


# ---- tables --------------------------------------------------------------------------------------


@attrs.frozen
class Metric:
    """A column: `name`, how to read it from a run (`value(run, runs of the same seed by label)`
    -> float or None), its format, and whether differences against the control are shown."""

    name: str
    value: Callable[[Run, Mapping[str, Run]], float | None]
    fmt: str = ".4f"
    paired: bool = True


METRICS = {
    "AP": Metric("AP", lambda r, _: r.metrics["AP"]),
    "BWT": Metric("BWT", lambda r, _: r.metrics["BWT"], "+.4f"),
    "params": Metric("params", lambda r, _: float(r.params), ".0f", paired=False),
    "AF": Metric("AF", lambda r, _: r.metrics["AF"], "+.4f"),
    "time": Metric("time (s)", lambda r, _: float(r.result["seconds"]), ".1f", paired=False),
    "cpu": Metric("CPU s", lambda r, _: float(sum(r.cpu)), ".1f", paired=False),
}


def fmt_summary(s: Summary, spec: str = ".4f") -> str:
    """``mean ± sd`` of a `Summary`."""
    return f"{s.mean:{spec}} ± {s.sd:{spec.lstrip('+')}}"


def fmt_ci(s: Summary, spec: str = "+.4f") -> str:
    """``mean [lo, hi]`` of a paired `Summary` (its 95% CI)."""
    return f"{s.mean:{spec}} [{s.ci95[0]:{spec}}, {s.ci95[1]:{spec}}]"


def by_seed(grid: Mapping[tuple[str, str, int], Run], stream: str) -> dict[int, dict[str, Run]]:
    """``{seed: {label: Run}}`` of one stream of a grid."""
    out: dict[int, dict[str, Run]] = {}
    for (s, label, seed), r in grid.items():
        if s == stream:
            out.setdefault(seed, {})[label] = r
    return out


def finished(seeds: Mapping[int, Mapping[str, Run]], label: str) -> dict[int, Run]:
    """``{seed: Run}`` of arm `label`'s finished (not failed) cells in `seeds` (`by_seed` of one
    stream), in seed order."""
    return {seed: runs[label] for seed, runs in sorted(seeds.items()) if label in runs and not runs[label].failed}


def values(grid: Mapping[tuple[str, str, int], Run], stream: str, label: str, metric: Metric | str) -> dict[int, float]:
    """``{seed: value}`` of `metric` for arm `label` on `stream`, over the seeds it finished
    (a value that is None or not finite is left out)."""
    m = METRICS[metric] if isinstance(metric, str) else metric
    seeds = by_seed(grid, stream)
    out = {}
    for seed, run in finished(seeds, label).items():
        v = m.value(run, seeds[seed])
        if v is not None and math.isfinite(v):
            out[seed] = float(v)
    return out


def failures(grid: Mapping[tuple[str, str, int], Run], stream: str, labels: Iterable[str]) -> list[str]:
    """One line per arm with failed cells on `stream`: its seeds and their reasons."""
    lines = []
    for label in labels:
        bad = [f"seed {seed}: {runs[label].failed}" for seed, runs in sorted(by_seed(grid, stream).items())
               if label in runs and runs[label].failed]
        if bad:
            lines.append(f"Failed runs, {label}: " + "; ".join(bad))
    return lines


def table(grid: Mapping[tuple[str, str, int], Run], stream: str, *, control: str,
          metrics: Iterable[Metric | str] = ("AP", "BWT", "params"), labels: Sequence[str] | None = None) -> str:
    """One markdown table of `stream`: a row per arm (`labels`, default every arm in grid order),
    per metric its mean ± sd over seeds, and for paired metrics the mean difference against arm
    `control` on the seeds both ran, with the paired 95% CI (``-`` for the control itself or
    without two common seeds). Failed cells are left out; the arm's label says how many."""
    ms = [METRICS[m] if isinstance(m, str) else m for m in metrics]
    seeds = by_seed(grid, stream)
    if labels is None:
        labels = list(dict.fromkeys(label for (s, label, _) in grid if s == stream))
    head = ["arm", "n"]
    for m in ms:
        head.append(m.name)
        if m.paired:
            head.append(f"Δ {m.name} vs {control} [95% CI]")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        failed = sum(1 for runs in seeds.values() if label in runs and runs[label].failed)
        ran = sum(1 for runs in seeds.values() if label in runs)
        cells = [f"{label} ({failed} of {ran} seeds failed)" if failed else label]
        n = 0
        for m in ms:
            vals = values(grid, stream, label, m)
            n = max(n, len(vals))
            cells.append(fmt_summary(summary(list(vals.values())), m.fmt) if vals else "-")
            if m.paired:
                ref = values(grid, stream, control, m)
                common = sorted(set(vals) & set(ref))
                if label == control or len(common) < 2:
                    cells.append("-")
                else:
                    spec = m.fmt if m.fmt.startswith("+") else "+" + m.fmt
                    cells.append(fmt_ci(paired([vals[s] for s in common], [ref[s] for s in common]), spec))
        cells.insert(1, str(n))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
