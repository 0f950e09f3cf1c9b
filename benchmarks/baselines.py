"""Every baseline on split-fmnist and permuted-fmnist (5 tasks) under the shared benchmark
protocol (`benchmarks/protocol.py`): paired seeds, AP, AF, BWT, parameters and CPU seconds,
mean ± sd over seeds, and AP / BWT paired against fine-tuning with their 95% CIs.

Each run is a protocol cell (``--out/STREAM/STRATEGY/seed-S-DIGEST``, the code path of
``jointnet run``); a finished cell whose recorded spec matches is reused, so running the same
command again prints the tables without training.

    python benchmarks/baselines.py --out runs/baselines-p     # the README tables (seeds 0-4)
    python benchmarks/baselines.py --quick                                 # a smoke run

Streams: 5 tasks of ``--n-train`` images drawn per task (default 2000: 1800 training and 200
validation, `protocol.MIN_VAL`) and ``--n-test`` test images (1000). Every strategy runs its
recommended training config with ``--epochs`` epochs (2: a CPU-sized run) and the default MLP
(784-256-256). CPU s: CPU seconds of the tasks' training steps (the runner loop's
`TaskOutcome.cpu`; less sensitive to other jobs than wall time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import header  # noqa: E402
from benchmarks.protocol import METRICS, MIN_VAL, SEEDS, Arm, Metric, run_grid, table  # noqa: E402

STRATEGIES = ("finetune", "independent", "frozen", "ewc", "lwf", "hat", "pnn", "packnet")
STREAMS = ("split-fmnist", "permuted-fmnist")
CONTROL = "finetune"
AF = Metric("AF", METRICS["AF"].value, "+.4f", paired=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=2000, help="images drawn per task (10%% of them validation)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/baselines-p")
    p.add_argument("--quick", action="store_true", help="one seed, 1 epoch, 300 images per task")
    args = p.parse_args(argv)
    min_val = MIN_VAL
    if args.quick:
        args.seeds, args.epochs, args.n_train, args.n_test, min_val = [0], 1, 300, 300, 30
    if CONTROL not in args.strategies:
        args.strategies.insert(0, CONTROL)
    torch.set_num_threads(args.threads)
    header(args.quick, f"{args.epochs} epochs, {args.n_train} images drawn / {args.n_test} test per task, "
           f"seeds {args.seeds}" + (f"; --quick: validation check at {min_val} images" if args.quick else ""))
    arms = [Arm(s, s) for s in args.strategies]
    streams = {s: {"n_tasks": 5, "n_train_per_task": args.n_train, "n_test_per_task": args.n_test}
               for s in args.streams}
    grid = run_grid(arms, streams, out=args.out, seeds=args.seeds, config={"epochs": args.epochs},
                    min_val=min_val, echo=lambda m: print(m, file=sys.stderr, flush=True))
    for stream in args.streams:
        print(f"\n#### {stream} (5 tasks), {len(args.seeds)} paired seeds; Δ: minus {CONTROL}, same seed\n")
        print(table(grid, stream, control=CONTROL, metrics=("AP", "BWT", AF, "params", "cpu")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
