"""Run a strategy over a task stream: train, evaluate, snapshot after every task, resume; and run
several seeds of one configuration (a sweep) with an aggregate over them.

Layout of an output directory:

- ``run.json``: what was asked and what it meant (format 2): the strategy, stream, seed,
  reference and data folder; the options as given (``strategy_options``, ``stream_options``,
  ``config``), from which a resume rebuilds the run; under ``effective`` every option in force
  (strategy options from ``attrs.asdict`` of the built strategy, stream options with their
  defaults, the whole `TrainConfig` but ``progress``); under ``versions`` jointnet's, torch's
  and Python's. Format 1 (no ``format`` key: the options as given only) is still read.
- ``snapshots/task_NN_NAME.jn``: the net and every tensor it references after task NN;
- ``results.json``: accuracy matrix, metrics, parameter counts and wall time per task;
  rewritten (atomically) after every task, it also says how many tasks are done;
- ``results.csv``: one row per task: parameters and the accuracy on every task seen so far;
- ``log.txt``: a line per epoch and per task.

A sweep directory (``--seeds``) holds ``sweep.json`` (the seeds), one run directory per seed
(``seed0``, ``seed1``, ...) and, once every seed is done, ``aggregate.json`` and
``aggregate.csv``: mean, sample sd and Student-t 95% CI over the seeds (`stats.summary`) of AP,
AF, F, BWT, FWT (when the runs have a reference), the final parameter count and the wall time.

Nothing is written before everything is checked: strategy, stream and trainer options (with
"did you mean" for unknown keys, `jointnet.experiments.options`), the reference and the stream
itself (built first). A run that fails during its first task removes the files it created (and
only those); a later failure, or Ctrl-C, leaves a consistent directory that ``resume``
continues.

Determinism: each task starts from seeds derived from (seed, task index) and the state the
previous task left in the snapshot, so a run killed mid-task and resumed ends with exactly the
results of one never interrupted (on CPU, with the same ``threads``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from jointnet.errors import JointNetError
from jointnet.execution.store import ParamStore
from jointnet.experiments import options as opts
from jointnet.experiments.metrics import summarize
from jointnet.experiments.stats import summary
from jointnet.experiments.trainer import TrainConfig, TrainProgress, observe, torch_threads
from jointnet.graph.net import JointNet
from jointnet.persistence import snapshot
from jointnet.persistence.views import param_counts

__all__ = [
    "run", "resume", "prepare", "Plan", "run_tasks", "TaskOutcome", "RunSpec", "read_spec", "read_record",
    "read_results", "conflicts", "is_complete", "print_results", "format_matrix", "start_sweep", "read_sweep",
    "seed_dir", "aggregate", "write_aggregate", "format_aggregate", "RUN_FORMAT", "RESULTS_VERSION",
]

RESULTS_VERSION = 1
RUN_FORMAT = 2
SWEEP_FORMAT = 1
SWEEP_FILE = "sweep.json"
_OWN_FILES = ("run.json", "results.json", "results.csv", "log.txt")
_SNAPSHOT = re.compile(r"task_\d{2,}_[A-Za-z0-9_.:+@/-]+\.jn")


@attrs.frozen
class RunSpec:
    """Everything that defines a run, as asked: saved in run.json.

    ``reference`` is a results.json (or a run directory) whose diagonal is the FWT reference; a
    relative path is taken from the current directory when the run starts (run.json records it
    absolute). ``data_dir`` is where the stream's files are (`jointnet.experiments.data`).
    """

    strategy: str
    stream: str
    seed: int = 0
    strategy_options: dict = attrs.field(factory=dict)
    stream_options: dict = attrs.field(factory=dict)
    config: dict = attrs.field(factory=dict)  # TrainConfig fields
    reference: str | None = None
    data_dir: str | None = None


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
_STALE = re.compile(r"\.(run\.json|results\.json|results\.csv|sweep\.json|aggregate\.json|aggregate\.csv"
                    r"|task_\d{2,}_[A-Za-z0-9_.:+@/-]+\.jn)\.[0-9a-f]{12}\.tmp")


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


_METRIC_NAMES = {"AP": "AP", "AF": "AF (PAR)", "F": "F (forgetting)", "BWT": "BWT", "FWT": "FWT"}


def print_results(results: dict, echo: Callable[[str], Any] = print) -> None:
    """The accuracy matrix, the metrics (AF, BWT, FWT signed; F positive = forgetting),
    parameters and wall time of `results`."""
    names = results["tasks"][: len(results["matrix"])]
    echo(f"\n{results['strategy']} on {results['stream']} (seed {results['seed']})")
    echo("accuracy matrix R[i][j] (row: after training task i; column: task j)")
    echo(format_matrix(names, results["matrix"]))
    m = results.get("metrics") or {}
    if m:
        parts = [f"{_METRIC_NAMES.get(k, k)} = {v:+.4f}" if k in ("AF", "BWT", "FWT") else
                 f"{_METRIC_NAMES.get(k, k)} = {v:.4f}" for k, v in m.items()]
        echo("  ".join(parts))
    if results["params"]:
        p = results["params"][-1]
        owned = ", ".join(f"{t}={n}" for t, n in p["owned"].items())
        echo(f"parameters: total {p['total']}, shared {p['shared']}, owned {owned}")
    echo(f"wall time: {sum(results['wall_time']):.1f}s ({', '.join(f'{t:.1f}' for t in results['wall_time'])})")
    bad = results.get("nonfinite") or {}
    if bad:
        echo("non-finite loss (allow_nonfinite): " + ", ".join(f"{t}: {n} epoch(s)" for t, n in bad.items()))


@attrs.frozen
class TaskOutcome:
    """What one task of a stream left: the net and store after it, the test accuracy on every
    task so far (a row of the accuracy matrix), wall time, epochs trained and, of those, the
    epochs whose mean loss was not finite (only with ``allow_nonfinite``)."""

    index: int
    task: str
    net: JointNet
    store: ParamStore
    row: list
    wall: float
    epochs: int
    nonfinite: int = 0


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
        nonfinite = sum(1 for r in run.results for h in r.history if not math.isfinite(h.get("loss", 0.0)))
        yield TaskOutcome(i, task.name, net, store, row, wall, sum(r.epochs_run for r in run.results), nonfinite)


# ---- run.json ------------------------------------------------------------------------------------

_V1_TYPES = {
    "strategy": (str,), "stream": (str,), "seed": (int,), "strategy_options": (dict,),
    "stream_options": (dict,), "config": (dict,), "reference": (str, type(None)),
}
_V2_TYPES = {**_V1_TYPES, "format": (int,), "data_dir": (str, type(None)), "effective": (dict,),
             "versions": (dict,)}
_EFFECTIVE_KEYS = ("strategy_options", "stream_options", "config")
# The longest a run.json, results.json or sweep.json may be (they are read whole), and how deeply
# its values may nest (ours nest a few levels: a backbone is a list of maps).
MAX_RECORD_BYTES = 64 << 20
MAX_RECORD_DEPTH = 32


def _read_json(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise JointNetError(f"{path} is not a file")
        if size > MAX_RECORD_BYTES:
            raise JointNetError(f"{path} is not a valid {what}: {size} bytes, more than {MAX_RECORD_BYTES}")
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise JointNetError(f"{path} is not a valid {what}: {e}") from None
    except RecursionError:
        raise JointNetError(f"{path} is not a valid {what}: nested too deeply") from None
    if _depth(data) > MAX_RECORD_DEPTH:
        raise JointNetError(f"{path} is not a valid {what}: nested deeper than {MAX_RECORD_DEPTH} levels")
    return data


def _depth(value: Any) -> int:
    """How deeply lists and maps nest in `value` (iteratively: hostile input cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_record(path: str | os.PathLike) -> dict:
    """The run.json at `path`, every field's type checked (format 1 or 2), as a dict with the
    format-2 keys (``format``, ``data_dir``, ``effective`` and ``versions`` are 1, None, {}
    and {} for a format-1 file).

    Raises:
        JointNetError: no such file, not JSON, or a field of the wrong type (named).
    """
    path = Path(path)
    try:
        raw = _read_json(path, "run description")
    except FileNotFoundError:
        raise JointNetError(f"{path.parent} holds no run (no run.json)") from None
    if not isinstance(raw, dict):
        raise JointNetError(f"{path} is not a valid run description: it must be a map")
    fmt = raw.get("format", 1)
    types = _V2_TYPES if fmt == RUN_FORMAT else _V1_TYPES if "format" not in raw else None
    if types is None:
        raise JointNetError(f"{path} is not a valid run description: format {fmt!r:.20}; this jointnet "
                            f"reads formats 1 and {RUN_FORMAT}")
    if set(raw) != set(types):
        raise JointNetError(f"{path} is not a valid run description: it must be a map with the keys "
                            f"{', '.join(types)}")
    for key, allowed in types.items():
        if type(raw[key]) not in allowed:
            raise JointNetError(f"{path} is not a valid run description: {key} must be "
                                f"{' or '.join(t.__name__ for t in allowed)}, got {raw[key]!r:.60}")
    if fmt == RUN_FORMAT:
        eff = raw["effective"]
        if set(eff) != set(_EFFECTIVE_KEYS) or not all(type(eff[k]) is dict for k in _EFFECTIVE_KEYS):
            raise JointNetError(f"{path} is not a valid run description: effective must be a map of "
                                f"{', '.join(_EFFECTIVE_KEYS)}, each a map")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw["versions"].items()):
            raise JointNetError(f"{path} is not a valid run description: versions must map names to strings")
    out = {"format": 1, "data_dir": None, "effective": {}, "versions": {}, **raw}
    if out["format"] == 1 and isinstance(out["stream_options"].get("data_dir"), str):
        # format 1 kept the data folder among the stream options (-S data_dir=...)
        out["stream_options"] = {k: v for k, v in out["stream_options"].items() if k != "data_dir"}
        out["data_dir"] = raw["stream_options"]["data_dir"]
    return out


