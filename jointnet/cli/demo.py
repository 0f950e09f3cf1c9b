"""`jointnet demo`: the main job. A short real task stream, a strategy and two baselines.

Runs split Fashion-MNIST (5 tasks x 2 classes, a subset of the images so it takes a couple of
minutes on 2 CPU cores) with PackNet (per-task binary masks over one shared trunk, no
forgetting by construction), fine-tuning (one trunk, forgets) and independent nets (one net
per task, no forgetting, 5x the parameters) through `jointnet.experiments.runner`. It prints each accuracy
matrix, a comparison of the metrics and parameter counts, what changed in PackNet's
architecture between the first and the last task (`jointnet.persistence.diff`), and where the snapshots
are with the commands to inspect them.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (or ``--data-dir``).
Every option is checked, and the stream built once, before anything is written; training uses
``--threads`` CPU threads (default 1, as ``jointnet run``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import time
from pathlib import Path

import attrs

from jointnet.persistence import snapshot
from jointnet.persistence.diff import diff
from jointnet.errors import JointNetError
from jointnet.experiments.runner import RunSpec, format_matrix, prepare, run

__all__ = ["main", "DEMO_RUNS", "MANIFEST"]

DEMO_RUNS = ("packnet", "finetune", "independent")
STREAM = "split-fmnist"


MANIFEST = ".jointnet-demo.json"
"""The file in a demo's output directory listing every file the demo wrote (path, size, mtime)."""

_MIN_TRAIN = 20  # 10 images per class: enough for a validation image of each


def _options(args: argparse.Namespace | None) -> tuple[Path, int, int, str | None, int, int]:
    """(out, epochs, n_train, data_dir, seed, threads) from the parsed arguments, each validated."""

    def opt(name: str, default):
        value = getattr(args, name, None)
        return default if value is None else value

    out = Path(opt("out", "jointnet-demo"))
    epochs, n_train, seed, threads = opt("epochs", 2), opt("n_train", 2000), opt("seed", 0), opt("threads", 1)
    for flag, value, lo in (("--epochs", epochs, 1), ("--n-train", n_train, _MIN_TRAIN), ("--seed", seed, 0),
                            ("--threads", threads, 1)):
        if type(value) is not int or value < lo:
            raise JointNetError(f"--{flag.lstrip('-')} must be an int >= {lo} (got {value!r})")
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise JointNetError(f"--data-dir {data_dir}: no such directory")
    return out, epochs, n_train, (os.path.abspath(data_dir) if data_dir else None), seed, threads


def _read_manifest(out: Path) -> list[dict]:
    """The files an earlier demo wrote into `out`, validated: relative paths inside `out` that
    name regular files. Anything odd is an error, never a reason to delete."""
    path = out / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise JointNetError(f"--out {out} is not empty and is not the output of an earlier `jointnet demo` "
                            f"(no {MANIFEST}); choose a new or empty directory")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise JointNetError(f"{path} is damaged ({e}); choose a new or empty directory") from None
    if not isinstance(raw, dict) or raw.get("format") != 1 or not isinstance(raw.get("files"), list):
        raise JointNetError(f"{path} is not a demo manifest; choose a new or empty directory")
    files = []
    for entry in raw["files"]:
        ok = (isinstance(entry, dict) and set(entry) == {"path", "size", "mtime_ns"}
              and isinstance(entry["path"], str) and type(entry["size"]) is int
              and type(entry["mtime_ns"]) is int)
        rel = Path(entry["path"]) if ok else None
        if not ok or rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts[0] not in DEMO_RUNS:
            raise JointNetError(f"{path} lists {entry!r:.80}, which is not a file a demo writes; "
                                "choose a new or empty directory")
        files.append(entry)
    return files


def _remove_own(out: Path) -> None:
    """Delete the files an earlier demo wrote into `out` (as its manifest lists them) that are
    still exactly as it left them (a regular file, same size and mtime), then the folders it made
    if they are empty. A file the demo did not write, or that changed since, stays."""
    for entry in _read_manifest(out):
        target = out / entry["path"]
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == entry["size"] and st.st_mtime_ns == entry["mtime_ns"]:
            os.unlink(target)
    for name in DEMO_RUNS:
        for folder in (out / name / "snapshots", out / name):
            if folder.is_dir() and not folder.is_symlink():
                try:
                    folder.rmdir()  # only if empty
                except OSError:
                    pass


