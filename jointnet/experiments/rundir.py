"""Run directories: what `jointnet run` writes, and reading it back as hostile input.

Layout of a run directory:

- ``run.json``: what was asked and what it meant (format 2): the strategy, stream, seed,
  reference and data folder; the options as given (``strategy_options``, ``stream_options``,
  ``config``), from which a resume rebuilds the run; under ``effective`` every option in force
  (strategy options from ``attrs.asdict`` of the built strategy, stream options with their
  defaults, the whole `TrainConfig` but ``progress``); under ``versions`` jointnet's, torch's
  and Python's. Format 1 (no ``format`` key: the options as given only) is still read.
- ``snapshots/task_NN_NAME.jn``: the net and every tensor it references after task NN;
- ``results.json``: accuracy matrix, metrics, parameter counts and wall time per task;
  rewritten (atomically) after every task, it also says how many tasks are done;
- ``results.csv``: one row per task: parameters and the accuracy on every task seen so far;
- ``log.txt``: a line per epoch and per task.

Every file is written atomically; every file read back is size- and depth-bounded and checked
field by field, so a damaged or forged directory is a one-line `JointNetError` naming the file
and the field, never a traceback. Removal touches only files of the exact names a run writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

import attrs
import torch

from jointnet.errors import JointNetError
from jointnet.persistence.fileio import write_bytes_atomically

__all__ = [
    "RunSpec", "read_record", "read_spec", "read_results", "read_json", "is_complete", "check_out", "create",
    "remove_created", "clean_stale", "write_text", "write_csv", "snapshot_name", "results_problem", "versions",
    "RUN_FORMAT", "RESULTS_VERSION", "EFFECTIVE_KEYS", "SWEEP_FILE",
]

RESULTS_VERSION = 1
RUN_FORMAT = 2
SWEEP_FILE = "sweep.json"
OWN_FILES = ("run.json", "results.json", "results.csv", "log.txt")
SNAPSHOT = re.compile(r"task_\d{2,}_[A-Za-z0-9_.:+@/-]+\.jn")


@attrs.frozen
class RunSpec:
    """Everything that defines a run, as asked: saved in run.json.

    ``reference`` is a results.json (or a run directory) whose diagonal is the FWT reference; a
    relative path is taken from the current directory when the run starts (run.json records it
    absolute). ``data_dir`` is where the stream's files are (`jointnet.experiments.data`).
    """

    strategy: str
    stream: str
    seed: int = 0
    strategy_options: dict = attrs.field(factory=dict)
    stream_options: dict = attrs.field(factory=dict)
    config: dict = attrs.field(factory=dict)  # TrainConfig fields
    reference: str | None = None
    data_dir: str | None = None


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (`fileio.write_atomically`, as `snapshot.save` does): the
    same temporary-name pattern (``.NAME.<12 hex>.tmp``, so `clean_stale` finds leftovers of a
    kill) and the same mode (0o666 less the umask) for every file of a run."""
    write_bytes_atomically(path, text)


# Temporary files this module and `snapshot.save` create beside a run's files; a kill during a
# write leaves one behind, and `resume` removes them (only regular files of exactly this form).
_STALE = re.compile(r"\.(run\.json|results\.json|results\.csv|sweep\.json|aggregate\.json|aggregate\.csv"
                    r"|task_\d{2,}_[A-Za-z0-9_.:+@/-]+\.jn)\.[0-9a-f]{12}\.tmp")


