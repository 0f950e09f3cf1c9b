"""Sweeps: one configuration over several seeds, each seed a normal run directory, and the
aggregate over them.

A sweep directory (``jointnet run --seeds``) holds ``sweep.json`` (the seeds), one run directory
per seed (``seed0``, ``seed1``, ...) and, once every seed is done, ``aggregate.json`` and
``aggregate.csv``: mean, sample sd and Student-t 95% CI over the seeds (`stats.summary`) of AP,
AF, F, BWT, FWT (when the runs have a reference), the final parameter count and the wall time.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import attrs

from jointnet.errors import JointNetError
from jointnet.experiments.rundir import (
    SWEEP_FILE, RunSpec, check_out, create, read_json, read_results, read_spec, remove_created, write_text,
)
from jointnet.experiments.stats import summary

__all__ = ["seed_dir", "check_seeds", "start_sweep", "read_sweep", "aggregate", "write_aggregate", "format_aggregate"]

SWEEP_FORMAT = 1


def seed_dir(out: str | os.PathLike, seed: int) -> Path:
    """The run directory of `seed` in the sweep `out`: ``OUT/seedN``."""
    return Path(out) / f"seed{seed}"


def check_seeds(seeds: Any) -> list[int]:
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
    seeds = check_seeds(list(seeds))
    check_out(out)
    for s in seeds:
        if os.path.lexists(seed_dir(out, s)):
            raise JointNetError(f"--out {out} already holds {seed_dir(out, s).name}; choose another --out")
    from jointnet.experiments.runner import prepare

    plan = prepare(attrs.evolve(spec, seed=seeds[0]))
    dirs = []
    made = _create_sweep(out, seeds)
    try:
        for s in seeds:
            p = attrs.evolve(plan, spec=attrs.evolve(plan.spec, seed=s),
                             effective={**plan.effective, "config": {**plan.effective["config"], "seed": s}})
            create(seed_dir(out, s), p.record)
            dirs.append(seed_dir(out, s))
    except BaseException:
        for d in dirs:
            remove_created(d, [d, d / "snapshots"])
        (out / SWEEP_FILE).unlink(missing_ok=True)
        remove_created(out, made)
        raise
    return dirs


def _create_sweep(out: Path, seeds: list[int]) -> list[Path]:
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)][::-1]
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / SWEEP_FILE, json.dumps({"format": SWEEP_FORMAT, "seeds": seeds}, indent=2))
    return made


def read_sweep(out: str | os.PathLike) -> list[int] | None:
    """The seeds of the sweep in `out`, or None when `out` holds no sweep.json.

    Raises:
        JointNetError: a sweep.json that is not ``{"format": 1, "seeds": [ints >= 0]}``.
    """
    path = Path(out) / SWEEP_FILE
    if not os.path.lexists(path):
        return None
    raw = read_json(path, "sweep description")
    if not isinstance(raw, dict) or set(raw) != {"format", "seeds"} or raw["format"] != SWEEP_FORMAT:
        raise JointNetError(f"{path} is not a valid sweep description: it must be "
                            f'{{"format": {SWEEP_FORMAT}, "seeds": [...]}}')
    try:
        return check_seeds(raw["seeds"])
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
        raw = read_json(d / "results.json", "results file")
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
    write_text(out / "aggregate.json", json.dumps(agg, indent=2))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "mean", "sd", "ci95_low", "ci95_high", "n"] + [f"seed{s}" for s in agg["seeds"]])
    for name, m in agg["metrics"].items():
        w.writerow([name, repr(m["mean"]), repr(m["sd"]), repr(m["ci95"][0]), repr(m["ci95"][1]), m["n"]]
                   + [repr(v) for v in m["values"]])
    write_text(out / "aggregate.csv", buf.getvalue())


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