def read_spec(path: str | os.PathLike) -> RunSpec:
    """The `RunSpec` (options as given) of the run.json at `path`; see `read_record`."""
    rec = read_record(path)
    return RunSpec(**{k: rec[k] for k in (a.name for a in attrs.fields(RunSpec))})


_read_spec = read_spec  # the name other modules used before


def _versions() -> dict[str, str]:
    from jointnet import __version__

    return {"jointnet": __version__, "torch": torch.__version__, "python": platform.python_version()}


# ---- preparing a run -----------------------------------------------------------------------------


@attrs.frozen
class Plan:
    """A run ready to start: everything built and checked, nothing written yet.

    Attributes:
        spec: the run as asked (relative reference and data folder made absolute).
        strategy: the built strategy.
        config: the `TrainConfig` it trains with (progress aside, as recorded).
        stream: the built stream.
        effective: every option in force (``strategy_options``, ``stream_options``, ``config``).
        reference: the reference accuracy of every task (the FWT reference), or None.
        notes: lines worth saying before the run starts (options pinned on resume).
    """

    spec: RunSpec
    strategy: Any
    config: TrainConfig
    stream: Any
    effective: dict
    reference: list[float] | None = None
    notes: tuple[str, ...] = ()

    @property
    def record(self) -> dict:
        """run.json (format 2)."""
        return {"format": RUN_FORMAT, **attrs.asdict(self.spec), "effective": self.effective,
                "versions": _versions()}

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.stream.tasks]


