"""GROWN, its ablations (spec §5.5), Grow-only, PackNet, HAT, independent nets and fine-tuning on
split-fmnist (5 tasks) and rotated-fmnist (10 tasks, 0..180 degrees), under the shared benchmark
protocol (`benchmarks/protocol.py`): every row runs on the same paired seeds, tables give mean ±
sample sd over the seeds and paired 95% CIs of differences (`jointnet.experiments.stats.paired`).

    python benchmarks/grown.py --seeds 0 1 2 --out runs/grown-p     # the README tables (CPU budget)
    python benchmarks/grown.py --out runs/grown-p                   # the protocol's 5 seeds (0-4)
    python benchmarks/grown.py --quick --out /tmp/grown-quick        # a smoke run of every code path

**What runs.** Every (stream, row, seed) cell goes through `protocol.run_grid` (the core's one
runner loop, as ``jointnet run``) into ``OUT/STREAM/ROW/seed-S-DIGEST/``; a finished cell whose
recorded spec equals the one wanted now is reused, so running the same command again prints
every table without training. A run whose loss diverges is recorded as a failed cell and left out
of the tables (their rows say how many seeds failed). GROWN's reference accuracies (Scratch and
Fine-tune, its target, `strategies.grown_refs`) are cached in ``OUT/STREAM/refs`` (the
``target_cache`` option of every GROWN row, hence part of their recorded spec) and shared by the
GROWN rows.

CPU-sized: the LeNet-5-like 20-50-800-500 backbone of the paper (spec §4) for every method, 3
epochs of Adam (lr 1e-3, batch 64, no weight decay, no schedule) for every method (HAT's own SGD
schedule, lr 0.05, stays at chance level in 3 epochs on this backbone); GROWN with its defaults
(plus ``--grown`` options).

**Streams** (per task: training / validation / test images; validation >= 200 per task,
`protocol.MIN_VAL`, as GROWN's target rule reads validation accuracy):

- ``split-fmnist``: 5 two-class tasks, classes (0,1), (2,3), ...; 1100 images drawn per task
  (550 per class), 2/11 held out: 900 training (450 per class) / 200 validation (100 per class)
  / 1000 test (500 per class).
- ``rotated-fmnist``: 10 ten-class tasks, the same images rotated by 0, 20, ..., 180 degrees;
  740 drawn per task (74 per class), 20/74 held out: 540 training (54 per class) / 200
  validation (20 per class) / 1000 test (100 per class).

(The training counts are those of the earlier benchmark, which held out 100 / 60 validation
images; more are drawn now, so the images themselves differ from that benchmark's.)

**Rows** (``--rows``, all by default): ``grow-only``; ``+sel-mask`` (GROWN without m^a and
release); ``+LSG`` (without release); ``GROWN (+re-train)`` (the defaults, the control of the
first table); ``GROWN, lam_a=0.5`` (an L0 term on m^a, spec §7.3, so that there is something to
release); ``GROWN, selective_init=6`` (m^s starts so high that it cannot cross 0 in Stage A at
this budget: it keeps the old net as it is, which shows what m^s's learned zeros cost);
``packnet``; ``hat``; ``independent``; ``finetune``.

**Tables**, per stream:

1. Rows = methods, columns over the seeds: ``AP`` (average final test accuracy) and ``BWT``
   (mean ± sd, and the paired difference against ``GROWN (+re-train)`` with its 95% CI); ``final
   size`` (x one full backbone: GROWN's own size record for the GROWN rows, spec §7.10, else
   parameters / one backbone's parameters, also paired against GROWN); ``Stage B tasks`` (at how
   many of the tasks 2..T GROWN grew, per run); ``released`` (kernels released for re-training,
   total per run); ``time (s)`` (wall seconds of the training steps per run) and ``CPU s`` (CPU
   seconds of those steps; a shared machine's wall time is noisy, CPU time less so).
2. Stage B per GROWN row: at how many of the tasks 2..T over all seeds it grew, and the tasks
   at which some seed skipped it (with those seeds).
3. Size after each task (x one backbone, mean over seeds).
4. Final test accuracy per task (mean over seeds, percent).
5. The paper's targets (issue 13), per GROWN row: final size <= 1.3x one backbone (max over
   seeds); average accuracy within 1 point of independent nets (GROWN minus independent, points,
   mean and paired 95% CI; "yes" when the CI's lower end is >= -1, "mean only" when just the mean
   is); at least one task where Stage B is skipped; BWT exactly 0 on every seed.

**Options** (defaults): ``--seeds`` (0 1 2 3 4, `protocol.SEEDS`); ``--rows`` (every row);
``--streams`` (split-fmnist rotated-fmnist); ``--epochs`` (3); ``--batch`` (64); ``--grown
KEY=VALUE ...`` (none: extra options for every GROWN and Grow-only row, values read as JSON, else
as strings; part of those rows' specs); ``--threads`` (1, `torch.set_num_threads`); ``--out``
(runs/grown); ``--quick`` (off: seeds 0 and 1, so that the paired columns are computed, 1
epoch, 3 tasks of 300 drawn / 300 test images per stream, validation below 200 images per task:
a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import (  # noqa: E402
    METRICS, SEEDS, Arm, Metric, Run, by_seed, finished, fmt_ci, run_grid, table,
)
from jointnet import backbones  # noqa: E402
from jointnet.errors import JointNetError  # noqa: E402
from jointnet.experiments.stats import paired  # noqa: E402
from jointnet.experiments.strategy import get  # noqa: E402
from jointnet.persistence.views import param_counts  # noqa: E402
from strategies.grown import lenet  # noqa: E402
from strategies.grown_view import NET_KEY  # noqa: E402

# label -> (strategy, options); the GROWN rows add one switch each, as Table 5 of the paper.
ROWS = {
    "grow-only": ("grow-only", {}),
    "+sel-mask": ("grown", {"attentive": False, "release": False}),
    "+LSG": ("grown", {"release": False}),
    "GROWN (+re-train)": ("grown", {}),
    "GROWN, lam_a=0.5": ("grown", {"lam_a": 0.5}),
    "GROWN, selective_init=6": ("grown", {"selective_init": 6.0}),
    "packnet": ("packnet", {}),
    "hat": ("hat", {}),
    "independent": ("independent", {}),
    "finetune": ("finetune", {}),
}
GROWN_STRATEGIES = ("grown", "grow-only")
CONTROL = "GROWN (+re-train)"
STREAMS = {
    "split-fmnist": {"n_tasks": 5, "n_train_per_task": 1100, "val_fraction": 200 / 1100, "n_test_per_task": 1000},
    "rotated-fmnist": {"n_tasks": 10, "max_angle": 180.0, "n_train_per_task": 740, "val_fraction": 200 / 740,
                       "n_test_per_task": 1000},
}
QUICK = {"n_tasks": 3, "n_train_per_task": 300, "n_test_per_task": 300}
N_CLASSES = {"split-fmnist": 2, "rotated-fmnist": 10}
SHAPE = (1, 28, 28)


def train_config(args) -> dict:
    """One train config for every method (HAT's own SGD schedule, lr 0.05, stays at chance level
    in 3 epochs on this backbone; with Adam it learns)."""
    return {"epochs": args.epochs, "batch_size": args.batch, "optimizer": "adam", "lr": 1e-3,
            "momentum": 0.9, "weight_decay": 0.0, "schedule": "none"}


def arms(rows, out: Path, stream: str, grown_options: dict) -> list[Arm]:
    """The rows as protocol arms on `stream`: GROWN rows with ``backbone="lenet"`` and the
    stream's reference cache, then `grown_options`; the others with the LeNet layer list."""
    out_arms = []
    for label in rows:
        strategy, options = ROWS[label]
        options = dict(options)
        if strategy in GROWN_STRATEGIES:
            options.update(backbone="lenet", target_cache=str(out / stream / "refs"))
            options.update(grown_options)
        else:
            options["backbone"] = lenet(SHAPE)
        out_arms.append(Arm(label, strategy, options))
    return out_arms


