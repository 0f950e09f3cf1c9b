"""Run a strategy over a task stream: train, evaluate, snapshot after every task, resume.

What a run directory holds and how it is read back is `jointnet.experiments.rundir`; several
seeds of one configuration are `jointnet.experiments.sweep`.

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

import json
import math
import os
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
from jointnet.experiments.rundir import (
    EFFECTIVE_KEYS, RESULTS_VERSION, RUN_FORMAT, RunSpec, check_out, clean_stale, create, read_json, read_record,
    read_results, remove_created, results_problem, snapshot_name, versions, write_csv, write_text,
)
from jointnet.experiments.trainer import TrainConfig, TrainProgress, observe, torch_threads
from jointnet.graph.net import JointNet
from jointnet.persistence import snapshot
from jointnet.persistence.views import param_counts

__all__ = [
    "run", "resume", "prepare", "Plan", "run_tasks", "TaskOutcome", "RunSpec", "conflicts", "print_results",
    "format_matrix",
]


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
    epochs whose mean loss was not finite (only with ``allow_nonfinite``), and the CPU seconds
    of this process and the worker processes it waited for (over the same span as `wall`: the
    strategy's step and the realize; on a CPU shared with other jobs it follows their load far
    less than `wall`)."""

    index: int
    task: str
    net: JointNet
    store: ParamStore
    row: list
    wall: float
    epochs: int
    nonfinite: int = 0
    cpu: float = 0.0


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children, user + system."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


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
        t0, c0 = time.perf_counter(), _cpu_seconds()
        run = TaskRun(task, i, stream, store, config, seed, getattr(strategy, "name", "?"), echo)
        net = strategy.step(net, run)
        store.realize(net)
        if store.device.type == "cuda":  # the step's kernels, not just their launches
            torch.cuda.synchronize(store.device)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        row = [run.accuracy(net, t, "test") for t in stream.tasks[: i + 1]]
        nonfinite = sum(1 for r in run.results for h in r.history if not math.isfinite(h.get("loss", 0.0)))
        yield TaskOutcome(i, task.name, net, store, row, wall, sum(r.epochs_run for r in run.results), nonfinite,
                          cpu)


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
                "versions": versions()}

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
        res = read_json(results_path, "results file")
    except JointNetError as e:
        raise JointNetError(f"{where}: {e}") from None
    why = results_problem(res, names, {"stream": plan.spec.stream})
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


# ---- running -------------------------------------------------------------------------------------


def run(spec: RunSpec, out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False) -> dict:
    """Run `spec` into `out` (created; must not hold another run). Returns the results dict.

    Everything is checked and the stream built (`prepare`) before `out` is touched. If the run
    fails before its first task is done, the files it created are removed again; Ctrl-C leaves
    them for `resume`.
    """
    out = Path(out)
    check_out(out)
    plan = prepare(spec, progress=progress)
    made = create(out, plan.record)
    state = {"done": 0}
    try:
        return _go(plan, out, echo=echo, progress=progress, state=state)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        if state["done"] == 0:
            remove_created(out, made)
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
    clean_stale(out)
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
                snap = snapshot_name(o.index, o.task)
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
                write_text(results_path, json.dumps(results, indent=2))
                write_csv(out / "results.csv", results)
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
    for kind in EFFECTIVE_KEYS:
        for key, value in (given.get(kind) or {}).items():
            recorded = eff[kind].get(key, "(not an option of the recorded run)")
            if key not in eff[kind] or not opts.same_value(value, recorded):
                found.append((kind, key, value, recorded))
    return found
