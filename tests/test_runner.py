"""The runner: results files, determinism, resume after a real kill, the CLI entry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jointnet import snapshot
from jointnet.cli import main
from jointnet.errors import JointNetError
from jointnet.experiments.runner import RunSpec, resume, run

STREAM_OPTS = {"n_tasks": 3, "n_train_per_class": 60, "n_test_per_class": 20, "noise": 0.6}


def _spec(strategy="finetune", epochs=2):
    return RunSpec(strategy, "synthetic", seed=3, stream_options=STREAM_OPTS, config={"epochs": epochs})


def _quiet(_msg):
    pass


def test_run_writes_results_snapshots_and_csv(tmp_path):
    res = run(_spec(), tmp_path / "a", echo=_quiet)
    out = tmp_path / "a"
    assert res["done"] == 3 and len(res["matrix"]) == 3
    assert [len(r) for r in res["matrix"]] == [1, 2, 3]
    saved = json.loads((out / "results.json").read_text())
    assert saved["matrix"] == res["matrix"]
    assert set(saved["metrics"]) == {"AP", "AF", "F", "BWT"}
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("index,task,wall_time_s") and len(csv_lines) == 4
    for i, rel in enumerate(res["snapshots"]):
        net, store = snapshot.load(out / rel)
        assert list(net.tasks) == ["t1", "t2", "t3"][: i + 1]
        assert store is not None
    assert "epoch" in (out / "log.txt").read_text()


def test_same_seed_same_numbers(tmp_path):
    a = run(_spec(), tmp_path / "a", echo=_quiet)
    b = run(_spec(), tmp_path / "b", echo=_quiet)
    assert a["matrix"] == b["matrix"] and a["params"] == b["params"]


def test_refuses_to_overwrite_a_run(tmp_path):
    run(_spec(epochs=1), tmp_path / "a", echo=_quiet)
    with pytest.raises(JointNetError, match="already holds a run"):
        run(_spec(epochs=1), tmp_path / "a", echo=_quiet)


def test_resume_of_a_complete_run_changes_nothing(tmp_path):
    a = run(_spec(epochs=1), tmp_path / "a", echo=_quiet)
    b = resume(tmp_path / "a", echo=_quiet)
    assert b["matrix"] == a["matrix"]


def test_resume_after_a_real_kill_mid_task_gives_the_same_results(tmp_path):
    """A subprocess is killed (SIGKILL) while it trains task 2; resuming ends exactly like a run
    that was never interrupted."""
    epochs = 6
    reference = run(_spec(epochs=epochs), tmp_path / "ref", echo=_quiet)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jointnet.cli", "run", "--strategy", "finetune", "--stream", "synthetic",
           "--seed", "3", "--epochs", str(epochs), "--out", str(out), "--quiet"]
    cmd += [f"-S{k}={v}" for k, v in STREAM_OPTS.items()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.txt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if log.exists() and "task t2 epoch 1/" in log.read_text():
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed mid-task")
            time.sleep(0.01)
        else:
            pytest.fail("the run never reached task 2")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = json.loads((out / "results.json").read_text())
    assert partial["done"] == 1, "the kill must land while task 2 trains"
    resumed = resume(out, echo=_quiet)
    assert resumed["matrix"] == reference["matrix"]
    assert resumed["params"] == reference["params"]
    assert resumed["metrics"] == reference["metrics"]


def test_cli_run_list_and_errors(capsys, tmp_path):
    assert main(["run", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "finetune" in listing and "split-fmnist" in listing
    assert main(["run", "--strategy", "finetune"]) == 2
    assert "--stream" in capsys.readouterr().err
    assert main(["run", "--strategy", "nope", "--stream", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "no strategy 'nope'" in capsys.readouterr().err


def test_cli_run_prints_matrix(capsys, tmp_path):
    args = ["run", "--strategy", "independent", "--stream", "synthetic", "--epochs", "1", "--quiet",
            "--out", str(tmp_path / "r")] + [f"-S{k}={v}" for k, v in STREAM_OPTS.items()]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "accuracy matrix" in text and "AP =" in text and "BWT" in text


# ---- run.json: formats, hostile input, pinned options ----------------------------------------------

V1_KEYS = ("strategy", "stream", "seed", "strategy_options", "stream_options", "config", "reference")


def test_a_format_1_run_directory_still_resumes(tmp_path):
    """run.json as jointnet wrote it before format 2 (the options as given, the data folder among
    the stream options): resume reads it, runs it, and conflicts are found against it."""
    from jointnet.experiments.rundir import read_record
    from jointnet.experiments.runner import conflicts

    reference = run(_spec(epochs=1), tmp_path / "ref", echo=_quiet)
    out = tmp_path / "old"
    (out / "snapshots").mkdir(parents=True)
    old = {"strategy": "finetune", "stream": "synthetic", "seed": 3,
           "strategy_options": {}, "stream_options": {**STREAM_OPTS, "data_dir": str(tmp_path)},
           "config": {"epochs": 1}, "reference": None}
    (out / "run.json").write_text(json.dumps(old))
    rec = read_record(out / "run.json")
    assert rec["format"] == 1 and rec["data_dir"] == str(tmp_path) and "data_dir" not in rec["stream_options"]
    assert resume(out, echo=_quiet)["matrix"] == reference["matrix"]
    assert conflicts(out, {"config": {"epochs": 2}}) == [("config", "epochs", 2, 1)]
    assert conflicts(out, {"config": {"epochs": 1, "lr": 0.05}, "strategy": "finetune"}) == []


def _record(tmp_path):
    out = tmp_path / "r"
    run(RunSpec("ewc", "synthetic", seed=1, stream_options=STREAM_OPTS, config={"epochs": 1}), out, echo=_quiet)
    return out, json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("damage, says", [
    (lambda r: {**r, "format": 3}, "format 3; this jointnet reads formats 1 and 2"),
    (lambda r: {**r, "format": "2"}, "format '2'"),
    (lambda r: {k: v for k, v in r.items() if k != "effective"}, "it must be a map with the keys"),
    (lambda r: {**r, "extra": 1}, "it must be a map with the keys"),
    (lambda r: {**r, "effective": {**r["effective"], "config": [1]}}, "effective must be a map of"),
    (lambda r: {**r, "versions": {"torch": 2}}, "versions must map names to strings"),
    (lambda r: {**r, "data_dir": 7}, "data_dir must be str or NoneType"),
    (lambda r: {**r, "effective": {**r["effective"], "config": {**r["effective"]["config"], "lr": "fast"}}},
     "trainer option 'lr' (run.json config) must be a number > 0"),
    (lambda r: {**r, "effective": {**r["effective"], "config": {**r["effective"]["config"], "rm -rf": 1}}},
     "unknown trainer option 'rm -rf'"),
    (lambda r: {**r, "effective": {**r["effective"], "strategy_options": {"__class__": 1}}},
     "option '__class__', which this jointnet's ewc no longer has"),
])
def test_a_damaged_format_2_run_json_is_one_clear_error_and_nothing_is_written(tmp_path, capsys, damage, says):
    out, rec = _record(tmp_path)
    (out / "run.json").write_text(json.dumps(damage(rec)))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_keeps_recorded_options_whose_default_moved(tmp_path):
    """A run made when ewc's lam defaulted to 50 (and synthetic's noise to 0.5) resumes with
    them, and says so; options given explicitly stay as given."""
    from jointnet.experiments.rundir import read_record
    from jointnet.experiments.runner import prepare

    out, rec = _record(tmp_path)
    rec["effective"]["strategy_options"]["lam"] = 50.0
    rec["effective"]["stream_options"]["classes_per_task"] = 3
    (out / "run.json").write_text(json.dumps(rec))
    rec = read_record(out / "run.json")
    spec = RunSpec(**{k: rec[k] for k in (*V1_KEYS, "data_dir")})
    plan = prepare(spec, recorded=rec, base=out)
    assert plan.strategy.lam == 50.0
    assert plan.stream.options["classes_per_task"] == 3 and plan.stream.tasks[0].n_classes == 3
    assert any("lam keeps the run's value 50.0" in n for n in plan.notes)
    assert plan.config.epochs == 1 and plan.config.seed == 1


def test_a_failed_start_removes_the_folders_it_made(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    spec = RunSpec("finetune", "synthetic", stream_options=STREAM_OPTS,
                   config={"epochs": 1, "lr": 1e30, "batch_size": 8})
    with pytest.raises(JointNetError, match="task 't1': the loss is .* nothing was kept"):
        run(spec, out, echo=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_prepare_checks_everything_and_writes_nothing(tmp_path, monkeypatch):
    from jointnet.experiments.runner import prepare

    monkeypatch.chdir(tmp_path)
    plan = prepare(RunSpec("ewc", "synthetic", stream_options={"n_tasks": 2}, config={"epochs": 1},
                           data_dir="data"))
    assert plan.spec.data_dir == str(tmp_path / "data") and plan.names == ["t1", "t2"]
    assert plan.effective["strategy_options"]["lam"] == 100.0
    assert plan.effective["stream_options"]["n_train_per_class"] == 50
    with pytest.raises(JointNetError, match="unknown trainer option 'lrr'"):
        prepare(RunSpec("ewc", "synthetic", config={"lrr": 1}))
    with pytest.raises(JointNetError, match="two data folders"):
        prepare(RunSpec("ewc", "synthetic", stream_options={"data_dir": "x"}, data_dir="y"))
    assert list(tmp_path.iterdir()) == []


# ---- trainer: threads and progress ---------------------------------------------------------------


def test_train_task_reports_batches_and_sets_threads_for_the_call():
    import torch

    from jointnet import backbones
    from jointnet.execution.store import ParamStore
    from jointnet.experiments.trainer import TrainConfig, TrainProgress, observe, train_task

    class Count(TrainProgress):
        def __init__(self):
            self.calls, self.batches, self.epochs, self.threads, self.ended = [], 0, [], None, 0

        def begin(self, task, epochs, n_batches):
            self.calls.append((task, epochs, n_batches))
            self.threads = torch.get_num_threads()

        def batch(self):
            self.batches += 1

        def epoch(self, task, epoch, epochs, entry):
            self.epochs.append((epoch, epochs, round(entry["loss"], 6)))

        def end(self):
            self.ended += 1

    net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    store = ParamStore(seed=0).realize(net)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 4, generator=g), torch.randint(0, 2, (20,), generator=g)
    before = torch.get_num_threads()
    seen = Count()
    train_task(net, store, "t1", (x, y), None, TrainConfig(epochs=3, batch_size=8, threads=1), progress=seen)
    assert seen.calls == [("t1", 3, 3)] and seen.batches == 9 and [e[0] for e in seen.epochs] == [1, 2, 3]
    assert seen.threads == 1 and torch.get_num_threads() == before and seen.ended == 1
    installed = Count()
    with observe(installed):  # how the runner sees a strategy's calls
        train_task(net, store, "t1", (x, y), None, TrainConfig(epochs=1, batch_size=8))
    assert installed.calls == [("t1", 1, 3)] and installed.batches == 3


def test_the_trainer_numbers_do_not_depend_on_progress_reporting():
    """Reporting is observation only: the same seed gives the same weights with or without it."""
    import torch

    from jointnet import backbones
    from jointnet.execution.store import ParamStore
    from jointnet.experiments.trainer import TrainConfig, TrainProgress, train_task

    def trained(progress):
        net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
        store = ParamStore(seed=0).realize(net)
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(20, 4, generator=g), torch.randint(0, 2, (20,), generator=g)
        train_task(net, store, "t1", (x, y), None, TrainConfig(epochs=2, batch_size=8), progress=progress)
        return {k: v.clone() for k, v in store.tensors.items()}

    a, b = trained(None), trained(TrainProgress())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_deeply_nested_run_json_is_refused_without_a_traceback(tmp_path, capsys):
    out, rec = _record(tmp_path)
    (out / "run.json").write_text(json.dumps({**rec, "config": {"x": []}}).replace("[]", "[" * 100_000 + "]" * 100_000))
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a valid run description" in err and "Traceback" not in err


def test_early_stopping_restores_the_best_epochs_batchnorm_statistics_with_its_weights():
    """The best epoch is its weights and the BatchNorm running statistics they were trained with:
    restoring one without the other gives a net that was never evaluated."""
    import torch

    from jointnet import backbones
    from jointnet.execution.store import ParamStore
    from jointnet.experiments.trainer import TrainConfig, TrainProgress, train_task

    class Snap(TrainProgress):
        def __init__(self, store, keys):
            self.store, self.keys, self.at = store, keys, []

        def epoch(self, task, epoch, epochs, entry):
            self.at.append((entry["val_acc"], {k: self.store[k].detach().clone() for k in self.keys}))

    layers = [{"kind": "linear", "out_f": 16}, {"kind": "bn"}, {"kind": "relu"}]
    net = backbones.build(layers, input_shape=(6,), task="t1", n_classes=3)
    store = ParamStore(seed=0).realize(net)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)
    xv, yv = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    keys = [p.key for p in net.node("bn1").params]
    assert {k.split("@")[0] for k in keys} >= {"bn1.running_mean", "bn1.running_var"}
    seen = Snap(store, keys)
    config = TrainConfig(epochs=8, batch_size=16, lr=0.5, patience=3, threads=1)
    train_task(net, store, "t1", (x, y), (xv, yv), config, progress=seen)
    vals = [v for v, _ in seen.at]
    best = vals.index(max(vals))
    assert best < len(vals) - 1  # training went on past the best epoch: restoring matters
    for k in keys:
        assert torch.equal(store[k], seen.at[best][1][k]), k
