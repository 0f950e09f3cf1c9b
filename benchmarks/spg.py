"""SPG against its variants and baselines on dissimilar and similar Fashion-MNIST tasks, under the
shared benchmark protocol (`benchmarks/protocol.py`): paired seeds, mean ± sd, paired 95% CIs.

    python benchmarks/spg.py --seeds 0 1 2                 # the README's run (3 seeds, CPU budget)
    python benchmarks/spg.py                               # the protocol's 5 seeds (0-4)
    python benchmarks/spg.py --quick                       # a smoke run of every code path, not a measurement

Arms (``--methods``, default all, in this order): SPG, its ablations (SPG w/o CHI, SPG w/o SMH,
hard masks at the paper's four thresholds 0.2 / 0.4 / 0.6 / 0.8), the cross variants SPG-FI
(Fisher importance) and EWC-GI (EWC's penalty weighted by SPG's importance, lambda 5), HAT, EWC at
lambda 100 and 1000, fine-tuning (NCL) and independent nets (ONE; always run, as the FWT reference).

Streams (``--streams``, default both), per task (``train / val / test`` images):

- ``split-fmnist`` (dissimilar): 5 tasks x 2 classes; ``--n-train`` (2000) images drawn per task
  from the training set, 10% held out for validation: **1800 / 200 / 1000** (``--n-test``).
- ``similar-fmnist`` (similar; `jointnet.experiments.streams.similar`): ``--similar-tasks`` (10)
  10-way tasks on disjoint shards, one writer each; ``--similar-train`` (1125) images drawn per
  task, 20% held out for validation: **900 / 225 / 1000** (as many training images as the earlier
  1000-drawn-at-10% setting, but not the same ones: each task's shard is drawn after the previous
  tasks', so the shards shift; validation raised from 100 to the protocol's >= 200).

``--val-fraction`` sets one validation share for both streams instead. Every stream is refused
when a task has fewer than 200 validation images (`protocol.MIN_VAL`); ``--quick`` lowers that
check and says so.

Training, identical for every arm (`_config`): plain SGD lr ``--lr`` (0.1; no momentum, so SPG's
gradient masks are its update masks), batch 64, up to ``--epochs`` (100) epochs a task, lr / 3
after ``--lr-patience`` (3) epochs without validation improvement (best weights put back), stop
below lr 1e-3 (the authors' schedule scaled down, SPG spec §3); the default MLP 784-256-256;
``--threads`` (1) torch threads. Every (stream, arm, seed) is one cell of `protocol.run_grid`
under ``--out`` (default ``runs/spg-p``; ``runs/spg-quick`` with ``--quick``): a finished cell
whose recorded spec matches is reused, so rerunning the same command prints every table again
without training. SPG keeps the snapshot after every task (the pruning probe reads task 1's), the
other SPG variants and HAT the last one (blocked fractions), the rest none. A run whose loss
diverges (EWC at lambda 1000 on similar tasks) is a failed cell: recorded, reused, left out of the
tables, counted in the arm's label and listed under the table with its reason.

Tables, per stream:

1. Rows = arms; mean ± sd over seeds, in points (SPG spec §4.2): ACC (= AP), FWT (against the
   independent nets of the same seed: mean of R[j][j] - R_ONE[j][j]), BWT, each with the paired
   difference from SPG and its 95% CI; blocked % (spec §8.4: trunk parameters whose gradient
   factor is exactly 0 after the last task; SPG variants and HAT), γ > 0.5 % and γ > 0.9 % (SPG's
   accumulated importance), time (s) (wall seconds of the task steps) and CPU s (CPU seconds of
   the task steps; the machine is shared, so CPU seconds are the steadier cost).
2. The pruning probe (spec §2.9, Table 6): SPG's task-1 test accuracy after its first task with
   10% / 20% of the trunk scalars zeroed, the lowest / random / highest by importance.

Then the paper's claims, SPG minus the other arm (points), mean [paired 95% CI] over the seeds
both finished, and the per-seed differences; "yes": the CI lies above 0, "mean only": the mean
is >= 0 but the CI reaches below 0, "no": the mean is below 0; and whether SPG's blocked fraction
is 10x below HAT's.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import (  # noqa: E402
    METRICS, MIN_VAL, SEEDS, Arm, Metric, Run, failures, fmt_summary, run_grid, table, values,
)
from jointnet.errors import JointNetError  # noqa: E402
from jointnet.experiments.stats import paired, summary  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402
from strategies.spg import prune_probe  # noqa: E402
from strategies.spg_core import blocked_stats, transfer_metrics  # noqa: E402

HARD = (0.2, 0.4, 0.6, 0.8)
EWC_GI_LAMBDA = 5.0  # lambda * lr = 0.5 < 2 with gamma <= 1: stable under plain SGD
EWC_LAMBDAS = (100.0, 1000.0)  # the library default and the value its docs found best on split-fmnist
METHODS: dict[str, tuple[str, dict]] = {
    "SPG": ("spg", {}),
    "SPG w/o CHI": ("spg", {"chi": False}),
    "SPG w/o SMH": ("spg", {"smh": False}),
    **{f"SPG hard {t}": ("spg", {"hard_threshold": t}) for t in HARD},
    "SPG-FI": ("spg", {"importance": "fisher"}),
    "EWC-GI": ("spg", {"ewc_gi": EWC_GI_LAMBDA}),
    "HAT": ("hat", {}),
    **{f"EWC λ={lam:g}": ("ewc", {"lam": lam}) for lam in EWC_LAMBDAS},
    "finetune (NCL)": ("finetune", {}),
    "independent (ONE)": ("independent", {}),
}
CONTROL = "SPG"
REFERENCE = "independent (ONE)"  # FWT's reference, run even when not in --methods
STREAMS = ("split-fmnist", "similar-fmnist")
VAL_FRACTION = {"split-fmnist": 0.1, "similar-fmnist": 0.2}  # 2000 -> 1800 / 200; 1125 -> 900 / 225
QUICK_MIN_VAL = 30  # --quick draws 300 images per task: 30 (split) / 60 (similar) validation images


def _snapshots(label: str) -> str:
    """Which snapshots a cell keeps: SPG every task's (the pruning probe reads task 1's), the other
    SPG variants and HAT the last one (blocked fractions), the rest none."""
    if label == CONTROL:
        return "every"
    return "last" if METHODS[label][0] in ("spg", "hat") else "none"


def _streams(args) -> dict[str, dict]:
    """Every stream's options (the cells' recorded stream options)."""
    vf = {s: args.val_fraction if args.val_fraction is not None else VAL_FRACTION[s] for s in STREAMS}
    return {
        "split-fmnist": {"n_train_per_task": args.n_train, "n_test_per_task": args.n_test,
                         "val_fraction": vf["split-fmnist"]},
        "similar-fmnist": {"n_tasks": args.similar_tasks, "n_train_per_task": args.similar_train,
                           "n_test_per_task": args.n_test, "val_fraction": vf["similar-fmnist"]},
    }


def _config(args) -> dict:
    # The authors' protocol scaled down (spec §3): plain SGD, lr / 3 after `lr_patience` epochs
    # without validation improvement (best weights put back), stop once the lr is below 1e-3.
    return {"optimizer": "sgd", "lr": args.lr, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64,
            "epochs": args.epochs, "schedule": "plateau", "lr_factor": 3.0, "lr_patience": args.lr_patience,
            "min_lr": 1e-3, "patience": None}


# ---- columns --------------------------------------------------------------------------------------

_BLOCKED: dict[str, dict | None] = {}


def blocked_of(run: Run) -> dict | None:
    """`blocked_stats` of the run's final net (SPG variants and HAT; None for other arms), read
    from its last snapshot once per run directory."""
    key = str(run.dir)
    if key not in _BLOCKED:
        if run.spec.get("strategy") in ("spg", "hat"):
            net, store = run.load(-1)
            _BLOCKED[key] = blocked_stats(net, store)
        else:
            _BLOCKED[key] = None
    return _BLOCKED[key]


def fwt(run: Run, runs: Mapping[str, Run]) -> float | None:
    """FWT in points against the independent nets of the same seed (None without them)."""
    ref = runs.get(REFERENCE)
    if ref is None or ref.failed:
        return None
    R = run.matrix
    return 100.0 * transfer_metrics(R, [ref.matrix[j][j] for j in range(len(R))])["FWT"]


def _share(key: str, method: str | None = None):
    def value(run: Run, _runs: Mapping[str, Run]) -> float | None:
        b = blocked_of(run)
        if b is None or (method is not None and b["method"] != method):
            return None
        return 100.0 * b["total"][key]
    return value


COLUMNS: dict[str, Metric] = {
    "ACC": Metric("ACC", lambda r, _: 100.0 * r.metrics["AP"], ".1f"),
    "FWT": Metric("FWT", fwt, "+.1f"),
    "BWT": Metric("BWT", lambda r, _: 100.0 * r.metrics["BWT"], "+.1f"),
    "blocked": Metric("blocked %", _share("blocked"), ".1f", paired=False),
    "g05": Metric("γ > 0.5 %", _share("> 0.5", "spg"), ".1f", paired=False),
    "g09": Metric("γ > 0.9 %", _share("> 0.9", "spg"), ".1f", paired=False),
    "time": Metric("time (s)", lambda r, _: float(sum(r.result["wall_time"])), ".1f", paired=False),
    "cpu": METRICS["cpu"],
}


# ---- the pruning probe ----------------------------------------------------------------------------

PRUNE_CASES = [("nothing", 0.0)] + [(w, f) for f in (0.1, 0.2) for w in ("lowest", "random", "highest")]


def pruning(grid: Mapping, stream: str, options: dict, seeds: list[int]) -> str | None:
    """Spec §2.9 / Table 6: SPG's task-1 test accuracy (%) after task 1 with a share of its trunk
    zeroed by importance (scalars ranked globally, ties at random). None without an SPG run."""
    accs: dict[tuple, list[float]] = {c: [] for c in PRUNE_CASES}
    for seed in seeds:
        run = grid.get((stream, CONTROL, seed))
        if run is None or run.failed:
            continue
        net, store = run.load(0)
        task = get_stream(stream, seed=seed, **options).tasks[0]
        x, y = task.test
        for which, frac in PRUNE_CASES:
            accs[(which, frac)].append(100.0 * prune_probe(net, store, task.name, x, y, fraction=frac,
                                                           which="lowest" if which == "nothing" else which,
                                                           seed=seed))
    if not accs[PRUNE_CASES[0]]:
        return None
    head = "| pruned | " + " | ".join(f"{w} {int(f * 100)}%" if f else w for w, f in PRUNE_CASES) + " |"
    return "\n".join([head, "|---" * (len(PRUNE_CASES) + 1) + "|",
                      "| accuracy | " + " | ".join(fmt_summary(summary(accs[c]), ".1f") for c in PRUNE_CASES) + " |"])


# ---- the paper's claims ---------------------------------------------------------------------------


def verdict(d) -> str:
    """"yes" (the paired CI lies above 0), "mean only" (mean >= 0, the CI reaches below 0), "no"
    (mean below 0); with one seed no interval exists."""
    if d.n < 2:
        return "one seed: no CI"
    return "yes" if d.ci95[0] > 0 else ("mean only" if d.mean >= 0 else "no")


def claims(grids: Mapping[str, Mapping]) -> str:
    """The paper's claims against the runs: SPG minus the other arm, points, paired over the seeds
    both finished."""
    dis, sim = "split-fmnist", "similar-fmnist"
    checks = []  # (claim, stream, other arm, column): SPG - other >= 0 claimed
    notes = []
    for stream in (dis, sim):
        if stream not in grids:
            continue
        grid = grids[stream]
        # the better EWC: the higher mean ACC among the EWC arms that finished every seed they ran
        ran = [lb for lb in METHODS if lb.startswith("EWC λ") and any(s == stream and a == lb for s, a, _ in grid)]
        ewcs = [lb for lb in ran if not any(r.failed for (s, a, _), r in grid.items() if s == stream and a == lb)]
        if ran and not ewcs:
            notes.append(f"No EWC arm finished every seed on {stream}: the EWC claim is left out there.")
        if stream == dis:
            checks.append(("SPG BWT above finetune's (dissimilar)", stream, "finetune (NCL)", "BWT"))
        checks.append((f"SPG ACC >= finetune's ({stream})", stream, "finetune (NCL)", "ACC"))
        if ewcs:
            ewc = max(ewcs, key=lambda lb: summary(list(values(grid, stream, lb, COLUMNS["ACC"]).values())).mean)
            checks.append((f"SPG ACC >= the better EWC's, {ewc} ({stream})", stream, ewc, "ACC"))
        checks.append((f"SPG FWT >= HAT's ({stream})", stream, "HAT", "FWT"))
    if sim in grids:
        checks.append(("SPG ACC above HAT's (similar)", sim, "HAT", "ACC"))
    lines = ["| claim | holds | difference | n | per seed |", "|---|---|---|---|---|"]
    for text, stream, other, k in checks:
        a = values(grids[stream], stream, CONTROL, COLUMNS[k])
        b = values(grids[stream], stream, other, COLUMNS[k])
        common = sorted(set(a) & set(b))
        if not common:
            continue
        d = paired([a[s] for s in common], [b[s] for s in common])
        seeds = ", ".join(f"{a[s] - b[s]:+.1f}" for s in common)
        lines.append(f"| {text} | {verdict(d)} | {d.mean:+.2f} [{d.ci95[0]:+.2f}, {d.ci95[1]:+.2f}] | "
                     f"{d.n} | {seeds} |")
    for stream in (dis, sim):
        if stream not in grids:
            continue
        a = list(values(grids[stream], stream, CONTROL, COLUMNS["blocked"]).values())
        b = list(values(grids[stream], stream, "HAT", COLUMNS["blocked"]).values())
        if a and b:
            ma, mb = summary(a).mean, summary(b).mean
            lines.append(f"| SPG blocked fraction far (10x) below HAT's ({stream}) | {'yes' if ma * 10 <= mb else 'no'} "
                         f"| {ma:.2f}% vs {mb:.2f}% | {len(a)} / {len(b)} | - |")
    return "\n".join(lines + ([""] + notes if notes else []))


# ---- main -----------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


def _seed(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"a seed must be >= 0 (got {v})")
    return v


def _lr(text: str) -> float:
    v = float(text)
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text})")
    return v


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=_seed, nargs="+", default=list(SEEDS), help="paired seeds (default: 0 1 2 3 4)")
    p.add_argument("--epochs", type=_positive, default=100, help="most epochs per task (default 100)")
    p.add_argument("--lr-patience", type=_positive, default=3,
                   help="epochs without validation improvement before lr / 3 (default 3)")
    p.add_argument("--lr", type=_lr, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--n-train", type=_positive, default=2000,
                   help="split-fmnist images drawn per task, validation included (default 2000: 1800 train / 200 val)")
    p.add_argument("--similar-tasks", type=_positive, default=10, help="similar-fmnist tasks (default 10)")
    p.add_argument("--similar-train", type=_positive, default=1125,
                   help="similar-fmnist images drawn per task, validation included (default 1125: 900 train / 225 val)")
    p.add_argument("--n-test", type=_positive, default=1000, help="test images per task, both streams (default 1000)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="validation share of the drawn images, both streams (default: split 0.1, similar 0.2)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                   help="arms to show (default all; the independent nets always run, as FWT's reference)")
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS, help="default both")
    p.add_argument("--threads", type=_positive, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", default=None, help="directory of the run cells (default runs/spg-p; runs/spg-quick "
                                               "with --quick); finished cells whose spec matches are reused")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: seeds 0 1, 2 epochs, 300 images per task, 3 similar tasks, validation check "
                        f"lowered to {QUICK_MIN_VAL} images (not a measurement)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.n_train, args.similar_train, args.n_test = [0, 1], 2, 300, 300, 300
        args.similar_tasks = 3
    if args.out is None:
        args.out = "runs/spg-quick" if args.quick else "runs/spg-p"
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out!r} exists and is not a directory")
    args.seeds = list(dict.fromkeys(args.seeds))
    args.methods = list(dict.fromkeys(args.methods))
    return args


def run_stream(stream: str, options: dict, args) -> dict:
    """Every arm's cells on `stream` (METHODS order, the independent nets always), grouped by the
    snapshots they keep."""
    labels = [lb for lb in METHODS if lb in args.methods or lb == REFERENCE]
    grid: dict = {}
    for mode, group in itertools.groupby(labels, key=_snapshots):
        arms = [Arm(lb, METHODS[lb][0], METHODS[lb][1]) for lb in group]
        grid.update(run_grid(arms, {stream: options}, out=args.out, seeds=args.seeds, config=_config(args),
                             min_val=QUICK_MIN_VAL if args.quick else MIN_VAL, snapshots=mode,
                             echo=lambda m: print(m, file=sys.stderr, flush=True)))
    return grid


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print("$ python benchmarks/spg.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    if args.quick:
        print(f"(--quick: a smoke run of every code path, NOT a measurement; the validation check is lowered "
              f"from {MIN_VAL} to {QUICK_MIN_VAL} images per task)")
    print(f"torch {torch.__version__}, {args.threads} thread(s); every method: plain SGD lr {args.lr}, batch 64, "
          f"up to {args.epochs} epochs a task, lr / 3 after {args.lr_patience} epochs without validation "
          "improvement (best weights put back), stop below lr 1e-3; default MLP 784-256-256; "
          f"seeds {args.seeds}; EWC-GI lambda {EWC_GI_LAMBDA:g}; cells under {args.out}\n", flush=True)
    control = CONTROL if CONTROL in args.methods else args.methods[0]
    grids: dict[str, dict] = {}
    try:
        for stream in args.streams:
            options = _streams(args)[stream]
            s0 = get_stream(stream, seed=args.seeds[0], **options)
            t0 = s0.tasks[0]
            grid = run_stream(stream, options, args)
            grids[stream] = grid
            print(f"### {stream}: {len(s0.tasks)} tasks, {len(t0.y_train)} train / {len(t0.y_val)} val / "
                  f"{len(t0.y_test)} test images per task ({options['n_train_per_task']} drawn, "
                  f"{options['val_fraction']:g} held out); mean ± sd over {len(args.seeds)} seeds, in points; "
                  f"Δ: paired difference from {control} [95% CI]\n")
            print(table(grid, stream, control=control, metrics=list(COLUMNS.values()), labels=args.methods))
            print()
            for line in failures(grid, stream, args.methods):
                print(line + "\n")
            if CONTROL in args.methods:
                probe = pruning(grid, stream, options, args.seeds)
                if probe is not None:
                    print(f"Pruning probe on {stream}, SPG after task 1 (task-1 test accuracy, %, trunk scalars "
                          "ranked globally by importance, ties at random):\n")
                    print(probe + "\n", flush=True)
    except JointNetError as e:
        print(f"spg.py: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if CONTROL in args.methods:
        print("Claims: SPG minus the other method, points, mean [paired 95% CI over the seeds both finished]:\n")
        print(claims(grids))
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
