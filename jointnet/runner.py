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
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from jointnet import snapshot
from jointnet.compile import compile_net
from jointnet.errors import JointNetError
from jointnet.metrics import summarize
from jointnet.net import JointNet
from jointnet.params import ParamStore
from jointnet.trainer import TrainConfig, accuracy
from jointnet.views import param_counts

__all__ = ["run", "resume", "RunSpec", "print_results", "format_matrix"]

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    from jointnet.streams import get_stream

    return get_stream(spec.stream, seed=spec.seed, **spec.stream_options)


def _evaluate(strategy, state, stream, upto: int, config: TrainConfig) -> list[float]:
    row = []
    for t in stream.tasks[: upto + 1]:
        module = compile_net(state.net, state.store, t.name)
        hooks = strategy.eval_hooks(state, t.name)
        x, y = t.test
        row.append(accuracy(module, x, y, config.eval_batch_size, config.device, hooks))
    return row


def run(spec: RunSpec, out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False) -> dict:
    """Run `spec` into `out` (created; must not hold another run). Returns the results dict."""
    out = Path(out)
    if (out / "run.json").exists():
        raise JointNetError(f"{out} already holds a run; use resume or another --out")
    from jointnet.streams import STREAMS
    from strategies.base import get

    get(spec.strategy, **spec.strategy_options)  # fail before writing anything
    if spec.stream not in STREAMS:
        raise JointNetError(f"no stream {spec.stream!r}; known: {', '.join(STREAMS)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "snapshots").mkdir(exist_ok=True)
    _atomic_write(out / "run.json", json.dumps(attrs.asdict(spec), indent=2))
    return _go(spec, out, echo=echo, progress=progress)


def resume(out: str | Path, *, echo: Callable[[str], Any] = print, progress: bool = False) -> dict:
    """Continue the run in `out` from its last snapshot (or finish at once if it is complete)."""
    out = Path(out)
    try:
        spec = RunSpec(**json.loads((out / "run.json").read_text()))
    except FileNotFoundError:
        raise JointNetError(f"{out} holds no run (no run.json)") from None
    except (ValueError, TypeError) as e:
        raise JointNetError(f"{out / 'run.json'} is not a valid run description: {e}") from None
    return _go(spec, out, echo=echo, progress=progress)


def _go(spec: RunSpec, out: Path, *, echo, progress: bool) -> dict:
    from strategies.base import RunState, get

    strategy = get(spec.strategy, **spec.strategy_options)
    config = TrainConfig(**{**type(strategy).recommended_config, **spec.config, "seed": spec.seed,
                            "progress": progress})
    stream = _load_stream(spec)
    names = [t.name for t in stream.tasks]
    results_path = out / "results.json"
    logf = open(out / "log.txt", "a")

    def say(msg: str) -> None:
        logf.write(msg + "\n")
        logf.flush()
        echo(msg)

    if results_path.exists():
        results = json.loads(results_path.read_text())
        done = results["done"]
        if done:
            net, store = snapshot.load(out / results["snapshots"][done - 1], device=config.device)
        else:
            net, store = JointNet.empty(), ParamStore(seed=spec.seed, device=config.device)
        say(f"resuming {out}: {done} of {len(names)} tasks done")
    else:
        results = {
            "format": RESULTS_VERSION, "strategy": spec.strategy, "stream": spec.stream, "seed": spec.seed,
            "tasks": names, "done": 0, "matrix": [], "metrics": {}, "params": [], "wall_time": [],
            "epochs": [], "snapshots": [],
        }
        net, store = JointNet.empty(), ParamStore(seed=spec.seed, device=config.device)
        done = 0
    store = store or ParamStore(seed=spec.seed, device=config.device)
    store.seed = spec.seed
    state = RunState(net=net, store=store, stream=stream, config=config, seed=spec.seed, echo=say)
    try:
        for i in range(done, len(stream.tasks)):
            task = stream.tasks[i]
            torch.manual_seed(spec.seed * 7919 + i)
            t0 = time.perf_counter()
            strategy.before_task(state, task, i)
            state.store.realize(state.net)
            res = strategy.train_task(state, task, i)
            strategy.after_task(state, task, i)
            state.store.realize(state.net)
            wall = time.perf_counter() - t0
            row = _evaluate(strategy, state, stream, i, config)
            snap = Path("snapshots") / f"task_{i:02d}_{task.name}.jn"
            snapshot.save(out / snap, state.net, state.store)
            results["matrix"].append(row)
            results["params"].append(_counts(state.net))
            results["wall_time"].append(wall)
            results["epochs"].append(getattr(res, "epochs_run", None))
            results["snapshots"].append(str(snap))
            results["done"] = i + 1
            results["metrics"] = _metrics(results, spec, out)
            _atomic_write(results_path, json.dumps(results, indent=2))
            _write_csv(out / "results.csv", results)
            say(f"task {i + 1}/{len(names)} {task.name}: " + " ".join(f"{a:.3f}" for a in row)
                + f"  ({wall:.1f}s, version {state.net.version})")
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "task", "wall_time_s", "params_total", "params_shared", "params_owned"]
                   + [f"acc_{n}" for n in names])
        w.writerows(rows)
    os.replace(tmp, path)