_OWN = ("run.json", "results.json", "results.csv", "log.txt")
_SNAPSHOT = re.compile(r"task_\d{2,}_[A-Za-z0-9_.:+@/-]+\.jn")


def _runner_files(run_dir: Path) -> list[Path]:
    """The regular files in `run_dir` with the names the runner writes."""
    found = [run_dir / n for n in _OWN]
    snaps = run_dir / "snapshots"
    if snaps.is_dir() and not snaps.is_symlink():
        found += [snaps / e.name for e in os.scandir(snaps) if _SNAPSHOT.fullmatch(e.name)]
    return [p for p in found if p.is_file() and not p.is_symlink()]


def _write_manifest(out: Path, runs: list[Path]) -> None:
    """Record the files the runs wrote (checked absent before each run, so they are the demo's)."""
    files = []
    for run_dir in runs:
        for path in sorted(_runner_files(run_dir)):
            st = os.lstat(path)
            files.append({"path": str(path.relative_to(out)), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1))
    os.replace(tmp, out / MANIFEST)


def main(args: argparse.Namespace | None = None) -> int:
    out, epochs, n_train, data_dir, seed, threads = _options(args)
    if out.exists() and not out.is_dir():
        raise JointNetError(f"--out {out} is not a directory")
    stream_options = {"n_train_per_task": n_train, "n_test_per_task": 1000}
    config = {"epochs": epochs, "threads": threads}
    specs = {name: RunSpec(name, STREAM, seed=seed, stream_options=stream_options, config=config, data_dir=data_dir)
             for name in DEMO_RUNS}
    prepare(specs[DEMO_RUNS[0]])  # the options and the data, before anything is written
    if out.is_dir() and any(out.iterdir()):
        _remove_own(out)  # refuses a non-empty directory that no demo wrote
        leftovers = [p for name in DEMO_RUNS for p in _runner_files(out / name)]
        if leftovers:
            raise JointNetError(f"{leftovers[0]} was not written by the last demo (or changed since); "
                                "remove it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"jointnet demo: {', '.join(DEMO_RUNS)} on {STREAM} (5 tasks x 2 classes, {n_train} training "
          f"images per task, {epochs} epochs, seed {seed}); output in {out}/")
    results = {}
    t0 = time.perf_counter()
    done: list[Path] = []
    try:
        for name in DEMO_RUNS:
            run_dir = out / name
            print(f"\n== {name}")
            done.append(run_dir)
            results[name] = run(specs[name], run_dir, echo=lambda m: None if " epoch " in m else print("  " + m))
            r = results[name]
            print(format_matrix(r["tasks"], r["matrix"]))
    finally:
        _write_manifest(out, [d for d in done if d.is_dir()])
    print("\n== comparison (accuracy matrices above; R[i][j] = accuracy on task j after task i)")
    print("AP: mean final accuracy; F: forgetting (best earlier minus final accuracy, positive = forgets); "
          "AF (PAR's) and BWT: final minus just-trained accuracy")
    print(f"{'strategy':<12} {'AP':>7} {'F':>7} {'AF':>8} {'BWT':>8} {'params':>9} {'time s':>7}")
    for name, r in results.items():
        m, p = r["metrics"], r["params"][-1]
        print(f"{name:<12} {m['AP']:7.4f} {m['F']:7.4f} {m['AF']:+8.4f} {m['BWT']:+8.4f} {p['total']:9d} "
              f"{sum(r['wall_time']):7.1f}")
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
          f"           jointnet render {snaps[-1]} -o {out / 'packnet.svg'}\n"
          f"report:    jointnet report {' '.join(str(out / n) for n in DEMO_RUNS)} -o {out / 'report.html'}")
    print(f"\ndone in {time.perf_counter() - t0:.0f}s")
    return 0