def clean_stale(out: Path) -> list[Path]:
    """Remove the temporary files a killed write left in `out` and `out/snapshots`."""
    gone = []
    for folder in (out, out / "snapshots"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in os.scandir(folder):
            if _STALE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                gone.append(Path(entry.path))
    return gone


# ---- run.json ------------------------------------------------------------------------------------

_V1_TYPES = {
    "strategy": (str,), "stream": (str,), "seed": (int,), "strategy_options": (dict,),
    "stream_options": (dict,), "config": (dict,), "reference": (str, type(None)),
}
_V2_TYPES = {**_V1_TYPES, "format": (int,), "data_dir": (str, type(None)), "effective": (dict,),
             "versions": (dict,)}
EFFECTIVE_KEYS = ("strategy_options", "stream_options", "config")
# The longest a run.json, results.json or sweep.json may be (they are read whole), and how deeply
# its values may nest (ours nest a few levels: a backbone is a list of maps).
MAX_RECORD_BYTES = 64 << 20
MAX_RECORD_DEPTH = 32


def read_json(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise JointNetError(f"{path} is not a file")
        if size > MAX_RECORD_BYTES:
            raise JointNetError(f"{path} is not a valid {what}: {size} bytes, more than {MAX_RECORD_BYTES}")
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise JointNetError(f"{path} is not a valid {what}: {e}") from None
    except RecursionError:
        raise JointNetError(f"{path} is not a valid {what}: nested too deeply") from None
    if _depth(data) > MAX_RECORD_DEPTH:
        raise JointNetError(f"{path} is not a valid {what}: nested deeper than {MAX_RECORD_DEPTH} levels")
    return data


def _depth(value: Any) -> int:
    """How deeply lists and maps nest in `value` (iteratively: hostile input cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_record(path: str | os.PathLike) -> dict:
    """The run.json at `path`, every field's type checked (format 1 or 2), as a dict with the
    format-2 keys (``format``, ``data_dir``, ``effective`` and ``versions`` are 1, None, {}
    and {} for a format-1 file).

    Raises:
        JointNetError: no such file, not JSON, or a field of the wrong type (named).
    """
    path = Path(path)
    try:
        raw = read_json(path, "run description")
    except FileNotFoundError:
        raise JointNetError(f"{path.parent} holds no run (no run.json)") from None
    if not isinstance(raw, dict):
        raise JointNetError(f"{path} is not a valid run description: it must be a map")
    fmt = raw.get("format", 1)
    types = _V2_TYPES if fmt == RUN_FORMAT else _V1_TYPES if "format" not in raw else None
    if types is None:
        raise JointNetError(f"{path} is not a valid run description: format {fmt!r:.20}; this jointnet "
                            f"reads formats 1 and {RUN_FORMAT}")
    if set(raw) != set(types):
        raise JointNetError(f"{path} is not a valid run description: it must be a map with the keys "
                            f"{', '.join(types)}")
    for key, allowed in types.items():
        if type(raw[key]) not in allowed:
            raise JointNetError(f"{path} is not a valid run description: {key} must be "
                                f"{' or '.join(t.__name__ for t in allowed)}, got {raw[key]!r:.60}")
    if fmt == RUN_FORMAT:
        eff = raw["effective"]
        if set(eff) != set(EFFECTIVE_KEYS) or not all(type(eff[k]) is dict for k in EFFECTIVE_KEYS):
            raise JointNetError(f"{path} is not a valid run description: effective must be a map of "
                                f"{', '.join(EFFECTIVE_KEYS)}, each a map")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw["versions"].items()):
            raise JointNetError(f"{path} is not a valid run description: versions must map names to strings")
    out = {"format": 1, "data_dir": None, "effective": {}, "versions": {}, **raw}
    if out["format"] == 1 and isinstance(out["stream_options"].get("data_dir"), str):
        # format 1 kept the data folder among the stream options (-S data_dir=...)
        out["stream_options"] = {k: v for k, v in out["stream_options"].items() if k != "data_dir"}
        out["data_dir"] = raw["stream_options"]["data_dir"]
    return out


def read_spec(path: str | os.PathLike) -> RunSpec:
    """The `RunSpec` (options as given) of the run.json at `path`; see `read_record`."""
    rec = read_record(path)
    return RunSpec(**{k: rec[k] for k in (a.name for a in attrs.fields(RunSpec))})


def versions() -> dict[str, str]:
    from jointnet import __version__

    return {"jointnet": __version__, "torch": torch.__version__, "python": platform.python_version()}


# ---- results.json --------------------------------------------------------------------------------

_RESULTS_KEYS = {"format", "strategy", "stream", "seed", "tasks", "done", "matrix", "metrics", "params",
                 "wall_time", "epochs", "snapshots"}


def snapshot_name(i: int, task: str) -> str:
    return str(Path("snapshots") / f"task_{i:02d}_{task}.jn")


def results_problem(res: Any, names: list[str], expect: dict) -> str | None:
    """Why `res` is not a results.json of a run with task `names` and the `expect`ed strategy /
    stream / seed, or None."""
    if not isinstance(res, dict) or not _RESULTS_KEYS <= set(res):
        return f"it must be a map with the keys {', '.join(sorted(_RESULTS_KEYS))}"
    if res["format"] != RESULTS_VERSION:
        return f"format {res['format']!r:.20}, this jointnet writes {RESULTS_VERSION}"
    for key, want in [*expect.items(), ("tasks", names)]:
        if res[key] != want:
            return f"its {key} {res[key]!r:.60} is not the run's {want!r:.60}"
    done = res["done"]
    if type(done) is not int or not 0 <= done <= len(names):
        return f"done must be an int in [0, {len(names)}], got {done!r:.20}"
    for key in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        if not isinstance(res[key], list) or len(res[key]) != done:
            return f"{key} must be a list of {done} entries, one per finished task"
    for i, row in enumerate(res["matrix"]):
        if (not isinstance(row, list) or len(row) != i + 1
                or not all(type(a) in (int, float) and math.isfinite(a) for a in row)):
            return f"matrix row {i} must hold {i + 1} accuracies"
    for i, p in enumerate(res["params"]):
        if (not isinstance(p, dict) or type(p.get("total")) is not int or type(p.get("shared")) is not int
                or not isinstance(p.get("owned"), dict)):
            return f"params entry {i} must be a map with total, shared and owned"
    for i, w in enumerate(res["wall_time"]):
        if type(w) not in (int, float) or not math.isfinite(w):
            return f"wall_time entry {i} must be a number"
    for i, snap in enumerate(res["snapshots"]):
        if snap != snapshot_name(i, names[i]):
            return f"snapshot entry {i} must be {snapshot_name(i, names[i])!r}, got {snap!r:.60}"
    if not isinstance(res["metrics"], dict):
        return "metrics must be a map"
    if "stream_options" in res and not isinstance(res["stream_options"], dict):
        return "stream_options must be a map"
    bad = res.get("nonfinite", {})
    if not isinstance(bad, dict) or not all(k in names and type(v) is int and v >= 0 for k, v in bad.items()):
        return "nonfinite must map task names to counts"
    return None


def read_results(path: str | os.PathLike, spec: RunSpec, names: list[str]) -> dict:
    """results.json of a run, checked against its run.json and stream: a damaged or foreign file
    is a one-line `JointNetError` naming what is wrong, never a traceback or a read elsewhere."""
    path = Path(path)

    def bad(why: str) -> JointNetError:
        return JointNetError(f"{path} is damaged ({why}); the snapshots in {path.parent / 'snapshots'} "
                             "are untouched: remove results.json and the snapshots to start over")

    try:
        res = read_json(path, "results file")
    except (FileNotFoundError, JointNetError) as e:
        raise bad(f"not readable JSON: {e}") from None
    why = results_problem(res, names, {"strategy": spec.strategy, "stream": spec.stream, "seed": spec.seed})
    if why:
        raise bad(why)
    return res


def is_complete(out: str | os.PathLike) -> bool:
    """Whether the run in `out` has finished every task (by its results.json; False when absent
    or unreadable)."""
    try:
        res = json.loads((Path(out) / "results.json").read_bytes())
        return isinstance(res, dict) and isinstance(res.get("tasks"), list) and res.get("done") == len(res["tasks"])
    except (OSError, ValueError):
        return False


# ---- creating and removing ----------------------------------------------------------------------

def check_out(out: Path) -> None:
    """`out` may take a new run: absent, or a folder holding no file a run writes."""
    if out.exists() and not out.is_dir():
        raise JointNetError(f"--out {out} is not a directory")
    if (out / "run.json").exists():
        raise JointNetError(f"{out} already holds a run; resume it with `jointnet run --resume {out}` "
                            "or choose another --out")
    if (out / SWEEP_FILE).exists():
        raise JointNetError(f"{out} already holds a sweep; resume it with `jointnet run --resume {out}` "
                            "or choose another --out")
    for name in (*OWN_FILES[1:], "aggregate.json", "aggregate.csv"):
        if os.path.lexists(out / name):
            raise JointNetError(f"--out {out} holds {name}, which a run would overwrite; choose another --out")
    snaps = out / "snapshots"
    if os.path.lexists(snaps) and (not snaps.is_dir() or snaps.is_symlink() or any(snaps.iterdir())):
        raise JointNetError(f"--out {out} holds snapshots/, which a run would write into; choose another --out")


def create(out: Path, record: dict) -> list[Path]:
    """Make `out` (and snapshots/) and write run.json; returns the folders it made, outermost first."""
    text = json.dumps(record, indent=2)  # before anything is made: a value JSON cannot hold fails here
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)][::-1]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "snapshots").exists():
        (out / "snapshots").mkdir()
        made.append(out / "snapshots")
    write_text(out / "run.json", text)
    return made


def remove_created(out: Path, made: list[Path]) -> None:
    """Undo a run that failed before finishing a task: remove the files such a run writes (they
    were absent before it started: `check_out`) and the folders it made, if empty."""
    for name in OWN_FILES:
        p = out / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    clean_stale(out)
    snaps = out / "snapshots"
    if snaps.is_dir() and not snaps.is_symlink():
        for entry in os.scandir(snaps):
            if SNAPSHOT.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
    for folder in reversed(made):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            break


def write_csv(path: Path, results: dict) -> None:
    names = results["tasks"]
    rows = []
    for i, row in enumerate(results["matrix"]):
        p = results["params"][i]
        rows.append([i, names[i], f"{results['wall_time'][i]:.3f}", p["total"], p["shared"],
                     p["owned"].get(names[i], 0)] + [f"{a:.6f}" for a in row] + [""] * (len(names) - len(row)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "task", "wall_time_s", "params_total", "params_shared", "params_owned"]
               + [f"acc_{n}" for n in names])
    w.writerows(rows)
    write_text(path, buf.getvalue())