def _check_spec_types(spec: RunSpec) -> None:
    for key, allowed in (("strategy", str), ("stream", str), ("strategy_options", dict), ("stream_options", dict),
                         ("config", dict)):
        if not isinstance(getattr(spec, key), allowed):
            raise JointNetError(f"{key} must be a {allowed.__name__}, got {getattr(spec, key)!r:.60}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        raise JointNetError(f"the seed (--seed) must be an int >= 0 (got {spec.seed!r:.40})")
    for key in ("reference", "data_dir"):
        if getattr(spec, key) is not None and not isinstance(getattr(spec, key), str):
            raise JointNetError(f"{key} must be a path or None, got {getattr(spec, key)!r:.60}")


def _build_strategy(spec: RunSpec, pinned: dict | None, notes: list[str]) -> Any:
    from jointnet.experiments.strategy import get

    opts.check_strategy_options(spec.strategy, spec.strategy_options)
    strategy = get(spec.strategy, **spec.strategy_options)
    if pinned is None:
        return strategy
    # A resumed run keeps the options it was made with, even where this jointnet's defaults moved.
    now = opts.effective_strategy_options(strategy)
    gone = [k for k in pinned if k not in now]
    if gone:
        raise JointNetError(f"the run was made with {spec.strategy} option {gone[0]!r}, which this jointnet's "
                            f"{spec.strategy} no longer has; resume it with the jointnet that made it")
    moved = {k: pinned[k] for k in pinned if not opts.same_value(pinned[k], now[k])}
    if not moved:
        return strategy
    for k, v in moved.items():
        notes.append(f"note: {spec.strategy} option {k} keeps the run's value {v!r} (this jointnet's default "
                     f"is {now[k]!r})")
    return get(spec.strategy, **{**spec.strategy_options, **moved})


def _effective_stream(spec: RunSpec, pinned: dict | None, notes: list[str]) -> tuple[dict, dict]:
    """(every stream option in force, the recorded values that differ from this jointnet's
    defaults and must be passed explicitly)."""
    effective = opts.check_stream_options(spec.stream, spec.stream_options)
    if pinned is None:
        return effective, {}
    gone = [k for k in pinned if k not in effective]
    if gone:
        raise JointNetError(f"the run was made with stream option {gone[0]!r}, which this jointnet's "
                            f"{spec.stream} no longer has; resume it with the jointnet that made it")
    moved = {k: pinned[k] for k in pinned if not opts.same_value(pinned[k], effective[k])}
    for k, v in moved.items():
        notes.append(f"note: stream option {k} keeps the run's value {v!r} (this jointnet's default is "
                     f"{opts.json_safe(effective[k])!r})")
    return {**effective, **moved}, moved


def _train_config(spec: RunSpec, strategy: Any, pinned: dict | None, progress: bool) -> TrainConfig:
    from jointnet.experiments.strategy import train_config

    if pinned is not None:  # a resumed run trains exactly as recorded
        fields = {k: v for k, v in pinned.items() if k != "progress"}
        opts.check_train_options(fields, flag="run.json config")
        return TrainConfig(**{**fields, "seed": spec.seed, "progress": progress})
    opts.check_train_options(spec.config)
    try:
        return train_config(strategy, **{**spec.config, "seed": spec.seed, "progress": progress})
    except (TypeError, ValueError) as e:  # a strategy's recommended config the trainer refuses
        raise JointNetError(f"the trainer refuses the config of {spec.strategy}: {e}") from None


def _effective_config(config: TrainConfig) -> dict:
    return {k: v for k, v in opts.json_safe(attrs.asdict(config)).items() if k != "progress"}


def prepare(spec: RunSpec, *, progress: bool = False, recorded: dict | None = None,
            base: str | os.PathLike | None = None) -> Plan:
    """Check `spec` and build what its run needs; writes nothing.

    Args:
        spec: the run as asked.
        progress: show progress bars (goes into the `TrainConfig`).
        recorded: the run.json of the run being resumed (`read_record`): a format-2 record pins
            every effective option (a default that moved since keeps the run's value).
        base: the folder a format-1 record's relative reference is relative to (its run).

    Raises:
        JointNetError: an unknown strategy, stream or option (with the closest names), a value
            of the wrong type or out of range (naming the option and what it accepts), a device
            this machine lacks, missing data, or a reference that is not a finished run of the
            same stream and tasks.
    """
    _check_spec_types(spec)
    if "data_dir" in spec.stream_options:  # scripts written before RunSpec.data_dir
        given_dir = spec.stream_options["data_dir"]
        if spec.data_dir is not None and given_dir != spec.data_dir:
            raise JointNetError(f"two data folders: data_dir={spec.data_dir!r} and stream option data_dir="
                                f"{given_dir!r}")
        spec = attrs.evolve(spec, data_dir=given_dir,
                            stream_options={k: v for k, v in spec.stream_options.items() if k != "data_dir"})
        _check_spec_types(spec)
    pins = (recorded or {}).get("effective") or {}
    notes: list[str] = []
    strategy = _build_strategy(spec, pins.get("strategy_options") if pins else None, notes)
    stream_options, moved = _effective_stream(spec, pins.get("stream_options") if pins else None, notes)
    config = _train_config(spec, strategy, pins.get("config") if pins else None, progress)
    data_dir = os.path.abspath(os.path.expanduser(spec.data_dir)) if spec.data_dir else None
    reference = spec.reference
    if reference is not None and not os.path.isabs(reference):
        reference = os.path.abspath(os.path.join(base, reference) if base is not None else reference)
    spec = attrs.evolve(spec, reference=reference, data_dir=data_dir)
    from jointnet.experiments.streams import get_stream

    stream = get_stream(spec.stream, seed=spec.seed, data_dir=data_dir, **{**spec.stream_options, **moved})
    effective = {"strategy_options": opts.effective_strategy_options(strategy),
                 "stream_options": opts.json_safe(dict(stream.options)), "config": _effective_config(config)}
    plan = Plan(spec, strategy, config, stream, effective, None, tuple(notes))
    if reference is not None:
        plan = attrs.evolve(plan, reference=_reference(Path(reference), plan))
    return plan


def _reference(path: Path, plan: Plan) -> list[float]:
    """The diagonal of the finished run at `path` (its results.json, or its directory), checked
    to be a run of the same stream, stream options and tasks as `plan`."""
    results_path = path / "results.json" if path.is_dir() else path
    where = f"--reference {path}"
    if not results_path.is_file():
        raise JointNetError(f"{where}: no such results.json (give the results.json of a finished run, "
                            "or its directory)")
    names = plan.names
    try:
        res = _read_json(results_path, "results file")
    except JointNetError as e:
        raise JointNetError(f"{where}: {e}") from None
    why = _results_problem(res, names, {"stream": plan.spec.stream})
    if why:
        raise JointNetError(f"{where}: not a results.json of this run's stream and tasks ({why})")
    if res["done"] != len(names):
        raise JointNetError(f"{where}: the reference run has {res['done']} of {len(names)} tasks done; "
                            "its diagonal needs all of them")
    theirs = res.get("stream_options")
    if theirs is None:  # results written before results.json carried them: its run.json
        try:
            rec = read_record(results_path.parent / "run.json")
        except JointNetError as e:
            raise JointNetError(f"{where}: its stream options cannot be checked ({e})") from None
        theirs = rec["effective"].get("stream_options") if rec["format"] == RUN_FORMAT else None
        if theirs is None:
            theirs = opts.check_stream_options(rec["stream"], rec["stream_options"])
    mine = plan.effective["stream_options"]
    if not isinstance(theirs, dict):
        raise JointNetError(f"{where}: its stream_options must be a map")
    for key in sorted(set(mine) | set(theirs)):
        if not opts.same_value(mine.get(key), theirs.get(key)):
            raise JointNetError(f"{where}: the reference ran {plan.spec.stream} with {key}="
                                f"{theirs.get(key)!r:.40}, this run with {key}={mine.get(key)!r:.40}")
    return [float(res["matrix"][j][j]) for j in range(len(names))]


# ---- results.json --------------------------------------------------------------------------------

_RESULTS_KEYS = {"format", "strategy", "stream", "seed", "tasks", "done", "matrix", "metrics", "params",
                 "wall_time", "epochs", "snapshots"}


def _snapshot_name(i: int, task: str) -> str:
    return str(Path("snapshots") / f"task_{i:02d}_{task}.jn")


def _results_problem(res: Any, names: list[str], expect: dict) -> str | None:
    """Why `res` is not a results.json of a run with task `names` and the `expect`ed strategy /
    stream / seed, or None."""
    if not isinstance(res, dict) or not _RESULTS_KEYS <= set(res):
        return f"it must be a map with the keys {', '.join(sorted(_RESULTS_KEYS))}"
    if res["format"] != RESULTS_VERSION:
        return f"format {res['format']!r:.20}, this jointnet writes {RESULTS_VERSION}"
    for key, want in [*expect.items(), ("tasks", names)]:
        if res[key] != want:
            return f"its {key} {res[key]!r:.60} is not the run's {want!r:.60}"
    done = res["done"]
    if type(done) is not int or not 0 <= done <= len(names):
        return f"done must be an int in [0, {len(names)}], got {done!r:.20}"
    for key in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        if not isinstance(res[key], list) or len(res[key]) != done:
            return f"{key} must be a list of {done} entries, one per finished task"
    for i, row in enumerate(res["matrix"]):
        if (not isinstance(row, list) or len(row) != i + 1
                or not all(type(a) in (int, float) and math.isfinite(a) for a in row)):
            return f"matrix row {i} must hold {i + 1} accuracies"
    for i, p in enumerate(res["params"]):
        if (not isinstance(p, dict) or type(p.get("total")) is not int or type(p.get("shared")) is not int
                or not isinstance(p.get("owned"), dict)):
            return f"params entry {i} must be a map with total, shared and owned"
    for i, w in enumerate(res["wall_time"]):
        if type(w) not in (int, float) or not math.isfinite(w):
            return f"wall_time entry {i} must be a number"
    for i, snap in enumerate(res["snapshots"]):
        if snap != _snapshot_name(i, names[i]):
            return f"snapshot entry {i} must be {_snapshot_name(i, names[i])!r}, got {snap!r:.60}"
    if not isinstance(res["metrics"], dict):
        return "metrics must be a map"
    if "stream_options" in res and not isinstance(res["stream_options"], dict):
        return "stream_options must be a map"
    bad = res.get("nonfinite", {})
    if not isinstance(bad, dict) or not all(k in names and type(v) is int and v >= 0 for k, v in bad.items()):
        return "nonfinite must map task names to counts"
    return None


def read_results(path: str | os.PathLike, spec: RunSpec, names: list[str]) -> dict:
    """results.json of a run, checked against its run.json and stream: a damaged or foreign file
    is a one-line `JointNetError` naming what is wrong, never a traceback or a read elsewhere."""
    path = Path(path)

    def bad(why: str) -> JointNetError:
        return JointNetError(f"{path} is damaged ({why}); the snapshots in {path.parent / 'snapshots'} "
                             "are untouched: remove results.json and the snapshots to start over")

    try:
        res = _read_json(path, "results file")
    except (FileNotFoundError, JointNetError) as e:
        raise bad(f"not readable JSON: {e}") from None
    why = _results_problem(res, names, {"strategy": spec.strategy, "stream": spec.stream, "seed": spec.seed})
    if why:
        raise bad(why)
    return res


_read_results = read_results  # the name other modules used before


def is_complete(out: str | os.PathLike) -> bool:
    """Whether the run in `out` has finished every task (by its results.json; False when absent
    or unreadable)."""
    try:
        res = json.loads((Path(out) / "results.json").read_bytes())
        return isinstance(res, dict) and isinstance(res.get("tasks"), list) and res.get("done") == len(res["tasks"])
    except (OSError, ValueError):
        return False


# ---- running -------------------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    """`out` may take a new run: absent, or a folder holding no file a run writes."""
    if out.exists() and not out.is_dir():
        raise JointNetError(f"--out {out} is not a directory")
    if (out / "run.json").exists():
        raise JointNetError(f"{out} already holds a run; resume it with `jointnet run --resume {out}` "
                            "or choose another --out")
    if (out / SWEEP_FILE).exists():
        raise JointNetError(f"{out} already holds a sweep; resume it with `jointnet run --resume {out}` "
                            "or choose another --out")
    for name in (*_OWN_FILES[1:], "aggregate.json", "aggregate.csv"):
        if os.path.lexists(out / name):
            raise JointNetError(f"--out {out} holds {name}, which a run would overwrite; choose another --out")
    snaps = out / "snapshots"
    if os.path.lexists(snaps) and (not snaps.is_dir() or snaps.is_symlink() or any(snaps.iterdir())):
        raise JointNetError(f"--out {out} holds snapshots/, which a run would write into; choose another --out")


def _create(out: Path, record: dict) -> list[Path]:
    """Make `out` (and snapshots/) and write run.json; returns the folders it made, outermost first."""
    text = json.dumps(record, indent=2)  # before anything is made: a value JSON cannot hold fails here
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)][::-1]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "snapshots").exists():
        (out / "snapshots").mkdir()
        made.append(out / "snapshots")
    _atomic_write(out / "run.json", text)
    return made


