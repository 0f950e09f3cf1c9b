"""``jointnet run ... --seeds 0 1 2 [--jobs N]``: one configuration over several seeds.

Each seed is an ordinary run directory, ``OUT/seedN`` (`jointnet.experiments.sweep.start_sweep`
checks everything, then writes ``OUT/sweep.json`` and every seed's run.json before any training);
seeds run one after another in this process (``--jobs 1``, progress bars as for one run) or in up
to N processes at once, each ``jointnet run --resume OUT/seedN -q``. When every seed is done,
``OUT/aggregate.json`` and ``OUT/aggregate.csv`` hold mean, sd and 95% CI over the seeds
(`sweep.aggregate`), printed as a table. ``jointnet run --resume OUT`` continues the seeds that
are not done and aggregates again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jointnet.errors import JointNetError

__all__ = ["run_sweep", "resume_sweep"]


def run_sweep(spec, seeds: list[int], out: str, *, jobs: int = 1, quiet: bool = False) -> int:
    """Lay out the sweep (nothing is written when a check fails), run it, aggregate."""
    from jointnet.experiments import sweep

    sweep.start_sweep(spec, seeds, out)
    return _execute(Path(out), seeds, jobs=jobs, quiet=quiet)


def resume_sweep(out: str, seeds: list[int], *, jobs: int = 1, quiet: bool = False,
                 data_dir: str | None = None) -> int:
    """Continue the seeds of the sweep in `out` that are not done, then aggregate."""
    from jointnet.experiments import sweep

    missing = [s for s in seeds if not (sweep.seed_dir(out, s) / "run.json").is_file()]
    if missing:
        raise JointNetError(f"{sweep.seed_dir(out, missing[0])} holds no run.json; the sweep in {out} is "
                            "incomplete (was a seed's folder removed?)")
    return _execute(Path(out), seeds, jobs=jobs, quiet=quiet, data_dir=data_dir)


def _say(quiet: bool):
    if quiet:
        return lambda _msg: None
    from tqdm import tqdm

    return lambda msg: tqdm.write(msg)


def _execute(out: Path, seeds: list[int], *, jobs: int, quiet: bool, data_dir: str | None = None) -> int:
    from jointnet.experiments import rundir, runner, sweep

    say = _say(quiet)
    todo = [s for s in seeds if not rundir.is_complete(sweep.seed_dir(out, s))]
    if len(todo) < len(seeds):
        say(f"{len(seeds) - len(todo)} of {len(seeds)} seeds already done")
    failed: dict[int, str] = {}
    if jobs <= 1 or len(todo) <= 1:
        for i, s in enumerate(todo):
            d = sweep.seed_dir(out, s)
            say(f"== seed {s} ({i + 1} of {len(todo)}): {d}")
            try:
                res = runner.resume(d, echo=say, progress=not quiet, data_dir=data_dir)
            except JointNetError as e:
                failed[s] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                say(f"seed {s} failed: {failed[s]}")
                continue
            say(f"seed {s}: " + "  ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items()))
    else:
        failed = _parallel(out, todo, jobs, say, data_dir)
    if failed:
        first = next(iter(failed.items()))
        raise JointNetError(f"{len(failed)} of {len(seeds)} seeds failed (seed {first[0]}: {first[1]}); "
                            f"the others are kept: fix the cause and run `jointnet run --resume {out}`")
    agg = sweep.aggregate(out)
    sweep.write_aggregate(out, agg)
    print(sweep.format_aggregate(agg))
    print(f"aggregate: {out / 'aggregate.json'}, {out / 'aggregate.csv'}")
    return 0


def _child_env() -> dict[str, str]:
    """The environment of a seed's process: this one's, with the folder holding this jointnet
    (and the `strategies` package beside it) first on PYTHONPATH."""
    import jointnet

    root = str(Path(jointnet.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _parallel(out: Path, todo: list[int], jobs: int, say, data_dir: str | None) -> dict[int, str]:
    """Run the seeds in `todo`, at most `jobs` processes at once; returns the failures (seed ->
    the child's last line). Ctrl-C stops every child (each leaves a resumable run)."""
    from jointnet.experiments import sweep

    env = _child_env()
    waiting = list(todo)
    running: dict[int, tuple[subprocess.Popen, object]] = {}
    failed: dict[int, str] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                s = waiting.pop(0)
                cmd = [sys.executable, "-m", "jointnet.cli", "run", "--resume", str(sweep.seed_dir(out, s)), "-q"]
                if data_dir is not None:
                    cmd += ["--data-dir", data_dir]
                err = tempfile.TemporaryFile()
                running[s] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env), err)
                say(f"seed {s}: started ({sweep.seed_dir(out, s)})")
            for s, (proc, err) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[s]
                err.seek(0)
                lines = err.read().decode(errors="replace").strip().splitlines()
                err.close()
                if proc.returncode == 0:
                    say(f"seed {s}: done")
                else:
                    failed[s] = lines[-1].removeprefix("jointnet: error: ") if lines else f"exit status {proc.returncode}"
                    say(f"seed {s} failed: {failed[s]}")
            time.sleep(0.05)
    except KeyboardInterrupt:
        for proc, _err in running.values():  # they got the SIGINT too; make sure they stop
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _err in running.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    return failed