def full_params(n_classes: int) -> int:
    """Parameters (and buffers) of one full-width backbone with one head of `n_classes`."""
    c = param_counts(backbones.build(lenet(SHAPE), task="t1", n_classes=n_classes))
    return c["total"] + c["buffers"]


# ---- what the tables read from a run --------------------------------------------------------------


def records(run: Run) -> list[dict] | None:
    """Each task's ``grown`` record (size, grew, released, ...) in task order, from the final
    net's task annotations; None for a run whose net GROWN did not build."""
    tasks = run.annotations["tasks"]
    recs = [tasks.get(t, {}).get(NET_KEY) for t in run.result["tasks"]]
    return recs if recs and all(isinstance(r, dict) for r in recs) else None


def sizes(run: Run, full: int) -> list[float]:
    """Size after each task, x one backbone: GROWN's own record where there is one, else
    parameters / `full`."""
    recs = records(run)
    if recs is not None:
        return [float(r["size"]) for r in recs]
    return [p["total"] / full for p in run.result["params"]]


def stage_b(run: Run) -> int | None:
    """At how many of the tasks 2..T GROWN grew (None for other methods)."""
    recs = records(run)
    return None if recs is None else sum(bool(r.get("grew")) for r in recs[1:])


def skipped(run: Run) -> list[str]:
    """The tasks 2..T at which GROWN's Stage B did not run."""
    recs = records(run) or []
    return [t for t, r in zip(run.result["tasks"][1:], recs[1:]) if not r.get("grew")]