def _remove_created(out: Path, made: list[Path]) -> None:
    """Undo a run that failed before finishing a task: remove the files such a run writes (they
    were absent before it started: `_check_out`) and the folders it made, if empty."""
    for name in _OWN_FILES:
        p = out / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    _clean_stale(out)
    snaps = out / "snapshots"
    if snaps.is_dir() and not snaps.is_symlink():
        for entry in os.scandir(snaps):
            if _SNAPSHOT.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
    for folder in reversed(made):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            break


def run(spec: RunSpec, out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False) -> dict:
    """Run `spec` into `out` (created; must not hold another run). Returns the results dict.

    Everything is checked and the stream built (`prepare`) before `out` is touched. If the run
    fails before its first task is done, the files it created are removed again; Ctrl-C leaves
    them for `resume`.
    """
    out = Path(out)
    _check_out(out)
    plan = prepare(spec, progress=progress)
    made = _create(out, plan.record)
    state = {"done": 0}
    try:
        return _go(plan, out, echo=echo, progress=progress, state=state)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        if state["done"] == 0:
            _remove_created(out, made)
            if isinstance(e, JointNetError):
                e.args = (f"{e}; nothing was kept in {out}",)
        raise


def resume(out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False,
           data_dir: str | None = None) -> dict:
    """Continue the run in `out` from its last snapshot (or finish at once if it is complete).

    Everything read from `out` is validated first (run.json, results.json, the snapshot names it
    lists); a damaged file is a `JointNetError` naming it, before anything is written. Temporary
    files left by a kill during a write are removed. `data_dir` overrides the recorded data
    folder (the data moved); the run's options are the recorded ones (`conflicts` tells which
    given options differ).
    """
    out = Path(out)
    rec = read_record(out / "run.json")
    spec = RunSpec(**{k: rec[k] for k in (a.name for a in attrs.fields(RunSpec))})
    if data_dir is not None:
        spec = attrs.evolve(spec, data_dir=data_dir)
    plan = prepare(spec, progress=progress, recorded=rec if rec["format"] == RUN_FORMAT else None, base=out)
    _clean_stale(out)
    return _go(plan, out, echo=echo, progress=progress, state={"done": 0})


