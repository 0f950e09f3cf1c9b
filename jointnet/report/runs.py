"""Run directories as report input: read, validated, grouped over seeds.

A run directory (`jointnet.experiments.runner`) is hostile input: every file is checked before
anything is drawn from it. `load_run` reads ``run.json`` and ``results.json`` through the
runner's own validators (so the report accepts exactly what ``jointnet run --resume`` accepts),
then checks what the report needs beyond them: task names are names (`jointnet.graph.names`),
the snapshot of the last finished task lies inside the directory as a regular file (no symbolic
link out of it), holds exactly the finished tasks, and the metrics are finite numbers. Sizes are
bounded before anything is read.

`group_runs` puts runs that differ only in their seed (same strategy, stream, options and train
configuration, device and progress aside) into one `RunGroup`, whose metrics are summarised
with `jointnet.experiments.stats.summary` (mean, sd, Student-t 95% CI).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import attrs

from jointnet.errors import JointNetError
from jointnet.experiments.stats import Summary, summary
from jointnet.graph.names import is_name
from jointnet.graph.net import JointNet

__all__ = ["MAX_RESULTS_BYTES", "MAX_TASKS", "METRICS", "RunData", "RunGroup", "group_runs", "load_run"]

MAX_RESULTS_BYTES = 64 << 20
"""Largest results.json / run.json the report reads."""
MAX_TASKS = 10_000
"""Most tasks a run may list."""
METRICS = ("AP", "BWT", "AF", "F", "FWT")
"""The metrics the report tabulates, in order, when a run's results.json has them."""
# Train-config keys that do not change a run's numbers: runs differing only in them are seeds of
# one group.
_NOT_CONFIG = frozenset({"device", "progress", "threads", "seed"})


@attrs.frozen
class RunData:
    """One validated run: its directory, `RunSpec`, results (as read and checked), the net and
    store of its last finished task's snapshot, and that snapshot's path."""

    path: Path
    spec: Any
    results: dict
    net: JointNet
    store: Any
    snapshot: Path

    @property
    def tasks(self) -> list[str]:
        return list(self.results["tasks"][: self.results["done"]])

    @property
    def matrix(self) -> list[list[float]]:
        return self.results["matrix"]

    @property
    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.results["metrics"].items() if k in METRICS}

    @property
    def params_total(self) -> int:
        return self.results["params"][-1]["total"]

    @property
    def wall_time(self) -> float:
        return float(sum(self.results["wall_time"]))

    @property
    def complete(self) -> bool:
        return self.results["done"] == len(self.results["tasks"])


def _bad(path: Path, why: str) -> JointNetError:
    return JointNetError(f"run {str(path)!r}: {why}")


def _read_json_bounded(path: Path, run: Path) -> Any:
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise _bad(run, f"no {path.name} (is it a run directory of 'jointnet run'?)") from None
    if not stat.S_ISREG(st.st_mode):
        raise _bad(run, f"{path.name} is not a regular file")
    if st.st_size > MAX_RESULTS_BYTES:
        raise _bad(run, f"{path.name} is {st.st_size} bytes, more than the {MAX_RESULTS_BYTES} a report reads")
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise _bad(run, f"{path.name} is not readable JSON: {e}") from None


