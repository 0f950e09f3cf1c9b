"""Optuna studies shared by worker processes: what `strategies.l2bg_search` and
`strategies.lasem_brute` both need.

A study lives in a *journal file* (`optuna.storages.JournalStorage` over a file backend), which
several processes may append to at once (file locks), unlike SQLite, so every worker opens the
same study by name and asks it for trials. `journal_storage` hides the Optuna versions' names of
the file backend (``optuna.storages.journal.JournalFileBackend`` from 4.0,
``optuna.storages.JournalFileStorage`` before). `open_study` creates the study or loads it when
it exists. Workers are this repository's modules run as ``python -m MODULE ARGS`` with the
repository root on ``PYTHONPATH`` (`worker_env`); `run_workers` starts them all and waits.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     journal = Path(folder) / "sub" / "journal.log"
...     made = open_study(journal, "demo", direction="maximize")
...     again = open_study(journal, "demo")
>>> made.study_name, again.direction.name
('demo', 'MAXIMIZE')
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ROOT", "optuna_module", "quiet", "journal_storage", "open_study", "worker_env", "run_workers"]

#: The repository root (on every worker's ``PYTHONPATH``).
ROOT = Path(__file__).resolve().parents[1]


def optuna_module():
    """Optuna, an optional dependency (the ``search`` extra), or one clear error saying how to
    install it."""
    try:
        import optuna
    except ImportError:
        from jointnet.errors import JointNetError

        raise JointNetError("searches and brute force need Optuna, an optional dependency: "
                            "pip install 'jointnet[search]'") from None
    return optuna


def quiet() -> None:
    """Optuna logs warnings only (not a line per trial)."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal_storage(journal: str | os.PathLike):
    """A `JournalStorage` on the file `journal` (its folder made if missing), safe for several
    processes; works with Optuna 3.x and 4.x."""
    optuna_module()
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend  # optuna >= 4.0
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileStorage as JournalFileBackend

    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def open_study(journal: str | os.PathLike, name: str, *, sampler=None, direction: str | None = None,
               directions: Sequence[str] | None = None):
    """Create the study `name` in the journal file, or load it when it exists (then `direction` /
    `directions` must match what it was created with)."""
    return optuna_module().create_study(study_name=name, storage=journal_storage(journal), sampler=sampler,
                               direction=direction, directions=None if directions is None else list(directions),
                               load_if_exists=True)


def worker_env() -> dict[str, str]:
    """This process's environment with the repository root first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_workers(module: str, argvs: Sequence[Sequence[str]], *, show_output: bool = True) -> list[int]:
    """Run ``python -m module *argv`` once per entry of `argvs`, all at once (from the
    repository root, `worker_env`), wait for all of them, and return their exit codes in order.
    `show_output`: False sends their standard output to /dev/null (errors still show)."""
    procs = [subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], env=worker_env(), cwd=str(ROOT),
                              stdout=None if show_output else subprocess.DEVNULL)
             for argv in argvs]
    return [p.wait() for p in procs]