def released(run: Run) -> int | None:
    """Kernels released for re-training over the run (None for other methods)."""
    recs = records(run)
    return None if recs is None else sum(int(r.get("released") or 0) for r in recs)


def metrics(full: int, n_tasks: int) -> list:
    def none_or_float(v):
        return None if v is None else float(v)
    return [
        "AP", "BWT",
        Metric("final size", lambda r, _: sizes(r, full)[-1], ".3f"),
        Metric(f"Stage B tasks (of {n_tasks - 1})", lambda r, _: none_or_float(stage_b(r)), ".1f", paired=False),
        Metric("released", lambda r, _: none_or_float(released(r)), ".0f", paired=False),
        Metric("time (s)", lambda r, _: float(sum(r.result["wall_time"])), ".0f", paired=False),
        METRICS["cpu"],
    ]


def failed_note(seeds: dict[int, dict[str, Run]], label: str) -> str:
    n = sum(1 for runs in seeds.values() if label in runs and runs[label].failed)
    return f" ({n} seed(s) failed)" if n else ""


# ---- the custom tables ------------------------------------------------------------------------------


def stage_b_table(seeds: dict[int, dict[str, Run]], labels, n_tasks: int) -> str:
    lines = ["| method | Stage B ran (all seeds) | skipped at |", "|---|---|---|"]
    for label in labels:
        runs = finished(seeds, label)
        if not runs or any(records(r) is None for r in runs.values()):
            continue
        ran = sum(stage_b(r) for r in runs.values())
        where: dict[str, list[int]] = {}
        for s, r in runs.items():
            for t in skipped(r):
                where.setdefault(t, []).append(s)
        order = list(next(iter(runs.values())).result["tasks"])
        text = ", ".join(f"{t} (seed{'s' if len(where[t]) > 1 else ''} {', '.join(map(str, where[t]))})"
                         for t in sorted(where, key=order.index)) or "none"
        lines.append(f"| {label}{failed_note(seeds, label)} | {ran} of {len(runs) * (n_tasks - 1)} tasks | {text} |")
    return "\n".join(lines)


def per_task_table(seeds, labels, n_tasks: int, value, fmt: str, head: str) -> str:
    """A row per method, a column per task: the mean over finished seeds of ``value(run)[i]``."""
    lines = [f"| method | {' | '.join(head.format(i + 1) for i in range(n_tasks))} |", "|---|" + "---|" * n_tasks]
    for label in labels:
        runs = list(finished(seeds, label).values())
        if not runs:
            lines.append(f"| {label}{failed_note(seeds, label)} | " + " | ".join("-" for _ in range(n_tasks)) + " |")
            continue
        vals = [value(r) for r in runs]
        cols = [statistics.fmean(v[i] for v in vals) for i in range(n_tasks)]
        lines.append(f"| {label}{failed_note(seeds, label)} | " + " | ".join(f"{c:{fmt}}" for c in cols) + " |")
    return "\n".join(lines)


