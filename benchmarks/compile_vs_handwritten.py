"""Compiled single-task module vs an equivalent hand-written ``nn.Module``: one SGD train step.

For each backbone (``small_conv`` on 1x28x28, ``mlp`` 784-256-256) and batch size, both modules
start from the same weights and run the same step (forward, cross-entropy, backward, SGD step) on
the same batch. Measurements are interleaved (A B B A A B ...) so that drift (thermal, other
processes) hits both alike; each timed block runs several steps. The table reports the median
ms/step over the blocks and the ratio compiled / hand-written: the median over adjacent pairs of
blocks of their ratio (and, for reference, the ratio of the two medians). Target: ratio <= 1.05.

Run: ``python benchmarks/compile_vs_handwritten.py`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _common import calls_per_block, header, time_block  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from jointnet import backbones  # noqa: E402
from jointnet.execution.compile import compile_net  # noqa: E402
from jointnet.execution.store import ParamStore  # noqa: E402

TARGET = 1.05


class HandConv(nn.Module):
    """small_conv((1, 28, 28), widths=(32, 64), hidden=128) + a 10-class head, written by hand."""

    def __init__(self, widths=(32, 64), hidden=128, n_classes=10, in_shape=(1, 28, 28)):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(widths[1] * (h // 4) * (w // 4), hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = x.flatten(1)
        x = self.relu(self.fc1(x))
        return self.head(x)

    # store key prefix (node id) -> attribute, to start from the compiled module's weights
    nodes = {"conv1": "conv1", "conv2": "conv2", "fc1": "fc1", "head.t1": "head"}


class HandMLP(nn.Module):
    """mlp(784, (256, 256)) + a 10-class head, written by hand."""

    def __init__(self, in_f=784, hidden=(256, 256), n_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(in_f, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.head = nn.Linear(hidden[1], n_classes)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(x)

    nodes = {"fc1": "fc1", "fc2": "fc2", "head.t1": "head"}


CASES = {
    "small_conv": (lambda: backbones.small_conv((1, 28, 28)), HandConv, (1, 28, 28)),
    "mlp": (lambda: backbones.mlp(784, (256, 256)), HandMLP, (784,)),
}


def copy_weights(hand: nn.Module, compiled: nn.Module) -> None:
    """Give the hand-written module the compiled module's initial values (same numerics)."""
    with torch.no_grad():
        for attr, key in compiled.keys.items():
            node, name = key.split("@")[0].rsplit(".", 1)
            getattr(getattr(hand, hand.nodes[node]), name).copy_(getattr(compiled, attr))


def make_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.01):
    opt = torch.optim.SGD(module.parameters(), lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        opt.step()

    return step


def calibrate(steps, min_block_s: float) -> int:
    """Steps per timed block so that one block lasts at least `min_block_s`."""
    return calls_per_block(steps, min_block_s, probe=3)


def bench(case: str, batch: int, args) -> dict:
    layers, hand_cls, in_shape = CASES[case]
    net = backbones.build(layers(), task="t1", n_classes=10)
    store = ParamStore(seed=0).realize(net)
    compiled = compile_net(net, store, "t1")
    hand = hand_cls()
    copy_weights(hand, compiled)
    compiled.train()
    hand.train()
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *in_shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    with torch.no_grad():  # same function: same outputs before training
        torch.testing.assert_close(compiled(x), hand(x))
    steps = {"compiled": make_step(compiled, x, y), "hand": make_step(hand, x, y)}
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    n = calibrate(list(steps.values()), args.min_block)
    times = {"compiled": [], "hand": []}
    order = ["compiled", "hand"]
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else order[::-1]:  # A B, B A, A B, ...
            times[name].append(time_block(steps[name], n))
    c, h = statistics.median(times["compiled"]), statistics.median(times["hand"])
    # The ratio of each adjacent pair of blocks, then the median: robust to slow drifts in the
    # machine's load, which the ratio of the two medians is not (both are printed).
    pair = statistics.median(a / b for a, b in zip(times["compiled"], times["hand"]))
    return {"case": case, "batch": batch, "compiled": c, "hand": h, "ratio": pair,
            "of_medians": c / h, "steps": n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats, short blocks")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per module (default 15, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per module (default 10, quick 3)")
    p.add_argument("--min-block", type=float, default=None,
                   help="seconds per timed block (default 0.25, quick 0.02)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    args.min_block = args.min_block or (0.02 if args.quick else 0.25)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    header(args.quick, f"{args.repeats} interleaved blocks per module, median\n")
    print("| backbone | batch | compiled ms/step | hand-written ms/step | ratio compiled/hand | "
          "ratio of medians | steps/block | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    for case in args.cases:
        for batch in args.batches:
            r = bench(case, batch, args)
            good = r["ratio"] <= TARGET
            ok &= good
            print(f"| {case} | {batch} | {r['compiled']:.3f} | {r['hand']:.3f} | {r['ratio']:.3f} | "
                  f"{r['of_medians']:.3f} | {r['steps']} | <= {TARGET} {'ok' if good else 'MISSED'} |",
                  flush=True)
    print(f"\nall within target: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