class _TaskBars(TrainProgress):
    """One tqdm bar per task of a run, counting the batches of every training call the strategy
    makes for it (its total grows as calls start); per-epoch figures in its postfix."""

    def __init__(self, names: list[str], start: int, *, file=None, disable: bool | None = None):
        self.names, self.index, self.file, self.disable = names, start, file, disable
        self.bar = None

    def begin(self, task: str, epochs: int, n_batches: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            label = f"task {self.index + 1}/{len(self.names)} {self.names[min(self.index, len(self.names) - 1)]}"
            self.bar = tqdm(total=epochs * n_batches, desc=label, unit="batch", leave=False,
                            file=self.file or sys.stderr, disable=self.disable, dynamic_ncols=True)
        else:  # another training call of the same task (a retrain, an independent net): more batches
            self.bar.total += epochs * n_batches
            self.bar.refresh()

    def batch(self) -> None:
        self.bar.update(1)

    def epoch(self, task: str, epoch: int, epochs: int, entry: dict) -> None:
        self.bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{entry['loss']:.3f}",
                             acc=f"{entry['train_acc']:.3f}", refresh=False)

    def next_task(self) -> None:
        self.close()
        self.index += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _go(plan: Plan, out: Path, *, echo, progress: bool, state: dict, bars: _TaskBars | None = None) -> dict:
    spec, config, stream, names = plan.spec, plan.config, plan.stream, plan.names
    results_path = out / "results.json"
    resuming = results_path.exists()
    net, store, done = JointNet.empty(), ParamStore(seed=spec.seed, device=config.device), 0
    if resuming:  # everything read from the directory is checked before anything is written
        results = read_results(results_path, spec, names)
        done = results["done"]
        if done:
            snap = out / results["snapshots"][done - 1]
            net, store = snapshot.load(snap, device=config.device)
            if list(net.tasks) != names[:done]:
                raise JointNetError(f"{snap} holds tasks {list(net.tasks)!r:.80}, not the run's first "
                                    f"{done} tasks {names[:done]!r:.80}")
            store = store or ParamStore(seed=spec.seed, device=config.device)
            store.seed = spec.seed
            results["metrics"] = summarize(_square(results), _ref(plan, done))
    else:
        results = {
            "format": RESULTS_VERSION, "strategy": spec.strategy, "stream": spec.stream, "seed": spec.seed,
            "tasks": names, "done": 0, "matrix": [], "metrics": {}, "params": [], "wall_time": [],
            "epochs": [], "snapshots": [],
        }
    results["stream_options"] = plan.effective["stream_options"]
    results.setdefault("nonfinite", {})
    state["done"] = done
    logf = open(out / "log.txt", "a")

    def say(msg: str) -> None:
        logf.write(msg + "\n")
        logf.flush()
        echo(msg)

    for note in plan.notes:
        say(note)
    if resuming:
        say(f"resuming {out}: {done} of {len(names)} tasks done")
    bars = bars if bars is not None else (_TaskBars(names, done) if progress else None)
    index = done
    try:
        with torch_threads(config.threads), observe(bars):
            for o in run_tasks(plan.strategy, stream, config, seed=spec.seed, net=net, store=store, start=done,
                               echo=say):
                snap = _snapshot_name(o.index, o.task)
                snapshot.save(out / snap, o.net, o.store)
                results["matrix"].append(o.row)
                results["params"].append(_counts(o.net))
                results["wall_time"].append(o.wall)
                results["epochs"].append(o.epochs)
                results["snapshots"].append(snap)
                if o.nonfinite:
                    results["nonfinite"][o.task] = o.nonfinite
                results["done"] = o.index + 1
                results["metrics"] = summarize(_square(results), _ref(plan, o.index + 1))
                _atomic_write(results_path, json.dumps(results, indent=2))
                _write_csv(out / "results.csv", results)
                state["done"] = index = o.index + 1
                if bars is not None:
                    bars.next_task()
                say(f"task {o.index + 1}/{len(names)} {o.task}: " + " ".join(f"{a:.3f}" for a in o.row)
                    + f"  ({o.wall:.1f}s, version {o.net.version})"
                    + (f"  non-finite loss in {o.nonfinite} epoch(s)" if o.nonfinite else ""))
    except KeyboardInterrupt:
        logf.write(f"interrupted during task {index + 1}/{len(names)}; resume with: jointnet run --resume {out}\n")
        raise
    except JointNetError as e:
        kept = f"{index} of {len(names)} tasks are done in {out}" if index else ""
        logf.write(f"stopped during task {index + 1}/{len(names)}: {e}\n")
        if kept:
            e.args = (f"{e}; {kept}",)
        raise
    finally:
        if bars is not None:
            bars.close()
        logf.close()
    return results