def stage_a_table(seeds: dict[int, dict[str, Run]], labels) -> str:
    """GROWN's rule, per row: the validation accuracy after Stage A (what the rule compares),
    the target, their gap and the accuracy after Stage B, over tasks 2..T of every finished seed,
    and the share of fc1's old kernels the committed selective mask turns off."""
    lines = ["| method | Stage A | target | target - Stage A, points: mean [min, max] | after Stage B "
             "| m^s off, fc1 |", "|---|---|---|---|---|---|"]
    for label in labels:
        recs = [r for run in finished(seeds, label).values() for r in (records(run) or [])[1:]]
        if not recs:
            continue
        gap = [100 * (r["target"] - r["stage_a_acc"]) for r in recs]
        off = [1 - r["kept"]["fc1"]["selective"] for r in recs if "selective" in r.get("kept", {}).get("fc1", {})]
        lines.append(f"| {label}{failed_note(seeds, label)} | {statistics.fmean(r['stage_a_acc'] for r in recs):.3f} "
                     f"| {statistics.fmean(r['target'] for r in recs):.3f} | {statistics.fmean(gap):.1f} "
                     f"[{min(gap):.1f}, {max(gap):.1f}] | {statistics.fmean(r['acc'] for r in recs):.3f} "
                     f"| {f'{100 * statistics.fmean(off):.1f}%' if off else '-'} |")
    return "\n".join(lines)


def targets_table(seeds: dict[int, dict[str, Run]], labels, full: int) -> str:
    """The paper's targets per GROWN row (see the module docstring, table 5)."""
    ind = finished(seeds, "independent")
    lines = ["| method | final size <= 1.3x | accuracy vs independent (points) | within 1 point "
             "| Stage B skipped at some task | BWT exactly 0 |", "|---|---|---|---|---|---|"]
    for label in labels:
        runs = finished(seeds, label)
        if not runs or any(records(r) is None for r in runs.values()):
            continue
        common = sorted(set(runs) & set(ind))
        size = max(sizes(r, full)[-1] for r in runs.values())
        bwt = max(abs(r.metrics["BWT"]) for r in runs.values())
        skip = sorted({t for r in runs.values() for t in skipped(r)}, key=list(runs.values())[0].result["tasks"].index)
        if common:
            d = paired([100 * runs[s].metrics["AP"] for s in common], [100 * ind[s].metrics["AP"] for s in common])
            acc = fmt_ci(d, "+.2f") + f" (n={d.n})"
            if d.n < 2:
                within = "one seed: no CI"
            else:
                within = "yes" if d.ci95[0] >= -1 else "mean only" if d.mean >= -1 else "no"
        else:
            acc, within = "- (no common seed)", "-"
        lines.append(f"| {label}{failed_note(seeds, label)} | {'yes' if size <= 1.3 else 'no'} (max {size:.3f}) "
                     f"| {acc} | {within} | {'yes: ' + ', '.join(skip) if skip else 'no'} "
                     f"| {'yes' if bwt == 0 else f'no (max |BWT| {bwt:.4f})'} |")
    return "\n".join(lines)


