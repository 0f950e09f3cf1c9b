"""Every baseline on split-fmnist and permuted-fmnist (5 tasks), several seeds: AP, AF, BWT,
parameters and wall time, mean and spread (sample standard deviation).

Each run goes through `jointnet.experiments.runner.run` (the same code path as ``jointnet run``) into
``--out/STREAM/STRATEGY/seedS``; an existing complete run there is reused, so an interrupted
benchmark continues where it stopped.

    python benchmarks/baselines.py --seeds 0 1 2 --epochs 2 --n-train 2000 --out runs/baselines
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from _common import run_or_resume
from jointnet.experiments.runner import RunSpec

STRATEGIES = ("finetune", "independent", "frozen", "ewc", "lwf", "hat", "pnn", "packnet")
STREAMS = ("split-fmnist", "permuted-fmnist")


def _one(strategy: str, stream: str, seed: int, args) -> dict:
    out = Path(args.out) / stream / strategy / f"seed{seed}"
    opts = {"n_tasks": 5, "n_test_per_task": args.n_test}
    if args.n_train:
        opts["n_train_per_task"] = args.n_train
    spec = RunSpec(strategy, stream, seed=seed, stream_options=opts, config={"epochs": args.epochs})
    return run_or_resume(out, spec)


def _fmt(values: list[float], spec: str, sd_spec: str = ".4f") -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:{spec}} ± {sd:{sd_spec}}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=2000, help="training images per task (0: all)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--streams", nargs="+", default=list(STREAMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/baselines")
    p.add_argument("--quick", action="store_true", help="one seed, 1 epoch, 300 images per task")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.n_train, args.n_test = [0], 1, 300, 300
    torch.set_num_threads(args.threads)
    print("command: python benchmarks/baselines.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs, "
          f"{args.n_train or 'all'} training / {args.n_test} test images per task, seeds {args.seeds}\n")
    for stream in args.streams:
        print(f"### {stream} (5 tasks), mean ± sd over {len(args.seeds)} seed(s)\n")
        print("| strategy | AP | AF | BWT | parameters | time (s) |")
        print("|---|---|---|---|---|---|")
        for strategy in args.strategies:
            runs = [_one(strategy, stream, s, args) for s in args.seeds]
            ap = [r["metrics"]["AP"] for r in runs]
            af = [r["metrics"]["AF"] for r in runs]
            bwt = [r["metrics"]["BWT"] for r in runs]
            params = [r["params"][-1]["total"] for r in runs]
            wall = [sum(r["wall_time"]) for r in runs]
            print(f"| {strategy} | {_fmt(ap, '.4f')} | {_fmt(af, '+.4f')} | {_fmt(bwt, '+.4f')} | "
                  f"{_fmt(params, '.0f', '.0f')} | {_fmt(wall, '.1f', '.1f')} |", flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
