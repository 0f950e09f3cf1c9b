"""Time per rewrite as the history grows: 10,000 cheap rewrites on a 100-task net.

The net: an MLP backbone for task t1, and 99 more tasks each bound to t1 with its own head
(``add_task`` + ``bind`` + ``add_head``). On it, 10,000 rewrites alternate ``set_lr_scale`` and
``annotate`` on random nodes, each with a new value so that every one is effective (a new version
and a new log record). Each rewrite is timed alone; the table gives the mean time per rewrite in
windows of 1,000 (median over several independent runs from the same net, so one scheduling hiccup
does not decide a window) and the ratio last window / first window. Target: the time per rewrite
does not grow with the length of the history (ratio ~1); the absolute time per rewrite is reported
too (and should stay well under ~5 ms).

Run: ``python benchmarks/rewrite_history.py`` (under a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _common import header  # noqa: E402

from jointnet import backbones  # noqa: E402
from jointnet.graph.net import JointNet  # noqa: E402
from jointnet.graph import add_head, add_task, annotate, bind, set_lr_scale  # noqa: E402

RATIO_TARGET = 1.2  # "~1": last/first window within 20% (windows are ~1 s of a noisy machine)
ABS_TARGET_MS = 5.0


def build_net(n_tasks: int) -> JointNet:
    net = backbones.build(backbones.mlp(784, (256, 256)), task="t1", n_classes=10)
    for i in range(2, n_tasks + 1):
        t = f"t{i}"
        net = add_task(net, task=t)
        net = bind(net, task=t, to="t1")
        net = add_head(net, task=t, n_classes=10)
    return net


def run(net: JointNet, n: int, seed: int) -> tuple[JointNet, list[float]]:
    """Apply `n` effective rewrites; the time of each in ms."""
    rng = random.Random(seed)
    nodes = [x for x in net.nodes if net.node(x).kind != "Input"]
    times = []
    clock = time.perf_counter
    for i in range(n):
        node = rng.choice(nodes)
        if i % 2 == 0:
            # A new scale each time (never the default 1.0), so the policy really changes.
            kw = {"nodes": node, "scale": 0.5 + (i // 2) * 1e-4}
            t0 = clock()
            out = set_lr_scale(net, **kw)
            dt = clock() - t0
        else:
            kw = {"node": node, "key": "bench", "value": i}
            t0 = clock()
            out = annotate(net, **kw)
            dt = clock() - t0
        if out.version != net.version + 1:
            raise SystemExit(f"rewrite {i} ({kw}) was a no-op: the benchmark needs effective rewrites")
        net = out
        times.append(dt * 1e3)
    return net, times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 10 tasks, 1,000 rewrites")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2; no tensors here)")
    p.add_argument("--tasks", type=int, default=None, help="tasks in the net (default 100, quick 10)")
    p.add_argument("--rewrites", type=int, default=None, help="rewrites to apply (default 10000, quick 1000)")
    p.add_argument("--windows", type=int, default=10, help="number of windows (default 10)")
    p.add_argument("--repeats", type=int, default=None, help="independent runs (default 5, quick 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.tasks = args.tasks or (10 if args.quick else 100)
    args.rewrites = args.rewrites or (1000 if args.quick else 10000)
    args.repeats = args.repeats or (1 if args.quick else 5)
    torch.set_num_threads(args.threads)

    header(args.quick, "", with_torch=False)
    t0 = time.perf_counter()
    net = build_net(args.tasks)
    build_s = time.perf_counter() - t0
    start = net.version
    print(f"net: {args.tasks} tasks, {len(net.graph)} nodes, {net.graph.number_of_edges()} edges, "
          f"version {start} (built in {build_s:.2f} s); {args.rewrites} rewrites "
          f"(set_lr_scale / annotate alternating, random nodes), {args.repeats} repeats")
    # Warm-up: a short run whose result is dropped (imports, attrs class caches).
    run(net, min(500, args.rewrites), args.seed + 1000)
    runs = []
    for r in range(args.repeats):  # every repeat starts again from the same 100-task net
        gc.collect()
        out, times = run(net, args.rewrites, args.seed + r)
        assert out.version == start + args.rewrites and len(out.log) == out.version
        runs.append(times)
        del out

    size = args.rewrites // args.windows
    print(f"per window: the median over {args.repeats} repeats of the window's mean / median / p90\n")
    print("| window (rewrites) | history length at start | mean ms/rewrite | median ms/rewrite | p90 ms/rewrite |")
    print("|---|---:|---:|---:|---:|")
    means, medians = [], []
    for w in range(args.windows):
        chunks = [t[w * size:(w + 1) * size] for t in runs]
        means.append(statistics.median(statistics.fmean(c) for c in chunks))
        medians.append(statistics.median(statistics.median(c) for c in chunks))
        p90 = statistics.median(statistics.quantiles(c, n=10)[-1] for c in chunks)
        print(f"| {w * size + 1}-{(w + 1) * size} | {start + w * size} | {means[-1]:.3f} | "
              f"{medians[-1]:.3f} | {p90:.3f} |")
    ratio = means[-1] / means[0]
    med_ratio = medians[-1] / medians[0]
    overall = statistics.median(statistics.fmean(t) for t in runs)
    total = statistics.median(sum(t) for t in runs) / 1e3
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| mean ms/rewrite, last window / first window | {ratio:.3f} | ~1 (<= {RATIO_TARGET}) "
          f"{'ok' if ratio <= RATIO_TARGET else 'MISSED'} |")
    print(f"| median ms/rewrite, last window / first window | {med_ratio:.3f} | ~1 (<= {RATIO_TARGET}) "
          f"{'ok' if med_ratio <= RATIO_TARGET else 'MISSED'} |")
    print(f"| mean ms/rewrite, all {args.rewrites} (median of repeats) | {overall:.3f} | <= {ABS_TARGET_MS} "
          f"{'ok' if overall <= ABS_TARGET_MS else 'MISSED'} |")
    print(f"| s per {args.rewrites} rewrites (median of repeats) | {total:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
