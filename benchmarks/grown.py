"""GROWN, its ablations (spec §5.5), Grow-only, PackNet, HAT, independent nets and fine-tuning on
split-fmnist (5 tasks) and rotated-fmnist (10 tasks, 0..180 degrees), several seeds: average
accuracy, BWT, final size relative to one full backbone, size after each task, and the tasks at
which GROWN's Stage B ran. Prints markdown tables (mean ± sample sd over the seeds).

Every run goes through `jointnet.experiments.runner.run` (the code path of ``jointnet run``)
into ``--out/STREAM/LABEL/seedS``; a complete run there is reused and an interrupted one resumed,
so the benchmark continues where it stopped. GROWN's reference accuracies (Scratch and
Fine-tune, its target) are cached in ``--out/STREAM/refs`` and shared by the GROWN variants.

    python benchmarks/grown.py --seeds 0 1 2 --out runs/grown            # the README tables
    python benchmarks/grown.py --quick                                  # a smoke run (CI)

CPU-sized: the LeNet-5-like 20-50-800-500 backbone of the paper (spec §4), 600-1000 images per
task (10% of them held out for validation), 3 epochs of Adam (lr 1e-3, batch 64) for every
method (HAT's own SGD schedule, lr 0.05, stays at chance level in 3 epochs on this backbone).
GROWN runs with its defaults.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch

from jointnet import backbones
from _common import run_or_resume
from jointnet.experiments.runner import RunSpec
from jointnet.experiments.stats import paired, summary
from jointnet.persistence.views import param_counts
from strategies.grown import lenet

# label -> (folder, strategy, options); the GROWN rows add one switch each, as Table 5 of the
# paper; "GROWN, lam_a=0.5" adds an L0 term on m^a (spec §7.3), so that there is something to
# release; "GROWN, selective_init=6" starts m^s so high that its logits (Adam, lr 0.1, ~27 steps
# per training here) cannot cross 0 in Stage A: m^s then keeps the old net as it is, which shows
# what m^s's learned zeros cost at this budget.
ROWS = {
    "grow-only": ("grow-only", "grow-only", {}),
    "+sel-mask": ("plus-sel-mask", "grown", {"attentive": False, "release": False}),
    "+LSG": ("plus-LSG", "grown", {"release": False}),
    "GROWN (+re-train)": ("GROWN", "grown", {}),
    "GROWN, lam_a=0.5": ("GROWN-lam_a", "grown", {"lam_a": 0.5}),
    "GROWN, selective_init=6": ("GROWN-sinit6", "grown", {"selective_init": 6.0}),
    "packnet": ("packnet", "packnet", {}),
    "hat": ("hat", "hat", {}),
    "independent": ("independent", "independent", {}),
    "finetune": ("finetune", "finetune", {}),
}
GROWN_ROWS = ("grow-only", "+sel-mask", "+LSG", "GROWN (+re-train)", "GROWN, lam_a=0.5", "GROWN, selective_init=6")
STREAMS = {
    "split-fmnist": {"n_tasks": 5, "n_train_per_task": 1000, "n_test_per_task": 1000},
    "rotated-fmnist": {"n_tasks": 10, "max_angle": 180.0, "n_train_per_task": 600, "n_test_per_task": 1000},
}
N_CLASSES = {"split-fmnist": 2, "rotated-fmnist": 10}
SHAPE = (1, 28, 28)


def _config(strategy: str, args) -> dict:
    """One train config for every method (HAT's own SGD schedule, lr 0.05, stays at chance level
    in 3 epochs on this backbone; with Adam it learns)."""
    return {"epochs": args.epochs, "batch_size": args.batch, "optimizer": "adam", "lr": 1e-3,
            "momentum": 0.9, "weight_decay": 0.0, "schedule": "none"}


def _options(label: str, stream: str, args) -> tuple[str, dict]:
    _, strategy, options = ROWS[label]
    options = dict(options)
    if strategy in ("grown", "grow-only"):
        options.update(backbone="lenet", target_cache=str(Path(args.out) / stream / "refs"))
        options.update(args.grown_options)
    else:
        options["backbone"] = lenet(SHAPE)
    return strategy, options


def _one(label: str, stream: str, seed: int, args) -> dict:
    out = Path(args.out) / stream / ROWS[label][0] / f"seed{seed}"
    strategy, options = _options(label, stream, args)
    spec = RunSpec(strategy, stream, seed=seed, strategy_options=options,
                   stream_options=dict(args.streams[stream]), config=_config(strategy, args))
    return run_or_resume(out, spec)


def _full_params(n_classes: int) -> int:
    c = param_counts(backbones.build(lenet(SHAPE), task="t1", n_classes=n_classes))
    return c["total"] + c["buffers"]


def _fmt(values: list[float], spec: str = ".4f") -> str:
    s = summary(values)
    return f"{s.mean:{spec}} ± {s.sd:{spec}}"


def _targets(runs: dict, finals: dict, skipped: dict, args) -> None:
    """The issue's targets from the paper, per GROWN row: final size <= 1.3x one backbone,
    average accuracy within 1 point of independent nets (paired over seeds, 95% CI), at least
    one task where Stage B is skipped, BWT exactly 0."""
    if "independent" not in runs:
        return
    ind = [r["metrics"]["AP"] for r in runs["independent"]]
    print("Targets of the paper (issue 13), per GROWN row: final size <= 1.3x one backbone; average accuracy "
          "within 1 point of independent nets (GROWN minus independent, points, mean and paired 95% CI over "
          "seeds); at least one task where Stage B is skipped; BWT exactly 0.\n")
    print("| method | final size <= 1.3x | accuracy vs independent (points) | within 1 point | Stage B skipped "
          "at some task | BWT exactly 0 |")
    print("|---|---|---|---|---|---|")
    for label in (x for x in args.rows if x in GROWN_ROWS):
        d = paired([r["metrics"]["AP"] for r in runs[label]], ind)
        lo, hi = (100 * v for v in d.ci95)
        size = max(finals[label])
        bwt = max(abs(r["metrics"]["BWT"]) for r in runs[label])
        within = "yes" if lo >= -1 else "mean only" if 100 * d.mean >= -1 else "no"
        print(f"| {label} | {'yes' if size <= 1.3 else 'no'} (max {size:.3f}) | {100 * d.mean:+.2f} "
              f"[{lo:+.2f}, {hi:+.2f}] | {within} | {'yes: ' + skipped[label] if skipped[label] else 'no'} "
              f"| {'yes' if bwt == 0 else f'no (max |BWT| {bwt:.4f})'} |")
    print(flush=True)


def _grown_records(out: Path, res: dict) -> list[dict]:
    """Each task's ``grown`` record, read from the last snapshot's net."""
    from jointnet import snapshot

    net, _ = snapshot.load(out / res["snapshots"][-1])
    return [dict(info.annotations.get("grown", {})) for info in net.tasks.values()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows among {list(ROWS)}")
    p.add_argument("--streams", nargs="+", default=list(STREAMS))
    p.add_argument("--grown", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra GROWN options for every GROWN row (values parsed as JSON)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/grown")
    p.add_argument("--quick", action="store_true", help="one seed, 1 epoch, 300 images, 3 tasks per stream")
    args = p.parse_args(argv)
    args.grown_options = {}
    for item in args.grown:
        key, _, value = item.partition("=")
        try:
            args.grown_options[key] = json.loads(value)
        except ValueError:
            args.grown_options[key] = value
    args.streams = {s: dict(STREAMS[s]) for s in args.streams}
    if args.quick:
        args.seeds, args.epochs = [0], 1
        for s in args.streams.values():
            s.update(n_tasks=3, n_train_per_task=300, n_test_per_task=300)
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/grown.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.epochs} epochs, batch {args.batch}, "
          f"seeds {args.seeds}; LeNet-5-like 20-50-800-500; GROWN options {args.grown_options or 'default'}\n")
    for stream, sopts in args.streams.items():
        runs = {label: [_one(label, stream, s, args) for s in args.seeds] for label in args.rows}
        n_tasks = sopts["n_tasks"]
        full = _full_params(N_CLASSES[stream])
        print(f"### {stream} ({n_tasks} tasks, {sopts['n_train_per_task']} training images per task), "
              f"mean ± sd over {len(args.seeds)} seed(s)\n")
        print("| method | avg accuracy | BWT | final size (x one backbone) | Stage B ran (all seeds) "
              "| released kernels | time (s) |")
        print("|---|---|---|---|---|---|---|")
        sizes: dict[str, list[list[float]]] = {}
        finals: dict[str, list[float]] = {}
        skips: dict[str, str] = {}
        for label in args.rows:
            rs = runs[label]
            ap = [r["metrics"]["AP"] for r in rs]
            bwt = [r["metrics"]["BWT"] for r in rs]
            wall = [sum(r["wall_time"]) for r in rs]
            stage_b = released = "-"
            if label in GROWN_ROWS:
                recs = [_grown_records(Path(args.out) / stream / ROWS[label][0] / f"seed{s}", r)
                        for s, r in zip(args.seeds, rs)]
                sizes[label] = [[rec["size"] for rec in rr] for rr in recs]
                final = [rr[-1]["size"] for rr in recs]
                ran = [sum(bool(rec.get("grew")) for rec in rr[1:]) for rr in recs]
                skipped = sorted({f"t{i + 1}" for rr in recs for i, rec in enumerate(rr) if i and not rec.get("grew")},
                                 key=lambda t: int(t[1:]))
                stage_b = (f"{sum(ran)} of {len(ran) * (n_tasks - 1)} tasks; skipped at "
                           + (", ".join(skipped) if skipped else "none"))
                skips[label] = ", ".join(skipped)
                released = _fmt([sum(rec.get("released") or 0 for rec in rr) for rr in recs], ".0f")
            else:
                per_task = [[p["total"] / full for p in r["params"]] for r in rs]
                sizes[label] = per_task
                final = [x[-1] for x in per_task]
            finals[label] = final
            print(f"| {label} | {_fmt(ap)} | {_fmt(bwt)} | {_fmt(final, '.3f')} | {stage_b} | {released} "
                  f"| {_fmt(wall, '.0f')} |", flush=True)
        print("\nStage B: at how many of the tasks 2..T (over all seeds) GROWN grew, and the tasks at which some "
              "seed skipped it; released kernels: the total per run, mean ± sd; time: wall seconds per run on a "
              "shared machine.\n")
        print("Size after each task (x one backbone; mean over seeds):\n")
        print("| method | " + " | ".join(str(i + 1) for i in range(n_tasks)) + " |")
        print("|---|" + "---|" * n_tasks)
        for label in args.rows:
            cols = [statistics.fmean(s[i] for s in sizes[label]) for i in range(n_tasks)]
            print(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cols) + " |")
        print()
        print("Final accuracy per task (mean over seeds):\n")
        print("| method | " + " | ".join(f"t{i + 1}" for i in range(n_tasks)) + " |")
        print("|---|" + "---|" * n_tasks)
        for label in args.rows:
            cols = [statistics.fmean(r["matrix"][-1][i] for r in runs[label]) for i in range(n_tasks)]
            print(f"| {label} | " + " | ".join(f"{100 * c:.1f}" for c in cols) + " |")
        print(flush=True)
        _targets(runs, finals, skips, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
