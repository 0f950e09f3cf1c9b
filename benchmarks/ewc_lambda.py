"""EWC's penalty strength against stability: for each lambda, every shipped stream and several
seeds, does training stay finite, and what AP / BWT does it reach?

Runs are cells of the shared benchmark protocol (`benchmarks/protocol.py`, one arm per lambda,
paired seeds; the same command again prints the table from the finished cells). A run that meets
a non-finite loss stops with the trainer's error (``allow_nonfinite`` is off) and is a failed cell:
the table says at which task. The default ``lam`` of `strategies.ewc.EWC` (100) is one no stream
diverges on, with a margin.

Streams, per task (train / val / test images): the Fashion-MNIST streams 5 tasks of ``--n-train``
images drawn (default 2000: 1800 / 200 / ``--n-test`` 1000, as `benchmarks/baselines.py`); the
CTrL streams their own sizes with validation raised to the protocol's 200 (large 800 / 400,
small 80 / 200, ctrl-in's last task 10 / 200, 2000 test); ``synthetic`` 100 / 200 / 20 per task.
ctrl-long (100 tasks: one run there costs about as much as the rest of the table; its tasks are
CTrL tasks of the kinds above) and the CIFAR-100 streams (data not shipped) are left out.

    python benchmarks/ewc_lambda.py --lams 100 300 1000 --seeds 0 1 2 --out runs/ewc-lambda
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import header  # noqa: E402
from benchmarks.protocol import Arm, by_seed, run_grid  # noqa: E402

FMNIST = ("split-fmnist", "permuted-fmnist", "rotated-fmnist", "similar-fmnist")
CTRL = ("ctrl-minus", "ctrl-plus", "ctrl-in", "ctrl-out", "ctrl-pl")
STREAMS = FMNIST + CTRL + ("synthetic",)


def stream_options(stream: str, args) -> dict:
    """Each stream's options: >= 200 validation images per task, training sizes as shipped."""
    if stream in FMNIST:
        return {"n_tasks": 5, "n_train_per_task": args.n_train, "n_test_per_task": args.n_test}
    if stream in CTRL:
        return {"large": [400, 200], "small": [40, 100], "tiny": [5, 100]}
    return {"n_val_per_class": 100}


def _label(lam: float) -> str:
    return f"lambda={lam:g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lams", type=float, nargs="+", default=[100.0, 300.0, 1000.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=2000, help="images drawn per Fashion-MNIST task (10%% validation)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/ewc-lambda")
    args = p.parse_args(argv)
    if any(not lam > 0 for lam in args.lams) or len(set(args.lams)) != len(args.lams):
        p.error(f"--lams must be distinct positive numbers (got {args.lams})")
    torch.set_num_threads(args.threads)
    header(False, f"{args.epochs} epochs, seeds {args.seeds}")
    arms = [Arm(_label(lam), "ewc", {"lam": lam}) for lam in args.lams]
    streams = {s: stream_options(s, args) for s in args.streams}
    grid = run_grid(arms, streams, out=args.out, seeds=args.seeds, config={"epochs": args.epochs},
                    echo=lambda m: print(m, file=sys.stderr, flush=True))
    print("\n| stream | lambda | AP (mean) | BWT (mean) | per seed |")
    print("|---|---|---|---|---|")
    for stream in args.streams:
        runs = by_seed(grid, stream)
        for lam in args.lams:
            rs = [runs[s][_label(lam)] for s in args.seeds]
            ok = [r for r in rs if not r.failed]
            every = len(ok) == len(rs)
            ap = f"{statistics.fmean(r.metrics['AP'] for r in ok):.3f}" if every else "—"
            bwt = f"{statistics.fmean(r.metrics['BWT'] for r in ok):+.3f}" if every else "—"
            seeds = ", ".join(f"diverged at task {len(r.matrix) + 1}" if r.failed else f"{r.metrics['AP']:.3f}"
                              for r in rs)
            print(f"| {stream} | {lam:g} | {ap} | {bwt} | {seeds} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
