"""Run a strategy over a task stream: train, evaluate, snapshot after every task, resume.

Layout of an output directory:

- ``run.json``: what was asked (strategy and options, stream and options, seed, train config);
  ``--resume DIR`` reads it, so a resumed run needs no other arguments;
- ``snapshots/task_NN_NAME.jn``: the net and every tensor it references after task NN;
- ``results.json``: accuracy matrix, metrics, parameter counts and wall time per task;
  rewritten (atomically) after every task, it also says how many tasks are done;
- ``results.csv``: one row per task: parameters and the accuracy on every task seen so far;
- ``log.txt``: a line per epoch and per task.

Determinism: each task starts from seeds derived from (seed, task index) and the state the
previous task left in the snapshot, so a run killed mid-task and resumed ends with exactly the
results of one never interrupted (on CPU).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import secrets
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import attrs
import torch

from jointnet.persistence import snapshot
from jointnet.errors import JointNetError
from jointnet.experiments.metrics import summarize
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.experiments.trainer import TrainConfig
from jointnet.persistence.views import param_counts

__all__ = ["run", "resume", "run_tasks", "TaskOutcome", "RunSpec", "print_results", "format_matrix"]

RESULTS_VERSION = 1


@attrs.frozen
class RunSpec:
    """Everything that defines a run; saved as run.json."""

    strategy: str
    stream: str
    seed: int = 0
    strategy_options: dict = attrs.field(factory=dict)
    stream_options: dict = attrs.field(factory=dict)
    config: dict = attrs.field(factory=dict)  # TrainConfig fields
    reference: str | None = None  # results.json whose diagonal is the FWT reference


def _atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it, as `snapshot.save` does: the same
    name pattern (``.NAME.<12 hex>.tmp``, so `_clean_stale` finds leftovers of a kill) and the same
    mode (0o666 less the umask) for every file of a run."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Temporary files this module and `snapshot.save` create beside a run's files; a kill during a
# write leaves one behind, and `resume` removes them (only regular files of exactly this form).
_STALE = re.compile(r"\.(run\.json|results\.json|results\.csv|task_\d{2,}_[A-Za-z0-9_.:+@/-]+\.jn)"
                    r"\.[0-9a-f]{12}\.tmp")


def _clean_stale(out: Path) -> list[Path]:
    """Remove the temporary files a killed write left in `out` and `out/snapshots`."""
    gone = []
    for folder in (out, out / "snapshots"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in os.scandir(folder):
            if _STALE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                gone.append(Path(entry.path))
    return gone


def format_matrix(names: list[str], R: list[list[float | None]]) -> str:
    """The accuracy matrix as text: row i = after training task i, column j = task j."""
    w = max(8, *(len(n) + 2 for n in names))
    lines = [" " * 12 + "".join(f"{n:>{w}}" for n in names)]
    for name, row in zip(names, R):
        cells = "".join(f"{a:>{w}.3f}" if a is not None else f"{'':>{w}}" for a in row)
        lines.append(f"after {name:<6}"[:12].ljust(12) + cells)
    return "\n".join(lines)


def print_results(results: dict, echo: Callable[[str], Any] = print) -> None:
    names = results["tasks"][: len(results["matrix"])]
    echo(f"\n{results['strategy']} on {results['stream']} (seed {results['seed']})")
    echo("accuracy matrix R[i][j] (row: after training task i; column: task j)")
    echo(format_matrix(names, results["matrix"]))
    m = results.get("metrics") or {}
    if m:
        parts = [f"{k} = {v:+.4f}" if k in ("AF", "BWT", "FWT") else f"{k} = {v:.4f}" for k, v in m.items()]
        echo("  ".join(parts))
    if results["params"]:
        p = results["params"][-1]
        owned = ", ".join(f"{t}={n}" for t, n in p["owned"].items())
        echo(f"parameters: total {p['total']}, shared {p['shared']}, owned {owned}")
    echo(f"wall time: {sum(results['wall_time']):.1f}s ({', '.join(f'{t:.1f}' for t in results['wall_time'])})")


def _load_stream(spec: RunSpec):
    from jointnet.experiments.streams import get_stream

    return get_stream(spec.stream, seed=spec.seed, **spec.stream_options)


@attrs.frozen
class TaskOutcome:
    """What one task of a stream left: the net and store after it, the test accuracy on every
    task so far (a row of the accuracy matrix), wall time and epochs trained."""

    index: int
    task: str
    net: JointNet
    store: ParamStore
    row: list
    wall: float
    epochs: int


def run_tasks(
    strategy: Any, stream: Any, config: TrainConfig, *, seed: int = 0, net: JointNet | None = None,
    store: ParamStore | None = None, start: int = 0, echo: Callable[[str], Any] | None = print,
) -> Iterator[TaskOutcome]:
    """The one runner loop: for every task of `stream` from `start`, call ``strategy.step``,
    realize the store, evaluate every task so far on its test split; yields a `TaskOutcome` per
    task. `jointnet run`, resume and the searches all run streams through it.

    Determinism: each task starts from seeds derived from (seed, task index) and the state the
    previous task left, so the same inputs give the same numbers on CPU, resumed or not.
    """
    from jointnet.experiments.strategy import TaskRun

    net = JointNet.empty() if net is None else net
    store = ParamStore(seed=seed, device=config.device) if store is None else store
    for i in range(start, len(stream.tasks)):
        task = stream.tasks[i]
        torch.manual_seed(seed * 7919 + i)
        t0 = time.perf_counter()
        run = TaskRun(task, i, stream, store, config, seed, getattr(strategy, "name", "?"), echo)
        net = strategy.step(net, run)
        store.realize(net)
        wall = time.perf_counter() - t0
        row = [run.accuracy(net, t, "test") for t in stream.tasks[: i + 1]]
        yield TaskOutcome(i, task.name, net, store, row, wall, sum(r.epochs_run for r in run.results))


def run(spec: RunSpec, out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False) -> dict:
    """Run `spec` into `out` (created; must not hold another run). Returns the results dict."""
    out = Path(out)
    if (out / "run.json").exists():
        raise JointNetError(f"{out} already holds a run; use resume or another --out")
    from jointnet.experiments.strategy import get
    from jointnet.experiments.streams import STREAMS

    get(spec.strategy, **spec.strategy_options)  # fail before writing anything
    if spec.stream not in STREAMS:
        raise JointNetError(f"no stream {spec.stream!r}; known: {', '.join(STREAMS)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "snapshots").mkdir(exist_ok=True)
    _atomic_write(out / "run.json", json.dumps(attrs.asdict(spec), indent=2))
    return _go(spec, out, echo=echo, progress=progress)


def resume(out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False) -> dict:
    """Continue the run in `out` from its last snapshot (or finish at once if it is complete).

    Everything read from `out` is validated first (run.json, results.json, the snapshot names it
    lists); a damaged file is a `JointNetError` naming it, before anything is written. Temporary
    files left by a kill during a write are removed.
    """
    out = Path(out)
    spec = _read_spec(out / "run.json")
    _clean_stale(out)
    return _go(spec, out, echo=echo, progress=progress)


_SPEC_TYPES = {
    "strategy": (str,), "stream": (str,), "seed": (int,), "strategy_options": (dict,),
    "stream_options": (dict,), "config": (dict,), "reference": (str, type(None)),
}


def _read_spec(path: Path) -> RunSpec:
    """The RunSpec in run.json, every field's type checked."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise JointNetError(f"{path.parent} holds no run (no run.json)") from None
    except (OSError, ValueError) as e:
        raise JointNetError(f"{path} is not a valid run description: {e}") from None
    if not isinstance(raw, dict) or set(raw) != set(_SPEC_TYPES):
        raise JointNetError(f"{path} is not a valid run description: it must be a map with the keys "
                            f"{', '.join(_SPEC_TYPES)}")
    for key, types in _SPEC_TYPES.items():
        if type(raw[key]) not in types:
            raise JointNetError(f"{path} is not a valid run description: {key} must be "
                                f"{' or '.join(t.__name__ for t in types)}, got {raw[key]!r:.60}")
    return RunSpec(**raw)


