"""`jointnet demo`: the main job. A short real task stream, a strategy and two baselines.

Runs split Fashion-MNIST (5 tasks x 2 classes, a subset of the images so it takes a couple of
minutes on 2 CPU cores) with PackNet (per-task binary masks over one shared trunk, no
forgetting by construction), fine-tuning (one trunk, forgets) and independent nets (one net
per task, no forgetting, 5x the parameters) through `jointnet.runner`. It prints each accuracy
matrix, a comparison of the metrics and parameter counts, what changed in PackNet's
architecture between the first and the last task (`jointnet.diff`), and where the snapshots
are with the commands to inspect them.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (or ``--data-dir``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import attrs

from jointnet import snapshot
from jointnet.diff import diff
from jointnet.runner import RunSpec, format_matrix, run

__all__ = ["main", "DEMO_RUNS"]

DEMO_RUNS = ("packnet", "finetune", "independent")
STREAM = "split-fmnist"


def main(args: argparse.Namespace | None = None) -> int:
    out = Path(getattr(args, "out", None) or "jointnet-demo")
    epochs = int(getattr(args, "epochs", None) or 2)
    n_train = int(getattr(args, "n_train", None) or 2000)
    data_dir = getattr(args, "data_dir", None)
    seed = int(getattr(args, "seed", None) or 0)
    stream_options = {"n_train_per_task": n_train, "n_test_per_task": 1000}
    if data_dir:
        stream_options["data_dir"] = str(data_dir)
    print(f"jointnet demo: {', '.join(DEMO_RUNS)} on {STREAM} (5 tasks x 2 classes, {n_train} training "
          f"images per task, {epochs} epochs, seed {seed}); output in {out}/")
    results = {}
    t0 = time.perf_counter()
    for name in DEMO_RUNS:
        run_dir = out / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        spec = RunSpec(name, STREAM, seed=seed, stream_options=stream_options, config={"epochs": epochs})
        print(f"\n== {name}")
        results[name] = run(spec, run_dir, echo=lambda m: None if " epoch " in m else print("  " + m))
        r = results[name]
        print(format_matrix(r["tasks"], r["matrix"]))
    print(f"\n== comparison (accuracy matrices above; R[i][j] = accuracy on task j after task i)")
    print(f"{'strategy':<12} {'AP':>7} {'AF':>8} {'BWT':>8} {'params':>9} {'time s':>7}")
    for name, r in results.items():
        m, p = r["metrics"], r["params"][-1]
        print(f"{name:<12} {m['AP']:7.4f} {m['AF']:+8.4f} {m['BWT']:+8.4f} {p['total']:9d} {sum(r['wall_time']):7.1f}")
    main_run = out / DEMO_RUNS[0]
    snaps = [main_run / s for s in results[DEMO_RUNS[0]]["snapshots"]]
    first, _ = snapshot.load(snaps[0])
    last, _ = snapshot.load(snaps[-1])
    print(f"\n== what changed in {DEMO_RUNS[0]}'s architecture between the first and the last task")
    change = diff(first, last)
    # The full rewrite list is what `jointnet log` shows; here, the count and the effect.
    print(f"{len(change.rewrites)} rewrites (see `jointnet log`)")
    print(str(attrs.evolve(change, rewrites=())))
    print(f"\nsnapshots (one per task): {main_run / 'snapshots'}/")
    print(f"results:   {main_run / 'results.json'}, {main_run / 'results.csv'}")
    print(f"inspect:   jointnet inspect {snaps[-1]}\n"
          f"           jointnet log {snaps[-1]}\n"
          f"           jointnet diff {snaps[0]} {snaps[-1]}\n"
          f"           jointnet render {snaps[-1]} -o {out / 'packnet.svg'}")
    print(f"\ndone in {time.perf_counter() - t0:.0f}s")
    return 0
