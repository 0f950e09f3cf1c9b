"""What building a many-task net costs: 100, 400 and 1000 tasks.

Each task after the first runs the four rewrites of a typical growth step: ``add_task``,
``bind`` (to t1), ``add_head`` and ``clone_node`` of one trunk layer (fc2), on an MLP backbone
(32-64-64, 4 classes). Measured per size, in one process, best of ``--repeats`` fresh builds:

- the whole build (ms) and the time per rewrite (us);
- ``check(net)``, a snapshot ``save`` + ``load`` with every tensor (``dumps``/``loads``), and the
  text of ``jointnet inspect`` (``views.summary`` + ``views.sharing`` + ``format_inspect``);
- each as a ratio to the 100-task net, and per node (us).

Targets (Core 2 issue): the 1000-task build at most 15x the 100-task build (it does 10x the
rewrites); ``check`` and ``inspect`` linear in nodes (their time per node about constant).

Run: ``python benchmarks/build_net.py`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _common import header  # noqa: E402

import jointnet as jn  # noqa: E402
from jointnet import backbones, snapshot  # noqa: E402
from jointnet.cli.snapshots import format_inspect  # noqa: E402
from jointnet.persistence.views import sharing, summary  # noqa: E402

BUILD_TARGET = 15.0


def build(n_tasks: int) -> tuple[jn.JointNet, int]:
    net = backbones.build(backbones.mlp(32, (64, 64)), task="t1", n_classes=4)
    rewrites = 0
    for i in range(2, n_tasks + 1):
        t = f"t{i}"
        net = jn.add_task(net, task=t)
        net = jn.bind(net, task=t, to="t1")
        net = jn.add_head(net, task=t, n_classes=4)
        net = jn.clone_node(net, node="fc2", task=t)
        rewrites += 4
    return net, rewrites


def best(fn, repeats: int) -> float:
    """Best wall time of `fn` in ms over `repeats` calls (a collection first, so none lands inside)."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [10, 40], 1
    torch.set_num_threads(args.threads)
    header(args.quick, f"best of {args.repeats} fresh builds per size")
    rows = []
    for n in args.sizes:
        net, rewrites = build(n)
        t_build = best(lambda: build(n), args.repeats)
        store = jn.ParamStore(seed=0).realize(net)
        t_check = best(lambda: jn.check(net), args.repeats)
        data = snapshot.dumps(net, store)
        t_snap = best(lambda: snapshot.loads(snapshot.dumps(net, store)), args.repeats)
        t_inspect = best(lambda: format_inspect(summary(net), sharing(net)), args.repeats)
        rows.append((n, len(net.graph), rewrites, t_build, t_check, t_snap, len(data), t_inspect))
    base = rows[0]
    print()
    print("| tasks | nodes | rewrites | build ms | us/rewrite | build / first | check ms | check us/node "
          "| snapshot save+load ms | inspect ms | inspect us/node |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, nodes, rewrites, tb, tc, ts, size, ti in rows:
        print(f"| {n} | {nodes} | {rewrites} | {tb:.1f} | {1e3 * tb / max(rewrites, 1):.1f} | "
              f"{tb / base[3]:.2f} | {tc:.1f} | {1e3 * tc / nodes:.1f} | {ts:.1f} | {ti:.1f} | "
              f"{1e3 * ti / nodes:.1f} |")
    ratio = rows[-1][3] / base[3]
    growth = rows[-1][0] / base[0]
    verdict = "OK" if ratio <= BUILD_TARGET * growth / 10 else "MISSED"
    print(f"\n{rows[-1][0]}-task build / {base[0]}-task build = {ratio:.1f} "
          f"(target <= {BUILD_TARGET * growth / 10:.0f} for {growth:.0f}x the tasks): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