def _square(results: dict) -> list[list[float | None]]:
    n = len(results["matrix"])
    return [list(row) + [None] * (n - len(row)) for row in results["matrix"]]


def _ref(plan: Plan, done: int) -> list[float] | None:
    return plan.reference[:done] if plan.reference is not None else None


def _counts(net: JointNet) -> dict:
    c = param_counts(net)
    return {"total": c["total"], "shared": c["shared"], "owned": dict(c["owned"])}


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


# ---- resume: options given again -----------------------------------------------------------------


def _effective_of(rec: dict, base: Path) -> dict:
    """Every option in force in the recorded run: format 2 records them; for format 1 they are
    computed from the options as given (without building the stream)."""
    from jointnet.experiments.strategy import get, train_config

    if rec["format"] == RUN_FORMAT:
        eff = dict(rec["effective"])
    else:
        strategy = get(rec["strategy"], **rec["strategy_options"])
        eff = {"strategy_options": opts.effective_strategy_options(strategy),
               "stream_options": opts.json_safe(opts.check_stream_options(rec["stream"], rec["stream_options"])),
               "config": _effective_config(train_config(strategy, **{**rec["config"], "seed": rec["seed"]}))}
    ref = rec["reference"]
    eff["reference"] = ref if ref is None or os.path.isabs(ref) else os.path.abspath(base / ref)
    return eff