# ---- the command -----------------------------------------------------------------------------------


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/grown.py", description="GROWN, its ablations and baselines on "
                                "split-fmnist and rotated-fmnist under the shared benchmark protocol.")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="paired seeds (default 0 1 2 3 4)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW",
                   help=f"rows among {list(ROWS)} (default all)")
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS),
                   help="streams (default both)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per task for every method (default 3)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--grown", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra options for every GROWN and Grow-only row (values read as JSON; default none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="runs/grown", help="directory of the run cells (default runs/grown)")
    p.add_argument("--quick", action="store_true",
                   help="seeds 0 1, 1 epoch, 3 tasks of 300 images per stream: a smoke run, not a measurement")
    args = p.parse_args(argv)
    for name in ("epochs", "batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if len(set(args.rows)) != len(args.rows):
        p.error(f"--rows repeats a row (got {args.rows})")
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must be distinct integers >= 0 (got {args.seeds})")
    args.grown_options = {}
    for item in args.grown:
        key, eq, value = item.partition("=")
        if not eq or not key:
            p.error(f"--grown takes KEY=VALUE items (got {item!r})")
        try:
            args.grown_options[key] = json.loads(value)
        except ValueError:
            args.grown_options[key] = value
    if args.quick:
        args.seeds, args.epochs = [0, 1], 1
    args.stream_options = {s: {**STREAMS[s], **(QUICK if args.quick else {})} for s in args.streams}
    args.out = Path(args.out)
    # Every row's options are checked before anything is written (run_grid would check each
    # cell's only when it comes to run).
    for stream in args.streams:
        for arm in arms(args.rows, args.out, stream, args.grown_options):
            try:
                get(arm.strategy, **arm.options)
            except JointNetError as e:
                p.error(f"row {arm.label!r}: {str(e).splitlines()[0]}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/grown.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    if args.quick:
        print("(--quick: a smoke run of every code path, NOT a measurement; its validation sets are below the "
              "protocol's 200 images per task)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.epochs} epochs, batch {args.batch}, "
          f"seeds {args.seeds}; LeNet-5-like 20-50-800-500; GROWN options {args.grown_options or 'default'}\n",
          flush=True)
    config = train_config(args)
    for stream, sopts in args.stream_options.items():
        print(f"running {stream}: {len(args.rows)} rows x {len(args.seeds)} seeds into {args.out / stream}",
              file=sys.stderr, flush=True)
        grid = run_grid(arms(args.rows, args.out, stream, args.grown_options), {stream: sopts}, out=args.out,
                        seeds=args.seeds, config=config, **({"min_val": 1} if args.quick else {}),
                        echo=lambda m: print(m, file=sys.stderr, flush=True))
        seeds = by_seed(grid, stream)
        first = next(iter(grid.values()))
        n_tasks = len(first.result["tasks"])
        n_val = first.result.get("n_val") or []
        full = full_params(N_CLASSES[stream])
        control = CONTROL if CONTROL in args.rows else args.rows[0]
        grown_rows = [lb for lb in args.rows if ROWS[lb][0] in GROWN_STRATEGIES]
        print(f"### {stream} ({n_tasks} tasks; per task {sopts['n_train_per_task']} images drawn, "
              f"{min(n_val) if n_val else '?'} of them held out for validation, {sopts['n_test_per_task']} test), "
              f"mean ± sd over {len(args.seeds)} seed(s)\n")
        print(table(grid, stream, control=control, metrics=metrics(full, n_tasks), labels=args.rows))
        print(f"\nΔ: the paired difference against {control} on the seeds both finished, with its 95% CI. Final "
              "size: x one full backbone. Stage B tasks: at how many of the tasks 2..T GROWN grew, per run. "
              "Released: kernels released for re-training, total per run. Time: wall seconds of the training "
              "steps per run on a shared machine; CPU s: their CPU seconds.\n")
        if grown_rows:
            print("Stage B over all seeds:\n")
            print(stage_b_table(seeds, grown_rows, n_tasks))
            print("\nGROWN's rule, tasks 2..T of every seed (validation accuracy after Stage A, which the rule "
                  "compares with the target: the better of Scratch and fine-tuning; after Stage B; m^s off: the "
                  "share of fc1's old kernels the committed selective mask turns off):\n")
            print(stage_a_table(seeds, grown_rows))
            print()
        print("Size after each task (x one backbone; mean over seeds):\n")
        print(per_task_table(seeds, args.rows, n_tasks, lambda r: sizes(r, full), ".2f", "{}"))
        print("\nFinal test accuracy per task (percent; mean over seeds):\n")
        print(per_task_table(seeds, args.rows, n_tasks, lambda r: [100 * a for a in r.matrix[-1]], ".1f", "t{}"))
        print(flush=True)
        if "independent" in args.rows and grown_rows:
            print("\nTargets of the paper (issue 13), per GROWN row: final size <= 1.3x one backbone; average "
                  "accuracy within 1 point of independent nets (GROWN minus independent, points, mean and paired "
                  "95% CI over seeds); at least one task where Stage B is skipped; BWT exactly 0.\n")
            print(targets_table(seeds, grown_rows, full))
            print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
