"""Snapshot speed, measured against torch.save / torch.load in the same run.

Two cases, each timed `--repeats` times (median reported):

- **tensors**: `snapshot.save` + `snapshot.load` of an MLP of about `--params` parameters
  realized in a `ParamStore`, against `torch.save` + `torch.load` of a dict of the very same
  tensors (the store's tensors, as a plain ``{key: tensor}`` dict). Target: ratio <= 1.2.
- **structure**: `snapshot.save` + `snapshot.load` (``tensors=False``) of a net of `--nodes`
  nodes (several tasks, each with its own input and a chain of Linear/ReLU layers and a head),
  including the `check(net)` that `load` runs. Target: < 100 ms.

Each repeat times every step once, after ``os.sync()`` (so no call pays for, or gets away with,
the writeback of an earlier file). Torch's intra-op threads are set explicitly
(``--threads``); the snapshot's CRC-32 uses libdeflate when the system has it, else zlib, and
helper threads when the process may use more than one CPU (the header says which).

Run: ``python benchmarks/snapshot.py`` (``--help`` for the options). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import header  # noqa: E402

from jointnet import backbones, snapshot  # noqa: E402
from jointnet.graph.net import JointNet  # noqa: E402
from jointnet.persistence import fileio  # noqa: E402
from jointnet.execution.store import ParamStore  # noqa: E402
from jointnet.graph import add_head, add_input, add_node, add_task  # noqa: E402


def big_mlp(params: int) -> tuple[JointNet, ParamStore]:
    """An MLP 1024 -> h -> h -> h -> 10 with h chosen so it has about `params` parameters."""
    d = 1024
    # d*h + 2*h*h (plus small terms) = params  =>  h = (-d + sqrt(d^2 + 8 params)) / 4
    h = max(8, int((-d + math.sqrt(d * d + 8 * params)) / 4))
    net = backbones.build(backbones.mlp(d, [h, h, h]), task="t1", n_classes=10)
    return net, ParamStore(seed=0).realize(net)


def many_nodes(nodes: int, tasks: int = 20, width: int = 16) -> JointNet:
    """A net of `nodes` nodes: `tasks` tasks, each an input, a Linear/ReLU chain and a head."""
    depth = max(1, nodes // tasks - 2)
    net = JointNet.empty()
    for i in range(tasks):
        t = f"t{i}"
        prev = f"in.{t}"
        net = add_input(net, node=prev, shape=(width,))
        net = add_task(net, task=t, input=prev)
        for j in range(depth):
            spec = {"kind": "linear", "out_f": width} if j % 2 == 0 else {"kind": "relu"}
            net = add_node(net, node=f"{t}.n{j}", spec=spec, inputs=[prev], task=t)
            prev = f"{t}.n{j}"
        net = add_head(net, task=t, n_classes=2)
    return net


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000, help="parameters of the tensor case")
    ap.add_argument("--nodes", type=int, default=1000, help="nodes of the structure case")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="jointnet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    snap_path = workdir / "bench.jns"
    torch_path = workdir / "bench.pt"

    # ---- tensors ----
    net, store = big_mlp(args.params)
    n_params = sum(store[k].numel() for k in store)
    tensors = {k: store[k] for k in store}
    mbytes = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20

    def snap_round():
        snapshot.save(snap_path, net, store)
        snapshot.load(snap_path)

    def torch_round():
        torch.save(tensors, torch_path)
        torch.load(torch_path, weights_only=True)

    # Check once that the round trip is exact before timing it.
    net2, store2 = snapshot.load(snapshot.save(snap_path, net, store))
    assert net2 == net and all(torch.equal(store[k], store2[k]) for k in store)

    # Warm up; then, per repeat, time each step from a clean page cache state: os.sync() first,
    # so that no call pays for (or gets away with) the writeback of an earlier call's file.
    snap_round()
    torch_round()
    steps = {
        "snap_save": lambda: snapshot.save(snap_path, net, store),
        "snap_load": lambda: snapshot.load(snap_path),
        "torch_save": lambda: torch.save(tensors, torch_path),
        "torch_load": lambda: torch.load(torch_path, weights_only=True),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            os.sync()
            times[name] += timed(fn, 1)
    snap_save, snap_load, torch_save, torch_load = (statistics.median(times[k]) for k in steps)
    snap_sums = [a + b for a, b in zip(times["snap_save"], times["snap_load"])]
    torch_sums = [a + b for a, b in zip(times["torch_save"], times["torch_load"])]
    snap_med, torch_med = statistics.median(snap_sums), statistics.median(torch_sums)
    ratio = snap_med / torch_med
    best_ratio = min(snap_sums) / min(torch_sums)
    snap_size = os.path.getsize(snap_path) / 2**20
    torch_size = os.path.getsize(torch_path) / 2**20

    # ---- structure ----
    start = time.perf_counter()
    big = many_nodes(args.nodes)
    build_s = time.perf_counter() - start
    struct_path = workdir / "struct.jns"

    def struct_round():
        assert snapshot.load(snapshot.save(struct_path, big))[0] == big

    struct_round()
    saves, loads = [], []
    for _ in range(args.repeats):
        os.sync()
        saves += timed(lambda: snapshot.save(struct_path, big), 1)
        loads += timed(lambda: snapshot.load(struct_path), 1)
    struct_save, struct_load = statistics.median(saves), statistics.median(loads)
    struct_sums = [a + b for a, b in zip(saves, loads)]
    struct_med = statistics.median(struct_sums)
    struct_size = os.path.getsize(struct_path) / 2**10

    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    crc = (f"CRC-32 by {'libdeflate' if fileio.fast_crc32_available() else 'zlib'}, with helper threads "
           f"only while CPUs are idle ({fileio.crc_helpers()} at the end of the run)")
    header(False, f"{args.repeats} repeats (median, and best; os.sync() before each timed call); {crc}; "
                  f"files in {workdir}\n")
    print("| case | what | save ms | load ms | save+load ms | best save+load ms | file | ratio (median) / target |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    print(f"| tensors | snapshot, MLP {n_params / 1e6:.1f}M params ({mbytes:.0f} MiB, {len(tensors)} tensors) "
          f"| {ms(snap_save)} | {ms(snap_load)} | {ms(snap_med)} | {ms(min(snap_sums))} | {snap_size:.1f} MiB "
          f"| {ratio:.2f}x torch (best: {best_ratio:.2f}x); target <= 1.2: {'OK' if ratio <= 1.2 else 'MISSED'} |")
    print(f"| tensors | torch.save + torch.load, same tensors | {ms(torch_save)} | {ms(torch_load)} "
          f"| {ms(torch_med)} | {ms(min(torch_sums))} | {torch_size:.1f} MiB | 1.00 |")
    print(f"| structure | snapshot, {len(big.graph)} nodes, {len(big.tasks)} tasks, {len(big.log)} log records, "
          f"tensors=False (load runs check) | {ms(struct_save)} | {ms(struct_load)} | {ms(struct_med)} "
          f"| {ms(min(struct_sums))} | {struct_size:.0f} KiB "
          f"| target < 100 ms: {'OK' if struct_med < 0.1 else 'MISSED'} |")
    print()
    print(f"(building the {len(big.graph)}-node net took {build_s:.1f} s; not timed above)")
    if not args.dir:
        for p in (snap_path, torch_path, struct_path):
            p.unlink(missing_ok=True)
        workdir.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