def conflicts(out: str | os.PathLike, given: dict) -> list[tuple[str, str, Any, Any]]:
    """Where options given again with ``--resume`` differ from the run recorded in `out`.

    `given` may hold ``strategy``, ``stream``, ``seed``, ``reference`` (absolute) and the maps
    ``strategy_options``, ``stream_options``, ``config`` (only what was given). Returns
    ``(kind, key, given, recorded)`` tuples, kind being one of those names; empty when every
    given option equals the recorded one (numbers by value: ``100`` equals ``100.0``).
    """
    out = Path(out)
    rec = read_record(out / "run.json")
    eff = _effective_of(rec, out)
    found = []
    for key in ("strategy", "stream", "seed"):
        if key in given and not opts.same_value(given[key], rec[key]):
            found.append((key, key, given[key], rec[key]))
    if given.get("reference") is not None and given["reference"] != eff["reference"]:
        found.append(("reference", "reference", given["reference"], eff["reference"]))
    for kind in _EFFECTIVE_KEYS:
        for key, value in (given.get(kind) or {}).items():
            recorded = eff[kind].get(key, "(not an option of the recorded run)")
            if key not in eff[kind] or not opts.same_value(value, recorded):
                found.append((kind, key, value, recorded))
    return found


# ---- sweeps --------------------------------------------------------------------------------------


def seed_dir(out: str | os.PathLike, seed: int) -> Path:
    """The run directory of `seed` in the sweep `out`: ``OUT/seedN``."""
    return Path(out) / f"seed{seed}"


def _check_seeds(seeds: Any) -> list[int]:
    if (not isinstance(seeds, list) or not 1 <= len(seeds) <= 1000
            or not all(type(s) is int and s >= 0 for s in seeds)):
        raise JointNetError(f"--seeds must be 1 to 1000 ints >= 0 (got {seeds!r:.60})")
    if len(set(seeds)) != len(seeds):
        raise JointNetError(f"--seeds lists a seed twice ({seeds!r:.60})")
    return seeds


def start_sweep(spec: RunSpec, seeds: list[int], out: str | os.PathLike) -> list[Path]:
    """Check `spec` (its stream built for the first seed) and lay out the sweep in `out`:
    ``sweep.json`` and, per seed, a run directory holding run.json only (`resume` runs it).
    Nothing is written when a check fails. Returns the run directories."""
    out = Path(out)
    seeds = _check_seeds(list(seeds))
    _check_out(out)
    for s in seeds:
        if os.path.lexists(seed_dir(out, s)):
            raise JointNetError(f"--out {out} already holds {seed_dir(out, s).name}; choose another --out")
    plan = prepare(attrs.evolve(spec, seed=seeds[0]))
    dirs = []
    made = _create_sweep(out, seeds)
    try:
        for s in seeds:
            p = attrs.evolve(plan, spec=attrs.evolve(plan.spec, seed=s),
                             effective={**plan.effective, "config": {**plan.effective["config"], "seed": s}})
            _create(seed_dir(out, s), p.record)
            dirs.append(seed_dir(out, s))
    except BaseException:
        for d in dirs:
            _remove_created(d, [d, d / "snapshots"])
        (out / SWEEP_FILE).unlink(missing_ok=True)
        _remove_created(out, made)
        raise
    return dirs


def _create_sweep(out: Path, seeds: list[int]) -> list[Path]:
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)][::-1]
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / SWEEP_FILE, json.dumps({"format": SWEEP_FORMAT, "seeds": seeds}, indent=2))
    return made