def load_run(path: str | os.PathLike) -> RunData:
    """Read and validate the run directory `path` (see the module docstring).

    Raises:
        JointNetError: one line naming the run and what is wrong with it.
    """
    from jointnet.experiments import rundir
    from jointnet.persistence import snapshot

    run = Path(path)
    if not run.exists():
        raise _bad(run, "no such directory")
    if not run.is_dir():
        raise _bad(run, "not a directory (give the --out directory of 'jointnet run')")
    # run.json and results.json: the runner's validators, after a bounded read of our own (the
    # runner reads whole files; a hostile one could be huge or not a file at all)
    _read_json_bounded(run / "run.json", run)
    spec = rundir.read_spec(run / "run.json")
    raw = _read_json_bounded(run / "results.json", run)
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if not isinstance(tasks, list) or not tasks or len(tasks) > MAX_TASKS:
        raise _bad(run, f"results.json must list 1 to {MAX_TASKS} tasks")
    for t in tasks:
        if not is_name(t):
            raise _bad(run, f"results.json names a task {t!r:.40} that is not a valid task name")
    if len(set(tasks)) != len(tasks):
        raise _bad(run, "results.json lists a task twice")
    results = rundir.read_results(run / "results.json", spec, tasks)
    done = results["done"]
    if done == 0:
        raise _bad(run, "no task has finished yet (results.json says done = 0)")
    metrics = results["metrics"]
    for k, v in metrics.items():
        if k in METRICS and (type(v) not in (int, float) or not math.isfinite(v)):
            raise _bad(run, f"metric {k} must be a finite number, got {v!r:.40}")
    for i, p in enumerate(results["params"]):
        if p["total"] < 0 or p["shared"] < 0 or not all(type(v) is int and v >= 0 for v in p["owned"].values()):
            raise _bad(run, f"params entry {i} holds negative or non-integer counts")
    snap = run / results["snapshots"][done - 1]
    root = run.resolve()
    try:
        real = snap.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise _bad(run, f"its snapshot {results['snapshots'][done - 1]} is missing") from None
    if snap.is_symlink() or root not in real.parents or not real.is_file():
        raise _bad(run, f"its snapshot {results['snapshots'][done - 1]} is not a regular file inside the run")
    net, store = snapshot.load(real)
    if list(net.tasks) != tasks[:done]:
        raise _bad(run, f"its snapshot holds tasks {list(net.tasks)!r:.80}, not the {done} finished tasks "
                   f"{tasks[:done]!r:.80}")
    return RunData(run, spec, results, net, store, real)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@attrs.frozen
class RunGroup:
    """Runs that differ only in their seed: a label, the runs (in seed order), the options that
    set it apart, and `summaries`: metric -> `Summary` over the runs that have it (AP, BWT, AF,
    F, FWT, ``params`` (final total) and ``wall`` (seconds))."""

    strategy: str
    stream: str
    options: dict
    runs: tuple[RunData, ...]
    summaries: dict[str, Summary]

    @property
    def seeds(self) -> list[int]:
        return [r.spec.seed for r in self.runs]

    @property
    def label(self) -> str:
        opts = " ".join(f"{k}={_canon(v)}" for k, v in self.options.items())
        return f"{self.strategy} on {self.stream}" + (f" ({opts})" if opts else "")


def _key(r: RunData) -> str:
    s = r.spec
    config = {k: v for k, v in s.config.items() if k not in _NOT_CONFIG}
    return _canon([s.strategy, s.stream, s.strategy_options, s.stream_options, config,
                   r.results["tasks"][: r.results["done"]]])


def group_runs(runs: list[RunData]) -> list[RunGroup]:
    """Runs grouped by everything but the seed, in order of first appearance; runs of one group
    sorted by seed. Options shown for a group: its strategy and stream options and its train
    config (device and progress aside), prefixed ``-O`` / ``-S`` / ``-T`` as on the command line."""
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda r: r.spec.seed)
        s = members[0].spec
        options = {}
        for prefix, d in (("-O ", s.strategy_options), ("-S ", s.stream_options),
                          ("-T ", {k: v for k, v in s.config.items() if k not in _NOT_CONFIG})):
            for k, v in d.items():
                options[prefix + str(k)] = v
        summaries: dict[str, Summary] = {}
        for m in METRICS:
            values = [r.metrics[m] for r in members if m in r.metrics]
            if values:
                summaries[m] = summary(values)
        summaries["params"] = summary([r.params_total for r in members])
        summaries["wall"] = summary([r.wall_time for r in members])
        out.append(RunGroup(s.strategy, s.stream, options, tuple(members), summaries))
    return out
