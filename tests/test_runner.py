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
    assert set(saved["metrics"]) == {"AP", "AF", "BWT"}
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