def _snapshot_name(i: int, task: str) -> str:
    return str(Path("snapshots") / f"task_{i:02d}_{task}.jn")


def _read_results(path: Path, spec: RunSpec, names: list[str]) -> dict:
    """results.json of a run, checked against its run.json and stream: a damaged or foreign file
    is a one-line `JointNetError` naming what is wrong, never a traceback or a read elsewhere."""

    def bad(why: str) -> JointNetError:
        return JointNetError(f"{path} is damaged ({why}); the snapshots in {path.parent / 'snapshots'} "
                             "are untouched: remove results.json and the snapshots to start over")

    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise bad(f"not readable JSON: {e}") from None
    keys = {"format", "strategy", "stream", "seed", "tasks", "done", "matrix", "metrics", "params",
            "wall_time", "epochs", "snapshots"}
    if not isinstance(res, dict) or not keys <= set(res):
        raise bad(f"it must be a map with the keys {', '.join(sorted(keys))}")
    if res["format"] != RESULTS_VERSION:
        raise bad(f"format {res['format']!r:.20}, this jointnet writes {RESULTS_VERSION}")
    for key in ("strategy", "stream", "seed", "tasks"):
        want = names if key == "tasks" else getattr(spec, key)
        if res[key] != want:
            raise bad(f"its {key} {res[key]!r:.60} is not the run's {want!r:.60}")
    done = res["done"]
    if type(done) is not int or not 0 <= done <= len(names):
        raise bad(f"done must be an int in [0, {len(names)}], got {done!r:.20}")
    for key in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        if not isinstance(res[key], list) or len(res[key]) != done:
            raise bad(f"{key} must be a list of {done} entries, one per finished task")
    for i, row in enumerate(res["matrix"]):
        if (not isinstance(row, list) or len(row) != i + 1
                or not all(type(a) in (int, float) and math.isfinite(a) for a in row)):
            raise bad(f"matrix row {i} must hold {i + 1} accuracies")
    for i, p in enumerate(res["params"]):
        if (not isinstance(p, dict) or type(p.get("total")) is not int or type(p.get("shared")) is not int
                or not isinstance(p.get("owned"), dict)):
            raise bad(f"params entry {i} must be a map with total, shared and owned")
    for i, w in enumerate(res["wall_time"]):
        if type(w) not in (int, float) or not math.isfinite(w):
            raise bad(f"wall_time entry {i} must be a number")
    for i, snap in enumerate(res["snapshots"]):
        if snap != _snapshot_name(i, names[i]):
            raise bad(f"snapshot entry {i} must be {_snapshot_name(i, names[i])!r}, got {snap!r:.60}")
    if not isinstance(res["metrics"], dict):
        raise bad("metrics must be a map")
    return res


