"""What leaving frozen tensors out of autograd saves: Progressive Nets on permuted Fashion-MNIST.

Since Core 2 the trainer sets ``requires_grad=False`` on every tensor of the trained task's route
that no optimizer group trains (`jointnet.execution.optim.TrainPlan.training`), so backward
computes no gradient for them. Progressive Nets read every earlier column frozen, so most of what
a later task's forward touches is frozen. This script runs the same stream twice per repeat in one
process: with that step ("after"), and with it switched off ("before", the trainer as it was),
alternating the order (A B, B A, ...), and reports the median wall time of each and the ratio.
Both must give the same accuracy matrix (checked).

Run: ``python benchmarks/frozen_grad.py`` (10 tasks, 3000 training images each, 2 epochs, 3
repeats: a few minutes; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _common import header  # noqa: E402

from jointnet.execution import optim  # noqa: E402
from jointnet.experiments.runner import run_tasks  # noqa: E402
from jointnet.experiments.strategy import get, train_config  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402


def one_run(stream, strategy: str, epochs: int, lr: float, off: bool) -> tuple[float, list]:
    s = get(strategy)
    config = train_config(s, epochs=epochs, lr=lr, seed=0)
    original = optim.TrainPlan.training
    if off:
        optim.TrainPlan.training = lambda self: contextlib.nullcontext()
    try:
        t0 = time.perf_counter()
        rows = [o.row for o in run_tasks(s, stream, config, seed=0, echo=None)]
        return time.perf_counter() - t0, rows
    finally:
        optim.TrainPlan.training = original


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="pnn")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=2)
    # lr 0.05 (the trainer's default) makes the 10th column diverge (NaN) at this size: the
    # lateral sums of nine earlier columns grow large; 0.01 trains every task.
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.n_train, args.repeats = 3, 100, 1
    torch.set_num_threads(args.threads)
    header(args.quick, f"{args.strategy}, permuted-fmnist {args.tasks} tasks x {args.n_train} images, "
                       f"{args.epochs} epoch(s), lr {args.lr}, {args.repeats} paired repeats")
    stream = get_stream("permuted-fmnist", n_tasks=args.tasks, n_train_per_task=args.n_train,
                        n_test_per_task=500, seed=0)
    times = {"before": [], "after": []}
    matrices = {}
    for r in range(args.repeats):
        for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
            t, rows = one_run(stream, args.strategy, args.epochs, args.lr, off=side == "before")
            times[side].append(t)
            matrices.setdefault(side, rows)
    same = matrices["before"] == matrices["after"]
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    print()
    print("| run | median s | all runs s |")
    print("|---|---:|---|")
    print(f"| before: frozen tensors keep requires_grad | {b:.1f} | {', '.join(f'{x:.1f}' for x in times['before'])} |")
    print(f"| after: requires_grad off for what nothing trains | {a:.1f} | {', '.join(f'{x:.1f}' for x in times['after'])} |")
    print(f"\nbefore / after = {b / a:.2f}x; accuracy matrices identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
