"""Grow-sequence replay and multi-objective search for L2BG with Optuna (spec §2.7).

A *grow sequence* ``pi = [(t, b_t, delta_t)]`` records, per task, the bind target and the grow
coefficient (`strategies.l2bg.grow_sequence` reads it from a net, with the slots each task
grew). `replay_sequence` runs a stream again with that sequence fixed (the `sequence` option of
`L2BG` overrides the RSA argmin and ``delta``): on CPU with the same seed it rebuilds the same
graph and the same accuracies.

`search` looks for Pareto-optimal sequences of the black-box ``F(pi) = (Delta_pi,
|params(G_pi)|)``: maximise the multi-task gain (`strategies.l2bg.net_gain`: percent, positive
= lower validation errors than the independent nets), minimise the number of distinct
parameters of the final JointNet (`jointnet.persistence.views.param_counts` ``total``: every tensor once,
heads included, BatchNorm statistics not). A trial samples, per task after the first, a bind
target among the earlier tasks and a ``delta`` (spec §2.7 search variables), and with
``order="search"`` the task order too; it runs the stream with that sequence (short training)
and returns (gain, params). Search-space options (`SearchSpec`):

- ``order`` = ``"fixed"`` (the stream's order, as in the paper's runs) | ``"search"`` (spec
  §2.7: "the position of t in the sequence (categorical / permutation)"): a permutation in
  *random-key* form, one float ``order_T`` in [0, 1) per task, the tasks sorted by key (ties by
  stream position; `sample_order`). Every permutation is reachable, the search space stays one
  fixed set of parameters whatever the order, and NSGA-II / TPE mutate keys like any float. A
  categorical over all |T|! permutations would not scale, and a categorical bind target whose
  choices depend on the order cannot be one Optuna distribution, so with a searched order
  ``bind_T`` is a float too: the target is earlier task ``floor(u * i)`` of the i before it;
- ``bind`` = ``"search"`` (a categorical per task) | ``"rsa"`` (the RSA argmin, computed on the
  fly; the paper's low-budget mode);
- ``delta_mode`` = ``"per_task"`` | ``"shared"`` (one delta for every task: the paper's
  low-budget mode);
- ``grid`` = 0.05: deltas on ``{0, 0.05, ..., 1}`` (the paper's 21-point grid); None = the
  continuous range [0, 1];
- ``gain`` = ``"error"`` (the spec's relative-error gain) | ``"accuracy"`` (relative accuracy
  change; see `strategies.l2bg.net_gain`);
- ``sampler`` = ``"nsga2"`` (the paper's Optuna NSGA-II; ``population_size = max(4, min(50,
  n_trials // 4))`` so that a small budget gets past the first, random, generation; Optuna's
  default of 50 never would with the paper's 20 trials, spec §2.7) | ``"tpe"`` (Optuna's
  multi-objective TPE).

Trials run in parallel worker processes that share one Optuna study through a journal file
(`strategies.trials`: `optuna.storages.JournalStorage` over a file backend, safe for several
processes, unlike SQLite). The independent nets do not depend on the sequence, so they
are trained once and cached as snapshots next to the journal (`L2BG` option ``cache_dir``).

Command line (a worker per process; the Pareto front is printed as a markdown table)::

    python -m strategies.l2bg_search --stream synthetic --n-trials 8 --workers 2 \\
        --journal runs/l2bg-search/journal.log --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from jointnet.execution.store import ParamStore
from jointnet.experiments.metrics import summarize
from jointnet.experiments.runner import run_tasks
from jointnet.experiments.strategy import Strategy, get
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph.net import JointNet
from jointnet.persistence.views import param_counts
from strategies import trials
from strategies.l2bg import grow_sequence, net_gain

__all__ = [
    "StreamResult", "run_stream", "replay_sequence", "reorder", "SearchSpec", "sample_order", "sample_sequence",
    "make_sampler",
    "population_size", "open_study", "work", "search", "pareto", "format_pareto", "main",
]

ROOT = trials.ROOT


# ---- running a stream in memory -------------------------------------------------------------


@attrs.define
class StreamResult:
    """A finished run: the final net and store, the accuracy matrix (test), its metrics, the
    multi-task gain (validation, percent), the parameter count and the wall time per task."""

    net: JointNet
    store: ParamStore
    matrix: list
    metrics: dict
    gain: float | None
    params: int
    wall_time: list


def run_stream(
    strategy: str | Strategy, stream, config: TrainConfig = TrainConfig(), *, seed: int = 0,
    options: dict | None = None, echo: Callable[[str], Any] | None = None,
) -> StreamResult:
    """Run `strategy` over `stream` in memory through the core's one runner loop
    (`jointnet.experiments.runner.run_tasks`: the same seeds and order of calls as ``jointnet
    run``), so the accuracies equal a ``jointnet run`` of the same spec. `config` is taken as
    given (with `seed`); a strategy's ``recommended_config`` is not applied under it.

    >>> from jointnet.experiments.streams import get_stream
    >>> s = get_stream("synthetic", n_tasks=2, input_shape=(6,), n_train_per_class=8, n_val_per_class=4)
    >>> r = run_stream("l2bg", s, TrainConfig(epochs=1), options={"backbone": [{"kind": "input", "shape": [6]},
    ...     {"kind": "linear", "out_f": 4}, {"kind": "relu"}], "delta": 1.0})
    >>> [e["grow"] for e in grow_sequence(r.net)]
    [['fc1'], ['fc1']]
    """
    strat = get(strategy, **(options or {})) if isinstance(strategy, str) else strategy
    config = attrs.evolve(config, seed=seed)
    net, store = JointNet.empty(), ParamStore(seed=seed, device=config.device)
    matrix, wall = [], []
    for outcome in run_tasks(strat, stream, config, seed=seed, net=net, store=store, echo=echo):
        net = outcome.net
        matrix.append(outcome.row)
        wall.append(outcome.wall)
    return StreamResult(net, store, matrix, summarize(matrix), net_gain(net), param_counts(net)["total"], wall)


def reorder(stream, order: Sequence[str]):
    """`stream` with its tasks in `order` (a permutation of its task names); the same stream
    object when the order is unchanged.

    >>> from jointnet.experiments.streams import get_stream
    >>> s = get_stream("synthetic", n_tasks=3, input_shape=(4,), n_train_per_class=2, n_val_per_class=1)
    >>> reorder(s, ["t3", "t1", "t2"]).task_names
    ('t3', 't1', 't2')
    """
    from jointnet.experiments.streams.core import Stream

    names = [t.name for t in stream.tasks]
    if sorted(order) != sorted(names) or len(set(order)) != len(order):
        raise ValueError(f"order {list(order)} is not a permutation of the stream's tasks {names}")
    if list(order) == names:
        return stream
    by_name = {t.name: t for t in stream.tasks}
    return Stream(stream.name, [by_name[t] for t in order], stream.seed, stream.description, stream.options)


def replay_sequence(
    sequence: Sequence[dict], stream, config: TrainConfig = TrainConfig(), *, seed: int = 0,
    options: dict | None = None, strategy: str = "l2bg", echo: Callable[[str], Any] | None = None,
    order: Sequence[str] | None = None,
) -> StreamResult:
    """Rebuild a net from a grow sequence (e.g. `grow_sequence(net)`): run `stream` with the
    sequence fixed. With the options, config and seed of the original run, on CPU, the result
    has the same graph (``net.structure()``, even the same log) and the same accuracies.

    Entries with a ``task`` key apply to that task, others to the bind-grow steps in order;
    ``bind``, ``delta`` and (optionally) ``grow`` override the strategy's choices. `order`: the
    task order to run the stream in (`reorder`); None keeps the stream's, except that a sequence
    whose ``task`` entries name every task (as `grow_sequence` records them) replays in its own
    order.
    """
    names = [t.name for t in stream.tasks]
    recorded = [e.get("task") for e in sequence]
    if order is None and sorted(t for t in recorded if t) == sorted(names) and None not in recorded:
        order = recorded
    if order is not None:
        stream = reorder(stream, order)
    opts = {**(options or {}), "sequence": [dict(e) for e in sequence]}
    return run_stream(strategy, stream, config, seed=seed, options=opts, echo=echo)


# ---- the search -----------------------------------------------------------------------------


@attrs.frozen
class SearchSpec:
    """Everything a search worker needs; saved as JSON next to the journal."""

    journal: str
    stream: str = "synthetic"
    stream_options: dict = attrs.field(factory=dict)
    seed: int = 0
    config: dict = attrs.field(factory=dict)  # TrainConfig fields
    options: dict = attrs.field(factory=dict)  # L2BG options (backbone, head, ...)
    n_trials: int = 20
    sampler: str = "nsga2"
    bind: str = "search"
    delta_mode: str = "per_task"
    grid: float | None = 0.05
    study_name: str = "l2bg"
    sampler_seed: int = 0
    gain: str = "error"  # the gain objective: `net_gain` metric "error" (spec §2.7) or "accuracy"
    order: str = "fixed"  # "fixed" (the stream's order) or "search" (random-key permutation)

    def __attrs_post_init__(self) -> None:
        for name, allowed in (("sampler", ("nsga2", "tpe")), ("bind", ("search", "rsa")), ("order", ("fixed", "search")),
                              ("delta_mode", ("per_task", "shared")), ("gain", ("error", "accuracy"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed} (got {getattr(self, name)!r})")
        if self.grid is not None and not 0 < self.grid <= 1:
            raise ValueError(f"grid must be None or in (0, 1] (got {self.grid!r})")

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SearchSpec":
        return cls(**json.loads(text))


def sample_order(trial, task_names: Sequence[str]) -> list[str]:
    """A task order drawn from `trial` in random-key form: one float ``order_T`` in [0, 1) per
    task, tasks sorted by key (ties: stream position).

    >>> import optuna
    >>> sample_order(optuna.trial.FixedTrial({"order_t1": 0.9, "order_t2": 0.1, "order_t3": 0.5}), ["t1", "t2", "t3"])
    ['t2', 't3', 't1']
    """
    keys = {t: trial.suggest_float(f"order_{t}", 0.0, 1.0) for t in task_names}
    return sorted(task_names, key=lambda t: (keys[t], list(task_names).index(t)))


def sample_sequence(trial, task_names: Sequence[str], spec: SearchSpec) -> list[dict]:
    """A grow sequence for `task_names` (in run order) drawn from `trial` (one entry per
    bind-grow step). With ``spec.order == "search"`` the bind target is a float ``bind_T`` (see
    the module docstring), else a categorical over the earlier tasks."""

    def delta(name: str) -> float:
        if spec.grid is None:
            return trial.suggest_float(name, 0.0, 1.0)
        return round(trial.suggest_float(name, 0.0, 1.0, step=spec.grid), 10)

    shared = delta("delta") if spec.delta_mode == "shared" else None
    out = []
    for i, t in enumerate(task_names[1:], start=1):
        entry: dict[str, Any] = {"task": t}
        if spec.bind == "search" and spec.order == "search":
            u = trial.suggest_float(f"bind_{t}", 0.0, 1.0)
            entry["bind"] = task_names[min(int(u * i), i - 1)]
        elif spec.bind == "search":
            entry["bind"] = trial.suggest_categorical(f"bind_{t}", list(task_names[:i]))
        entry["delta"] = shared if shared is not None else delta(f"delta_{t}")
        out.append(entry)
    return out


def population_size(n_trials: int) -> int:
    """NSGA-II population for a trial budget: ``max(4, min(50, n_trials // 4))``."""
    return max(4, min(50, n_trials // 4))


def make_sampler(kind: str, n_trials: int, seed: int | None = None):
    """The Optuna sampler: ``nsga2`` (population sized to the budget) or ``tpe``."""
    optuna = trials.optuna_module()

    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size(n_trials), seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ValueError(f"sampler must be 'nsga2' or 'tpe' (got {kind!r})")


def open_study(spec: SearchSpec, sampler=None):
    """Create or load the spec's study in its journal (directions: maximise gain, minimise params)."""
    return trials.open_study(spec.journal, spec.study_name, sampler=sampler, directions=["maximize", "minimize"])


def _cache_dir(spec: SearchSpec) -> str:
    return str(Path(spec.journal).with_suffix("").with_name(Path(spec.journal).stem + "-independent"))


def work(spec: SearchSpec, n_trials: int, worker: int = 0, echo: Callable[[str], Any] | None = None):
    """Run `n_trials` trials of the spec's study in this process (one search worker)."""
    from jointnet.experiments.streams import get_stream

    trials.quiet()
    stream = get_stream(spec.stream, seed=spec.seed, **spec.stream_options)
    names = [t.name for t in stream.tasks]
    config = TrainConfig(**{**spec.config, "seed": spec.seed})
    options = {"cache_dir": _cache_dir(spec), **spec.options}
    sampler = make_sampler(spec.sampler, spec.n_trials, None if spec.sampler_seed is None else spec.sampler_seed + worker)
    study = open_study(spec, sampler)

    def objective(trial):
        order = sample_order(trial, names) if spec.order == "search" else list(names)
        seq = sample_sequence(trial, order, spec)
        if spec.bind == "rsa":
            seq = [{k: v for k, v in e.items() if k != "bind"} for e in seq]
        t0 = time.perf_counter()
        res = replay_sequence(seq, stream, config, seed=spec.seed, options=options, order=order)
        trial.set_user_attr("order", order)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("sequence", grow_sequence(res.net))
        trial.set_user_attr("AP", res.metrics["AP"])
        trial.set_user_attr("BWT", res.metrics["BWT"])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        gain = net_gain(res.net, spec.gain)
        trial.set_user_attr("gain_error", res.gain)
        trial.set_user_attr("gain_accuracy", net_gain(res.net, "accuracy"))
        if gain is None:
            raise RuntimeError("the run recorded no multi-task gain (no independent nets?)")
        if echo is not None:
            echo(f"worker {worker} trial {trial.number}: gain {gain:+.2f}%  params {res.params}")
        return gain, res.params

    study.optimize(objective, n_trials=n_trials)
    return study


def _split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def search(spec: SearchSpec, workers: int = 1, *, threads: int | None = None,
           echo: Callable[[str], Any] | None = print):
    """Run the spec's search with `workers` processes sharing its journal; returns the study.

    The trial budget is split evenly between the workers (each runs its share), so every worker
    contributes. With ``workers == 1`` the trials run in this process.
    """
    trials.quiet()
    open_study(spec)  # create it once, before workers race to
    if workers <= 1:
        if threads:
            torch.set_num_threads(threads)
        work(spec, spec.n_trials, 0, echo)
        return open_study(spec)
    spec_path = Path(spec.journal).with_suffix(".spec.json")
    spec_path.write_text(spec.to_json())
    argvs = [["--spec", spec_path, "--worker-id", w, "--worker-trials", n, "--threads", threads or 1]
             for w, n in enumerate(_split(spec.n_trials, workers)) if n]
    codes = trials.run_workers("strategies.l2bg_search", argvs, show_output=echo is not None)
    if any(codes):
        raise RuntimeError(f"search workers failed with exit codes {codes}")
    return open_study(spec)


def pareto(study) -> list[dict]:
    """The Pareto front (``study.best_trials``), fewest parameters first, as plain dicts."""
    out = []
    for t in sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0])):
        out.append({"trial": t.number, "gain": t.values[0], "params": int(t.values[1]),
                    "AP": t.user_attrs.get("AP"), "worker": t.user_attrs.get("worker"),
                    "order": t.user_attrs.get("order"),
                    "sequence": t.user_attrs.get("sequence")})
    return out


def _seq_text(seq: list | None) -> str:
    if not seq:
        return "-"
    parts = []
    for e in seq:
        if e.get("bind") is None:
            continue
        d = "" if e.get("delta") is None else f" d={e['delta']:.2f}"
        parts.append(f"{e['task']}->{e['bind']}{d} +[{','.join(e.get('grow') or [])}]")
    return "; ".join(parts)


def format_pareto(front: list[dict]) -> str:
    """The Pareto front as a markdown table."""
    lines = ["| trial | gain (%) | parameters | AP (test) | worker | order | sequence (task->bind delta +grown) |",
             "|---|---|---|---|---|---|---|"]
    for p in front:
        ap = "-" if p["AP"] is None else f"{p['AP']:.4f}"
        order = ",".join(p.get("order") or []) or "-"
        lines.append(f"| {p['trial']} | {p['gain']:+.2f} | {p['params']} | {ap} | {p['worker']} | {order} | "
                     f"{_seq_text(p['sequence'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="L2BG grow-sequence search (Optuna, journal storage, parallel workers)")
    p.add_argument("--journal", default="runs/l2bg-search/journal.log")
    p.add_argument("--stream", default="synthetic")
    p.add_argument("--stream-options", default="{}", help="JSON, e.g. '{\"n_tasks\": 3}'")
    p.add_argument("--options", default="{}", help="L2BG options as JSON, e.g. '{\"head\": \"shared\"}'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n-trials", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default 1 with workers)")
    p.add_argument("--sampler", choices=("nsga2", "tpe"), default="nsga2")
    p.add_argument("--bind", choices=("search", "rsa"), default="search")
    p.add_argument("--delta-mode", choices=("per_task", "shared"), default="per_task")
    p.add_argument("--grid", type=float, default=0.05, help="delta grid step (0: continuous range)")
    p.add_argument("--gain", choices=("error", "accuracy"), default="error")
    p.add_argument("--order", choices=("fixed", "search"), default="fixed", help="search the task order too")
    p.add_argument("--study", default="l2bg")
    # internal: one worker process of a parallel search
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-trials", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_id is not None:
        spec = SearchSpec.from_json(Path(args.spec).read_text())
        torch.set_num_threads(args.threads or 1)
        work(spec, args.worker_trials, args.worker_id, echo=print)
        return 0
    config = {"epochs": args.epochs, "batch_size": args.batch_size}
    if args.lr is not None:
        config["lr"] = args.lr
    spec = SearchSpec(
        journal=args.journal, stream=args.stream, stream_options=json.loads(args.stream_options), seed=args.seed,
        config=config, options=json.loads(args.options), n_trials=args.n_trials, sampler=args.sampler,
        bind=args.bind, delta_mode=args.delta_mode, grid=args.grid or None, study_name=args.study, gain=args.gain,
        order=args.order,
    )
    print("command: python -m strategies.l2bg_search " + " ".join(argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    study = search(spec, args.workers, threads=args.threads)
    done = [t for t in study.trials if t.values is not None]
    by_worker: dict[int, int] = {}
    for t in done:
        by_worker[t.user_attrs.get("worker")] = by_worker.get(t.user_attrs.get("worker"), 0) + 1
    print(f"\n{len(done)} trials in {time.perf_counter() - t0:.1f}s, per worker {by_worker}; Pareto front "
          f"(maximise gain, minimise parameters):\n")
    print(format_pareto(pareto(study)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