def _go(spec: RunSpec, out: Path, *, echo, progress: bool) -> dict:
    from jointnet.experiments.strategy import get, train_config

    strategy = get(spec.strategy, **spec.strategy_options)
    config = train_config(strategy, **{**spec.config, "seed": spec.seed, "progress": progress})
    stream = _load_stream(spec)
    names = [t.name for t in stream.tasks]
    results_path = out / "results.json"
    resuming = results_path.exists()
    net, store, done = JointNet.empty(), ParamStore(seed=spec.seed, device=config.device), 0
    if resuming:  # everything read from the directory is checked before anything is written
        results = _read_results(results_path, spec, names)
        done = results["done"]
        if done:
            snap = out / results["snapshots"][done - 1]
            net, store = snapshot.load(snap, device=config.device)
            if list(net.tasks) != names[:done]:
                raise JointNetError(f"{snap} holds tasks {list(net.tasks)!r:.80}, not the run's first "
                                    f"{done} tasks {names[:done]!r:.80}")
            store = store or ParamStore(seed=spec.seed, device=config.device)
            store.seed = spec.seed
    else:
        results = {
            "format": RESULTS_VERSION, "strategy": spec.strategy, "stream": spec.stream, "seed": spec.seed,
            "tasks": names, "done": 0, "matrix": [], "metrics": {}, "params": [], "wall_time": [],
            "epochs": [], "snapshots": [],
        }
    logf = open(out / "log.txt", "a")

    def say(msg: str) -> None:
        logf.write(msg + "\n")
        logf.flush()
        echo(msg)

    if resuming:
        say(f"resuming {out}: {done} of {len(names)} tasks done")
    try:
        for o in run_tasks(strategy, stream, config, seed=spec.seed, net=net, store=store, start=done, echo=say):
            snap = _snapshot_name(o.index, o.task)
            snapshot.save(out / snap, o.net, o.store)
            results["matrix"].append(o.row)
            results["params"].append(_counts(o.net))
            results["wall_time"].append(o.wall)
            results["epochs"].append(o.epochs)
            results["snapshots"].append(snap)
            results["done"] = o.index + 1
            results["metrics"] = _metrics(results, spec, out)
            _atomic_write(results_path, json.dumps(results, indent=2))
            _write_csv(out / "results.csv", results)
            say(f"task {o.index + 1}/{len(names)} {o.task}: " + " ".join(f"{a:.3f}" for a in o.row)
                + f"  ({o.wall:.1f}s, version {o.net.version})")
    finally:
        logf.close()
    return results


def _counts(net: JointNet) -> dict:
    c = param_counts(net)
    return {"total": c["total"], "shared": c["shared"], "owned": dict(c["owned"])}


def _metrics(results: dict, spec: RunSpec, out: Path) -> dict:
    R = [[a for a in row] + [None] * (len(results["matrix"]) - len(row)) for row in results["matrix"]]
    ref = None
    if spec.reference:
        ref_path = Path(spec.reference)
        ref_path = ref_path if ref_path.is_absolute() else (out / ref_path)
        other = json.loads(ref_path.read_text())["matrix"]
        if len(other) >= len(R):
            ref = [other[j][j] for j in range(len(R))]
    return summarize(R, ref)


def _write_csv(path: Path, results: dict) -> None:
    names = results["tasks"]
    rows = []
    for i, row in enumerate(results["matrix"]):
        p = results["params"][i]
        rows.append([i, names[i], f"{results['wall_time'][i]:.3f}", p["total"], p["shared"],
                     p["owned"].get(names[i], 0)] + [f"{a:.6f}" for a in row] + [""] * (len(names) - len(row)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "task", "wall_time_s", "params_total", "params_shared", "params_owned"]
               + [f"acc_{n}" for n in names])
    w.writerows(rows)
    _atomic_write(path, buf.getvalue())
