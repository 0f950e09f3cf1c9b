"""All-task evaluation with shared-node reuse vs one forward per task, against the FLOP ratio.

A 10-task net shares its first layers: task t1 is built from a backbone, every other task binds to
t1, clones the later layers (``clone_node``, copied weights) and gets its own head. Two ways to
evaluate every task on one batch (eval mode, ``torch.no_grad``):

- shared: ``compile_net(net, store, None)``, one module that computes each shared node once and
  fans out where the routes diverge;
- per task: ``compile_net(net, store, t)`` for each task, called one after the other.

The analytic FLOP ratio counts multiply-adds of every *unique computation* (a node fed by the same
computations with the same tensors is counted once): conv = out_ch * in_ch * k * k * H_out * W_out,
linear / head = in * out; element-wise ops (ReLU, pooling, flatten) are not counted. The script
checks that the shared module emits exactly one line per unique computation, and that both ways
give the same logits. The table reports the measured time ratio shared / per-task (median over
interleaved pairs of blocks) next to the FLOP ratio. Target: the time ratio is within 10% of the
FLOP ratio (the shared module saves what the arithmetic says it can save). Two nets: an MLP and a
conv net whose heavy layers all have one shape (see `CASES` for why).

Run: ``python benchmarks/multitask_eval.py`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _common import calls_per_block, header, time_block  # noqa: E402

from jointnet import backbones  # noqa: E402
from jointnet.execution.compile import compile_net  # noqa: E402
from jointnet.graph.net import JointNet  # noqa: E402
from jointnet.execution.store import ParamStore  # noqa: E402
from jointnet.graph import add_head, add_task, bind, clone_node  # noqa: E402
from jointnet.graph.shapes import task_shapes  # noqa: E402

TOLERANCE = 0.10

# name -> (layer list for t1, nodes every later task clones, input shape)
CASES = {
    # All Linear: fc1, fc2 shared; fc3 and the head per task.
    "mlp": (
        backbones.mlp(784, (1024, 1024, 1024)),
        ["fc3"],
        (784,),
    ),
    # Conv (CIFAR-sized input): a patchify stem and three 3x3 convs shared; two 3x3 convs and the
    # head per task. Every heavy conv has the same shape (128 -> 128 on 8x8), so that FLOPs are a
    # fair model of time: on CPU, convs of other shapes run at very different MAC rates (a
    # 3- or 1-channel 3x3 conv on the full image, at some widths, runs >10x slower per MAC), and
    # max pooling is not cheap, so a trunk made of those would save more time than FLOPs.
    "conv": (
        [
            {"kind": "input", "shape": (3, 32, 32)},
            {"kind": "conv", "out_ch": 128, "kernel": 4, "stride": 4}, {"kind": "relu"},
            {"kind": "conv", "out_ch": 128, "padding": 1}, {"kind": "relu"},
            {"kind": "conv", "out_ch": 128, "padding": 1}, {"kind": "relu"},
            {"kind": "conv", "out_ch": 128, "padding": 1}, {"kind": "relu"},
            {"kind": "conv", "out_ch": 128, "padding": 1}, {"kind": "relu"},
            {"kind": "conv", "out_ch": 128, "padding": 1}, {"kind": "relu"},
            {"kind": "gap"},
        ],
        ["conv5", "conv6"],
        (3, 32, 32),
    ),
}


def build_net(case: str, n_tasks: int, n_classes: int = 10) -> JointNet:
    layers, cloned, _ = CASES[case]
    net = backbones.build(layers, task="t1", n_classes=n_classes)
    for i in range(2, n_tasks + 1):
        t = f"t{i}"
        net = add_task(net, task=t)
        net = bind(net, task=t, to="t1")
        for node in cloned:
            net = clone_node(net, node=node, task=t, init="copy")
        net = add_head(net, task=t, n_classes=n_classes)
    return net


def macs(spec, out_shape) -> int:
    """Multiply-adds of one sample through a node with output shape `out_shape`."""
    if spec.kind == "Conv2d":
        return spec.out_ch * spec.in_ch * spec.kernel * spec.kernel * out_shape[1] * out_shape[2]
    if spec.kind in ("Linear", "Head"):
        return spec.in_f * spec.out_f
    return 0


def unique_computations(net: JointNet, tasks) -> dict[tuple, int]:
    """Signature -> MACs per sample of every distinct computation needed by `tasks`.

    A computation is a node applied to given input computations with given tensors, so a shared
    node fed by different (per-task) inputs counts once per distinct input.
    """
    out: dict[tuple, int] = {}
    for t in tasks:
        shapes = task_shapes(net, t)
        sig: dict[str, tuple] = {}
        for n in net.route(t):
            keys = tuple(p.key for rows in net.params_for(t, n).values() for row in rows for p in row)
            sig[n] = (n, keys, tuple(sig[u] for u in net.inputs_of(n, t)))
            out[sig[n]] = macs(net.effective_spec(t, n), shapes[n])
    return out


def bench(case: str, n_tasks: int, batch: int, args) -> dict:
    net = build_net(case, n_tasks)
    store = ParamStore(seed=0).realize(net)
    tasks = list(net.tasks)
    shared = compile_net(net, store, None).eval()
    alone = [compile_net(net, store, t).eval() for t in tasks]

    # Analytic counts, cross-checked against what the compiler emitted.
    comps = unique_computations(net, tasks)
    flops_shared = sum(comps.values())
    flops_per_task = sum(sum(unique_computations(net, [t]).values()) for t in tasks)
    emitted = len(re.findall(r"^    v\d+ = ", shared.code, re.M))
    n_inputs = 1
    if emitted != len(comps) - n_inputs:
        raise SystemExit(f"compiler emitted {emitted} computations, expected {len(comps) - n_inputs}")

    x = torch.randn(batch, *CASES[case][2], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # both ways give the same logits
        outs = shared(x)
        for t, m in zip(tasks, alone):
            torch.testing.assert_close(outs[t], m(x))

    def run_shared():
        shared(x)

    def run_alone():
        for m in alone:
            m(x)

    fns = {"shared": run_shared, "per_task": run_alone}
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(args.warmup):
            for f in fns.values():
                f()
        n = calls_per_block(fns.values(), args.min_block)
        order = list(fns)
        for r in range(args.repeats):
            for k in order if r % 2 == 0 else order[::-1]:  # A B, B A, ...
                times[k].append(time_block(fns[k], n))
    s, p = statistics.median(times["shared"]), statistics.median(times["per_task"])
    # The ratio of each adjacent pair of blocks, then the median: robust to slow drifts in the
    # machine's load, which a ratio of medians is not.
    time_ratio = statistics.median(a / b for a, b in zip(times["shared"], times["per_task"]))
    flop_ratio = flops_shared / flops_per_task
    return {
        "case": case, "tasks": n_tasks, "batch": batch, "shared": s, "per_task": p,
        "time_ratio": time_ratio, "flop_ratio": flop_ratio, "dev": time_ratio / flop_ratio - 1,
        "mmacs_shared": flops_shared * batch / 1e6, "mmacs_per_task": flops_per_task * batch / 1e6,
        "gmacs_s": flops_shared * batch / s / 1e6, "gmacs_p": flops_per_task * batch / p / 1e6,
        "steps": n,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small batch, few repeats")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--tasks", type=int, default=10, help="number of tasks (default 10)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 256, quick 32)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per way (default 11, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per way (default 3, quick 1)")
    p.add_argument("--min-block", type=float, default=None,
                   help="seconds per timed block (default 0.3, quick 0.02)")
    args = p.parse_args(argv)
    args.batch = args.batch or (32 if args.quick else 256)
    args.repeats = args.repeats or (3 if args.quick else 11)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.min_block = args.min_block or (0.02 if args.quick else 0.3)
    torch.set_num_threads(args.threads)

    header(args.quick, f"eval mode, no_grad; {args.repeats} interleaved blocks per way, median\n")
    print("| net | tasks | batch | shared ms | per-task ms | time ratio | FLOP ratio | "
          "time/FLOP - 1 | MMAC shared / per-task | GMAC/s shared / per-task | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    for case in args.cases:
        r = bench(case, args.tasks, args.batch, args)
        good = abs(r["dev"]) <= TOLERANCE
        ok &= good
        print(f"| {case} | {r['tasks']} | {r['batch']} | {r['shared']:.2f} | {r['per_task']:.2f} | "
              f"{r['time_ratio']:.3f} | {r['flop_ratio']:.3f} | {r['dev']:+.1%} | "
              f"{r['mmacs_shared']:.0f} / {r['mmacs_per_task']:.0f} | {r['gmacs_s']:.1f} / {r['gmacs_p']:.1f} | "
              f"within {TOLERANCE:.0%} {'ok' if good else 'MISSED'} |", flush=True)
    print(f"\nall within target: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
