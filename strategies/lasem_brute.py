"""``lasem-brute``: task-wise brute force over LASEM's configurations (spec §5 Table 3, §6).

For every task, every valid configuration (`strategies.lasem_core.enumerate_masks`) is trained
separately as a static configuration (exactly what ``lasem-<learner> -O config=MASK`` does),
each from the same state: the net and store as the previous task left them. The configuration
with the best validation accuracy is kept (ties: the first in enumeration order), its net and
tensors become the run's, and the task annotation ``lasem`` records ``how = "brute"`` and every
configuration's validation accuracy (``val``).

The trials are Optuna trials in a study with shared storage (a journal file, `strategies.trials`:
safe for several processes, unlike SQLite), one study per task: the parent saves the pre-task state as a snapshot, enqueues one trial per configuration
and starts ``workers`` processes (``python -m strategies.lasem_brute --spec ... --worker-id
i``); each pops waiting trials until none is left, trains the configuration, saves the trained
net as a snapshot and reports the validation accuracy. Every trial starts from the seeds the
runner gives the task (``torch.manual_seed(seed * 7919 + index)``), so a trial's result does not
depend on which worker ran it or in which order. With ``workers=1`` the trials run in the
parent process through the same code.

Options: every option of `strategies.lasem.Lasem` (the template, ``init``, optimizer settings,
...) except ``config``, and:

- ``learner`` = ``"hps"`` | ``"tf"`` | ``"dfcnn"``: the base learner;
- ``workers`` = 1: processes running trials in parallel;
- ``threads`` = None: torch threads per worker process (None: 1 with several workers, the
  parent's setting with one);
- ``storage`` = None: a directory for the journal (``journal.log``), the spec file and the
  trial snapshots; None: a new temporary directory per task, removed afterwards. With a
  directory, a re-run of the same stream, seed, task, options and training config reuses the
  finished trials (the study's name ends in a digest of all of them, `BruteSpec.digest`); other
  settings start new studies in the same journal.

>>> LasemBrute(learner="tf", channels=[4], pools=[1], fc=[]).mask_list(1)
['F', 'T']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import attrs
import torch
from attrs import validators as v

from jointnet.experiments.options import json_safe
from jointnet.experiments.strategy import TaskRun
from jointnet.experiments.trainer import TrainConfig, torch_threads
from jointnet.graph import annotate
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet
from jointnet.persistence import snapshot
from strategies import trials
from strategies.lasem import Lasem, LasemDFCNN, LasemHPS, LasemTF
from strategies.lasem_graph import TASK_KEY

__all__ = ["LasemBrute", "BruteSpec", "work", "trials_of", "main"]

LEARNERS = {"hps": LasemHPS, "tf": LasemTF, "dfcnn": LasemDFCNN}
_BRUTE_FIELDS = ("learner", "workers", "threads", "storage")


@attrs.frozen
class LasemBrute(Lasem):
    """Brute force: every configuration trained per task, the best by validation kept."""

    learner: str = attrs.field(default="hps", validator=v.in_(tuple(LEARNERS)))
    workers: int = attrs.field(default=1, validator=[v.instance_of(int), v.ge(1)])
    threads: int | None = attrs.field(default=None, validator=v.optional([v.instance_of(int), v.ge(1)]))
    storage: str | None = attrs.field(default=None, validator=v.optional(v.instance_of(str)))

    def __attrs_post_init__(self) -> None:
        if self.config is not None:
            raise ValueError("'config' does not apply to lasem-brute: it trains every configuration")
        if self.settle is not None:
            raise ValueError("'settle' does not apply to lasem-brute: it trains every configuration")
        super().__attrs_post_init__()

    def base_learner(self) -> str:
        return self.learner

    def static_options(self) -> dict:
        """The options of the static strategy each trial runs (everything but brute's own)."""
        out = {}
        for a in attrs.fields(Lasem):
            value = getattr(self, a.name)
            if a.name == "config" or value == a.default:
                continue
            out[a.name] = list(value) if isinstance(value, tuple) else value
        return out

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        task = run.task
        t = self.template()
        self.check(net, run, t)
        masks = self.mask_list(t.d)
        if not len(task.y_val):
            raise run.error("brute force keeps the configuration with the best validation accuracy; "
                            "the task has no validation data")
        run.store.realize(net)
        temp = self.storage is None
        folder = Path(tempfile.mkdtemp(prefix="lasem-brute-") if temp else self.storage)
        try:
            spec = BruteSpec(
                journal=str(folder / "journal.log"), study="", folder=str(folder), pre="", learner=self.learner,
                options=self.static_options(), stream=run.stream.name, stream_seed=run.stream.seed,
                stream_options=json_safe(dict(run.stream.options)), index=run.index, seed=run.seed,
                config=json_safe(attrs.asdict(run.config)), masks=masks,
            )
            study = f"{run.stream.name}-seed{run.seed}-{run.index:02d}-{task.name}-{spec.digest()}"
            spec = attrs.evolve(spec, study=study, pre=str(folder / f"pre-{study}.jn"))
            folder.mkdir(parents=True, exist_ok=True)
            snapshot.save(spec.pre, net, run.store)
            study = _study(spec)
            done = {t.user_attrs.get("mask") for t in trials_of(study) if Path(spec.result(t.user_attrs["mask"])).exists()}
            for m in masks:
                if m not in done:
                    study.enqueue_trial({"mask": m}, user_attrs={"mask": m})
            self._run_workers(spec, run)
            results = {t.user_attrs["mask"]: t.value for t in trials_of(_study(spec))}
            missing = [m for m in masks if m not in results]
            if missing:
                raise run.error(f"brute force got no result for configuration(s) {missing}")
            best = max(masks, key=lambda m: (results[m], -masks.index(m)))
            won, store = snapshot.load(spec.result(best), device=run.store.device)
        finally:
            if temp:
                shutil.rmtree(folder, ignore_errors=True)
        for key in store.keys_of(won):
            if key not in store:
                continue
            if key in run.store:
                run.store.update(key, store[key])
            else:
                run.store.load({key: store[key]})
        record = dict(thaw(won.tasks[task.name].annotations[TASK_KEY]))
        record.update({"how": "brute", "val": {m: float(results[m]) for m in masks}})
        record.pop("static", None)
        return annotate(won, key=TASK_KEY, task=task.name, value=record)

    def _run_workers(self, spec: "BruteSpec", run: TaskRun) -> None:
        if self.workers <= 1:
            with torch_threads(self.threads):
                work(spec, 0, echo=run.echo, stream=run.stream)
            return
        path = Path(spec.folder) / f"spec-{spec.study}.json"
        path.write_text(json.dumps(attrs.asdict(spec), indent=1))
        argvs = [["--spec", path, "--worker-id", w, "--threads", self.threads or 1] for w in range(self.workers)]
        codes = trials.run_workers("strategies.lasem_brute", argvs, show_output=run.echo is not None)
        if any(codes):
            raise run.error(f"brute-force workers failed with exit codes {codes}")


@attrs.define
class BruteSpec:
    """What a worker needs for one task's trials (saved as JSON beside the journal)."""

    journal: str
    study: str
    folder: str
    pre: str  # the snapshot every trial starts from
    learner: str
    options: dict
    stream: str
    stream_seed: int
    stream_options: dict
    index: int
    seed: int
    config: dict
    masks: list

    def result(self, mask: str) -> str:
        return str(Path(self.folder) / f"{self.study}-{mask}.jn")

    def digest(self) -> str:
        """A short hash of everything a trial's result depends on besides the pre-task state
        (learner, options, stream, seeds, task index, training config, masks): part of the
        study's name, so a storage folder reused with other settings never reuses a trial."""
        keep = {k: v for k, v in attrs.asdict(self).items() if k not in ("journal", "study", "folder", "pre")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _study(spec: BruteSpec):
    trials.quiet()
    return trials.open_study(spec.journal, spec.study, direction="maximize")


def trials_of(study) -> list:
    """The finished trials of a brute-force study (one per configuration that ran)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "mask" in t.user_attrs]


def work(spec: BruteSpec, worker: int = 0, echo=None, stream=None) -> int:
    """Run waiting trials of the spec's study until none is left; returns how many ran here.
    `stream`: the run's stream (None: rebuilt from the spec, as a worker process does)."""
    from optuna.trial import TrialState

    from jointnet.experiments.streams import get_stream

    study = _study(spec)
    if stream is None:
        stream = get_stream(spec.stream, seed=spec.stream_seed, **spec.stream_options)
    task = stream.tasks[spec.index]
    config = TrainConfig(**spec.config)
    ran = 0
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        mask = trial.user_attrs.get("mask")
        if mask is None:  # another worker took the last waiting trial first
            study.tell(trial, state=TrialState.PRUNED)
            break
        t0 = time.perf_counter()
        net, store = snapshot.load(spec.pre, device=config.device)
        torch.manual_seed(spec.seed * 7919 + spec.index)  # as the runner seeds the task's step
        run = TaskRun(task, spec.index, stream, store, config, spec.seed, "lasem-brute", None)
        net = LEARNERS[spec.learner](config=mask, **spec.options).step(net, run)
        acc = run.accuracy(net, task, "val")
        snapshot.save(spec.result(mask), net, store)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        study.tell(trial, acc)
        ran += 1
        if echo is not None:
            echo(f"brute force {task.name} worker {worker}: {mask} val {acc:.4f} ({time.perf_counter() - t0:.1f}s)")
    return ran


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="a lasem-brute worker process (started by the strategy)")
    p.add_argument("--spec", required=True)
    p.add_argument("--worker-id", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = BruteSpec(**json.loads(Path(args.spec).read_text()))
    work(spec, args.worker_id, echo=print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