def read_sweep(out: str | os.PathLike) -> list[int] | None:
    """The seeds of the sweep in `out`, or None when `out` holds no sweep.json.

    Raises:
        JointNetError: a sweep.json that is not ``{"format": 1, "seeds": [ints >= 0]}``.
    """
    path = Path(out) / SWEEP_FILE
    if not os.path.lexists(path):
        return None
    raw = _read_json(path, "sweep description")
    if not isinstance(raw, dict) or set(raw) != {"format", "seeds"} or raw["format"] != SWEEP_FORMAT:
        raise JointNetError(f"{path} is not a valid sweep description: it must be "
                            f'{{"format": {SWEEP_FORMAT}, "seeds": [...]}}')
    try:
        return _check_seeds(raw["seeds"])
    except JointNetError as e:
        raise JointNetError(f"{path} is not a valid sweep description: {e}") from None


_AGGREGATED = ("AP", "AF", "F", "BWT", "FWT")


def aggregate(out: str | os.PathLike) -> dict:
    """Mean, sd and 95% CI over the seeds of the sweep in `out` (every seed must be done) of AP,
    AF, F, BWT, FWT (when every seed has it), ``params`` (final total) and ``wall_time_s``
    (summed over tasks). Each seed's files are validated as `resume` validates them.

    Returns ``{"format", "strategy", "stream", "seeds", "runs", "metrics": {name: {"mean", "sd",
    "n", "ci95", "values"}}}``.
    """
    out = Path(out)
    seeds = read_sweep(out)
    if seeds is None:
        raise JointNetError(f"{out} holds no sweep (no {SWEEP_FILE})")
    per_seed = []
    for s in seeds:
        d = seed_dir(out, s)
        spec = read_spec(d / "run.json")
        if spec.seed != s:
            raise JointNetError(f"{d / 'run.json'} is a run of seed {spec.seed}, not {s}")
        if not (d / "results.json").exists():
            raise JointNetError(f"seed {s} has not finished a task yet ({d}); resume the sweep first")
        raw = _read_json(d / "results.json", "results file")
        names = raw.get("tasks") if isinstance(raw, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise JointNetError(f"{d / 'results.json'} is damaged (tasks must be a list of names)")
        res = read_results(d / "results.json", spec, names)
        if res["done"] != len(names):
            raise JointNetError(f"seed {s} has {res['done']} of {len(names)} tasks done ({d}); resume the sweep first")
        per_seed.append((spec, res))
    first = per_seed[0][0]
    for spec, _ in per_seed[1:]:
        if (spec.strategy, spec.stream) != (first.strategy, first.stream):
            raise JointNetError(f"the runs of {out} are not one configuration ({spec.strategy} on {spec.stream} "
                                f"beside {first.strategy} on {first.stream})")
    values: dict[str, list[float]] = {}
    for name in _AGGREGATED:
        if all(name in r["metrics"] for _, r in per_seed):
            values[name] = [float(r["metrics"][name]) for _, r in per_seed]
    values["params"] = [float(r["params"][-1]["total"]) for _, r in per_seed]
    values["wall_time_s"] = [float(sum(r["wall_time"])) for _, r in per_seed]
    metrics = {k: {**summary(v).to_dict(), "values": v} for k, v in values.items()}
    return {"format": 1, "strategy": first.strategy, "stream": first.stream, "seeds": seeds,
            "runs": [seed_dir(out, s).name for s in seeds], "metrics": metrics}


def write_aggregate(out: str | os.PathLike, agg: dict) -> None:
    """``aggregate.json`` (`agg`) and ``aggregate.csv`` (a row per metric: mean, sd, CI, n, then
    the value of every seed) in `out`."""
    out = Path(out)
    _atomic_write(out / "aggregate.json", json.dumps(agg, indent=2))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "mean", "sd", "ci95_low", "ci95_high", "n"] + [f"seed{s}" for s in agg["seeds"]])
    for name, m in agg["metrics"].items():
        w.writerow([name, repr(m["mean"]), repr(m["sd"]), repr(m["ci95"][0]), repr(m["ci95"][1]), m["n"]]
                   + [repr(v) for v in m["values"]])
    _atomic_write(out / "aggregate.csv", buf.getvalue())


def format_aggregate(agg: dict) -> str:
    """The aggregate as a table: a row per metric, mean ± sd, 95% CI, then each seed's value."""
    seeds = agg["seeds"]
    head = f"{'metric':<12} {'mean ± sd':>22} {'95% CI':>22} " + " ".join(f"{'seed' + str(s):>10}" for s in seeds)
    lines = [f"{agg['strategy']} on {agg['stream']}, {len(seeds)} seed(s)", head]
    for name, m in agg["metrics"].items():
        fmt = (lambda v: f"{v:.0f}") if name == "params" else (lambda v: f"{v:.1f}") if name == "wall_time_s" \
            else (lambda v: f"{v:.4f}")
        ms = f"{fmt(m['mean'])} ± {fmt(m['sd'])}"
        ci = f"[{fmt(m['ci95'][0])}, {fmt(m['ci95'][1])}]"
        lines.append(f"{name:<12} {ms:>22} {ci:>22} " + " ".join(f"{fmt(v):>10}" for v in m["values"]))
    return "\n".join(lines)
