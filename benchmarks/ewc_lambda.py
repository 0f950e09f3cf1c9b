"""EWC's penalty strength against stability: for each lambda, every shipped stream and several
seeds, does training stay finite, and what AP / BWT does it reach?

A run that meets a non-finite loss stops with the trainer's error (``allow_nonfinite`` is off);
the table shows where. The default ``lam`` of `strategies.ewc.EWC` (100) is one no stream
diverges on, with a margin. The Fashion-MNIST streams use 5 tasks of ``--n-train`` training images
(as `benchmarks/baselines.py`); the CTrL streams and ``synthetic`` use their own defaults.
ctrl-long (100 tasks: one run there costs about as much as the rest of the table; its tasks are
CTrL tasks of the kinds above) and the CIFAR-100 streams (data not shipped) are left out by default.

    python benchmarks/ewc_lambda.py --lams 100 300 1000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from jointnet.errors import JointNetError
from jointnet.experiments.runner import RunSpec, run

FMNIST = ("split-fmnist", "permuted-fmnist", "rotated-fmnist", "similar-fmnist")
STREAMS = FMNIST + ("ctrl-minus", "ctrl-plus", "ctrl-in", "ctrl-out", "ctrl-pl", "synthetic")


def _one(stream: str, lam: float, seed: int, args, tmp: Path) -> dict | str:
    opts = {"n_tasks": 5, "n_train_per_task": args.n_train, "n_test_per_task": args.n_test} if stream in FMNIST else {}
    spec = RunSpec("ewc", stream, seed=seed, stream_options=opts, config={"epochs": args.epochs},
                   strategy_options={"lam": lam})
    try:
        return run(spec, tmp / f"{stream}-{lam:g}-{seed}", echo=lambda m: None)["metrics"]
    except JointNetError as e:
        if "loss is" not in str(e):
            raise
        return "diverged at " + str(e).split("'")[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lams", type=float, nargs="+", default=[100.0, 300.0, 1000.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--streams", nargs="+", default=list(STREAMS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/ewc_lambda.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs, seeds {args.seeds}\n")
    print("| stream | lambda | AP (mean) | BWT (mean) | per seed |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for stream in args.streams:
            for lam in args.lams:
                res = [_one(stream, lam, s, args, Path(tmp)) for s in args.seeds]
                ok = [r for r in res if isinstance(r, dict)]
                ap = f"{statistics.fmean(r['AP'] for r in ok):.3f}" if len(ok) == len(res) else "—"
                bwt = f"{statistics.fmean(r['BWT'] for r in ok):+.3f}" if len(ok) == len(res) else "—"
                seeds = ", ".join(f"{r['AP']:.3f}" if isinstance(r, dict) else r for r in res)
                print(f"| {stream} | {lam:g} | {ap} | {bwt} | {seeds} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
