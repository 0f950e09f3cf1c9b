"""``jointnet run`` / ``jointnet options`` as a researcher meets them (issue 9): every bad input is
one line, exit status 2, no traceback and nothing written; Ctrl-C says how to resume; a loss
that is not finite names task and epoch; resume refuses options that conflict with the recorded
ones; references are checked; options are listed; several seeds aggregate. All runs use the tiny
`synthetic` stream."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import attrs
import pytest
import torch

from jointnet.cli import main
from jointnet.errors import JointNetError
from jointnet.experiments import rundir, runner, stats, sweep
from jointnet.experiments import strategy as strategy_mod
from jointnet.experiments.options import describe
from jointnet.experiments.streams import STREAMS
from jointnet.experiments.trainer import TrainConfig

SYN = ["-S", "n_tasks=2", "-S", "n_train_per_class=8", "-S", "n_val_per_class=2", "-S", "n_test_per_class=4",
       "-S", "input_shape=[16]"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, out, err, *needles):
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert err.startswith("jointnet: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def _base(out, strategy="finetune", epochs=1):
    return ["run", "--strategy", strategy, "--stream", "synthetic", *SYN, "--epochs", str(epochs), "--out", str(out),
            "-q"]


# ---- one test per bad input: one line, status 2, no traceback, nothing written ---------------------


@pytest.mark.parametrize("extra, strategy, says", [
    (["-T", "lr=-1"], "finetune", ["trainer option 'lr' (-T) must be a number > 0", "got -1"]),
    (["-T", "foo=1"], "finetune", ["unknown trainer option 'foo' (-T)", "Options: epochs, batch_size, lr"]),
    (["-T", "lrr=0.1"], "finetune", ["unknown trainer option 'lrr'", "did you mean 'lr'?"]),
    (["-T", "batch_size=1.5"], "finetune", ["'batch_size' (-T) must be an int > 0", "got 1.5"]),
    (["-T", "optimizer=adamw"], "finetune", ["'optimizer' (-T) must be one of 'sgd', 'adam', 'rmsprop'"]),
    (["-T", "patience=0"], "finetune", ["'patience' (-T) must be an int >= 1 or None"]),
    (["-T", "threads=0"], "finetune", ["'threads' (-T) must be an int >= 1 or None"]),
    (["-T", "seed=3"], "finetune", ["set with --seed, not -T seed="]),
    (["-T", "lr"], "finetune", ["-T takes key=value (got 'lr')"]),
    (["--epochs", "-1"], "finetune", ["--epochs must be an int >= 0 (got -1)"]),
    (["--epochs", "two"], "finetune", ["argument --epochs: invalid int value: 'two'"]),
    (["--epochs", "2", "-T", "epochs=3"], "finetune", ["--epochs 2 and -T epochs=3 disagree"]),
    (["--threads", "0"], "finetune", ["--threads must be an int >= 1 (got 0)"]),
    (["--seed", "-1"], "finetune", ["--seed must be an int >= 0 (got -1)"]),
    (["--device", "tpu"], "finetune", ["--device must be cpu, cuda or cuda:N (got 'tpu')"]),
    (["-O", "lamda=1"], "ewc", ["unknown option 'lamda' of strategy 'ewc' (-O)", "did you mean 'lam'"]),
    (["-O", "lam=abc"], "ewc", ["option 'lam' of strategy 'ewc' (-O) must be a number (got 'abc')"]),
    (["-O", "lam=-5"], "ewc", ["ewc: bad options: lam=-5: 'lam' must be >= 0.0"]),
    (["-O", "mode=sideways"], "ewc", ["'mode'", "sideways"]),
    (["-S", "n_taks=3"], "finetune", ["unknown option 'n_taks' of stream 'synthetic' (-S)", "did you mean 'n_tasks'"]),
    (["-S", "noise=loud"], "finetune", ["option 'noise' of stream 'synthetic' (-S) must be a number (got 'loud')"]),
    (["-S", "noise=-1"], "finetune", ["'noise' must be a number >= 0 (got -1)"]),
    (["-S", "data_dir=/tmp"], "finetune", ["set with --data-dir DIR, not -S data_dir="]),
    (["--data-dir", "/no/such/folder"], "finetune", ["--data-dir /no/such/folder: no such directory"]),
    (["--reference", "no-such-results.json"], "finetune", ["--reference", "no such results.json"]),
    (["--jobs", "2"], "finetune", ["--jobs runs the seeds of --seeds in parallel"]),
    (["--seeds", "0", "0"], "finetune", ["--seeds lists a seed twice"]),
    (["--seeds", "1", "--seed", "1"], "finetune", ["give --seed N (one run) or --seeds N [N ...]"]),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, extra, strategy, says):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _one_line_error(*_run(capsys, *_base(out, strategy), *extra), *says)
    assert not out.exists()


@pytest.mark.parametrize("argv, says", [
    (["run", "--strategy", "nope", "--stream", "synthetic", "--out", "x"], ["no strategy 'nope'"]),
    (["run", "--strategy", "finetune", "--stream", "split-mnist", "--out", "x"], ["did you mean 'split-fmnist'"]),
    (["run", "--strategy", "finetune", "--stream", "synthetic"], ["run needs --out"]),
    (["run", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["options", "ewx"], ["no strategy or stream named 'ewx'", "did you mean 'ewc'"]),
])
def test_bad_names_and_usage_are_one_line(capsys, tmp_path, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    _one_line_error(*_run(capsys, *argv), *says)
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_cuda_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    _one_line_error(*_run(capsys, *_base(out), "--device", "cuda"), "--device cuda: this machine has no CUDA device",
                    "use --device cpu")
    assert not out.exists()


def test_an_out_that_holds_a_runs_file_is_refused_untouched(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("mine")
    _one_line_error(*_run(capsys, *_base(out)), "holds log.txt, which a run would overwrite")
    assert (out / "log.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["log.txt"]


# ---- failures after the start ---------------------------------------------------------------------


def test_a_failed_first_task_leaves_nothing_and_keeps_the_users_files(capsys, tmp_path):
    """A loss that is not finite in task 1: one line naming task and epoch; the files the run
    made are gone, a file that was there before stays."""
    fresh = tmp_path / "fresh"
    rc, out, err = _run(capsys, *_base(fresh), "-T", "lr=1e30", "-T", "batch_size=4")
    _one_line_error(rc, out, err, "NonFiniteLoss: task 't1': the loss is", "at epoch ", "allow_nonfinite=true",
                    "nothing was kept")
    assert not fresh.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    _one_line_error(*_run(capsys, *_base(mine), "-T", "lr=1e30", "-T", "batch_size=4"), "NonFiniteLoss")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_nonfinite_loss_later_names_task_and_epoch_and_keeps_a_consistent_run(capsys, tmp_path):
    out = tmp_path / "ewc"
    argv = [*_base(out, "ewc", epochs=3), "-O", "lam=1e30"]
    rc, o, err = _run(capsys, *argv)
    _one_line_error(rc, o, err, "NonFiniteLoss: task 't2': the loss is", "at epoch", "1 of 2 tasks are done")
    saved = json.loads((out / "results.json").read_text())
    assert saved["done"] == 1 and (out / saved["snapshots"][0]).is_file()
    assert "stopped during task 2/2" in (out / "log.txt").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
    _one_line_error(*_run(capsys, "run", "--resume", out, "-q"), "NonFiniteLoss: task 't2'")  # the same, again
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"} == before
    # allowed: the run goes on and says so
    out2 = tmp_path / "allowed"
    argv2 = [a if a != str(out) else str(out2) for a in argv] + ["-T", "allow_nonfinite=true"]
    rc, o, err = _run(capsys, *argv2)
    assert rc == 0, err
    assert "non-finite loss (allow_nonfinite): t2:" in o
    assert json.loads((out2 / "results.json").read_text())["nonfinite"]["t2"] >= 1


@attrs.frozen
class _InterruptedOnce:
    """Fine-tuning that raises KeyboardInterrupt (Ctrl-C) in task 2 the first time only."""

    name = "interrupted-once"

    def step(self, net, run):
        from strategies.simple import FineTune

        if run.index == 1 and not _CTRL_C["fired"]:
            _CTRL_C["fired"] = True
            raise KeyboardInterrupt
        return FineTune().step(net, run)


_CTRL_C = {"fired": False}


def test_ctrl_c_says_how_to_resume_and_the_resumed_run_equals_an_uninterrupted_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(strategy_mod._REGISTERED, "interrupted-once", _InterruptedOnce)
    monkeypatch.setitem(_CTRL_C, "fired", False)
    out = tmp_path / "r"
    rc, o, err = _run(capsys, *_base(out, "interrupted-once"))
    assert rc == 130 and o == ""
    assert err == f"jointnet: interrupted; resume with: jointnet run --resume {out}\n"
    assert json.loads((out / "results.json").read_text())["done"] == 1
    assert main(["run", "--resume", str(out), "-q"]) == 0
    capsys.readouterr()
    monkeypatch.setitem(_CTRL_C, "fired", True)
    main(_base(tmp_path / "ref", "interrupted-once"))
    capsys.readouterr()
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert a["matrix"] == b["matrix"] and a["params"] == b["params"]


# ---- resume ---------------------------------------------------------------------------------------


@pytest.fixture
def finished(tmp_path, capsys):
    out = tmp_path / "done"
    assert main(_base(out, "ewc")) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("extra, says", [
    (["--epochs", "5"], "--epochs 5 conflicts with the run in {out}, which used epochs=1"),
    (["-T", "lr=0.1"], "-T lr 0.1 conflicts with the run in {out}, which used lr=0.05"),
    (["--threads", "2"], "--threads 2 conflicts with the run in {out}, which used threads=1"),
    (["-O", "lam=5"], "-O lam 5 conflicts with the run in {out}, which used lam=100.0"),
    (["-S", "n_tasks=3"], "-S n_tasks 3 conflicts with the run in {out}, which used n_tasks=2"),
    (["--stream", "split-fmnist"], '--stream "split-fmnist" conflicts with the run in {out}, which used stream="synthetic"'),
    (["--seed", "4"], "--seed 4 conflicts with the run in {out}, which used seed=0"),
    (["-T", "nope=1"], "unknown trainer option 'nope'"),
    (["-O", "lamda=1"], "unknown option 'lamda' of strategy 'ewc'"),
])
def test_resume_refuses_options_that_conflict_with_the_recorded_ones(capsys, finished, extra, says):
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    _one_line_error(*_run(capsys, "run", "--resume", finished, "-q", *extra), says.format(out=finished))
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_resume_accepts_options_equal_to_the_recorded_ones(capsys, finished):
    rc, out, err = _run(capsys, "run", "--resume", finished, "-q", "--epochs", "1", "-T", "lr=0.05", "-O",
                        "lam=100", "-S", "n_tasks=2", "--strategy", "ewc", "--threads", "1", "--seed", "0")
    assert rc == 0, err
    assert "accuracy matrix" in out


def test_run_json_records_the_effective_configuration(finished):
    rec = json.loads((finished / "run.json").read_text())
    assert rec["format"] == rundir.RUN_FORMAT
    eff = rec["effective"]
    assert eff["strategy_options"]["lam"] == 100.0 and eff["strategy_options"]["mode"] == "sum"
    assert eff["stream_options"]["noise"] == 0.3 and eff["stream_options"]["n_tasks"] == 2
    expected = {a.name for a in attrs.fields(TrainConfig)} - {"progress"}
    assert set(eff["config"]) == expected
    assert eff["config"]["epochs"] == 1 and eff["config"]["threads"] == 1 and eff["config"]["lr"] == 0.05
    assert set(rec["versions"]) == {"jointnet", "torch", "python"} and rec["versions"]["torch"] == torch.__version__


# ---- references -----------------------------------------------------------------------------------


def test_reference_is_resolved_from_the_current_directory_and_gives_fwt(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_base("ref", "independent")) == 0
    rc, out, err = _run(capsys, *_base(Path("runs") / "ft"), "--reference", "ref/results.json")
    assert rc == 0, err
    assert "FWT = " in out
    rec = json.loads((tmp_path / "runs" / "ft" / "run.json").read_text())
    assert rec["reference"] == str(tmp_path / "ref" / "results.json")
    res = json.loads((tmp_path / "runs" / "ft" / "results.json").read_text())
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())["matrix"]
    diag = [res["matrix"][j][j] - ref[j][j] for j in range(2)]
    assert res["metrics"]["FWT"] == pytest.approx(sum(diag) / 2)
    # a directory works too
    assert main(_base("ft2") + ["--reference", "ref"]) == 0


def test_reference_of_another_stream_configuration_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_base("ref", "independent") + ["-S", "noise=0.5"]) == 0
    assert main([a if a != "n_tasks=2" else "n_tasks=3" for a in _base("ref3", "independent")]) == 0
    capsys.readouterr()
    _one_line_error(*_run(capsys, *_base("a"), "--reference", "ref/results.json"),
                    "the reference ran synthetic with noise=0.5, this run with noise=0.3")
    _one_line_error(*_run(capsys, *_base("b"), "--reference", "ref3"), "its tasks ['t1', 't2', 't3'] is not the run's")
    Path("bad.json").write_text("{not json")
    _one_line_error(*_run(capsys, *_base("c"), "--reference", "bad.json"), "--reference", "not a valid results file")
    partial = json.loads(Path("ref/results.json").read_text())
    for key in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        partial[key] = partial[key][:1]
    Path("partial").mkdir()
    Path("partial/results.json").write_text(json.dumps({**partial, "done": 1}))
    _one_line_error(*_run(capsys, *_base("d"), "--reference", "partial"), "has 1 of 2 tasks done")
    assert not any(Path(n).exists() for n in "abcd")


# ---- listing options ------------------------------------------------------------------------------


def test_run_list_names_every_strategy_and_stream(capsys):
    rc, out, _ = _run(capsys, "run", "--list")
    assert rc == 0
    for name in [*strategy_mod.strategy_names(), *STREAMS]:
        assert f"  {name} " in out
    assert "jointnet options trainer" in out
    # a summary is cut at 100 characters: SPG's names every variant within them
    spg = next(line for line in out.splitlines() if line.startswith("  spg "))
    for variant in ("chi=false", "smh=false", "hard_threshold=", "importance=fisher", "ewc_gi="):
        assert variant in spg, spg


def test_options_of_a_strategy_a_stream_and_the_trainer(capsys):
    rc, out, _ = _run(capsys, "options", "ewc", "synthetic", "trainer")
    assert rc == 0
    lines = out.splitlines()
    lam = next(line for line in lines if line.strip().startswith("-O lam "))
    assert "float" in lam and "100.0" in lam and "penalty strength" in lam
    assert any(line.strip().startswith("-S n_tasks ") and " 5 " in line for line in lines)
    for a in attrs.fields(TrainConfig):
        row = next(line for line in lines if line.strip().startswith(f"-T {a.name} "))
        assert json.dumps(a.default) in row
    rc, out, _ = _run(capsys, "options", "trainer", "--json")
    data = json.loads(out)
    assert [o["name"] for o in data[0]["options"]] == [a.name for a in attrs.fields(TrainConfig)]
    assert all(o["doc"] for o in data[0]["options"]), "every trainer option has a doc line"


def test_every_option_of_every_strategy_and_stream_has_a_doc_line():
    for name in [*strategy_mod.strategy_names(), *STREAMS]:
        kind, _summary, found = describe(name)
        assert kind == ("stream" if name in STREAMS else "strategy")
        undocumented = [o.name for o in found if not o.doc]
        assert not undocumented, (name, undocumented)


# ---- progress and -q --------------------------------------------------------------------------------


def test_quiet_prints_results_only(capsys, tmp_path):
    rc, out, err = _run(capsys, *_base(tmp_path / "q"))
    assert rc == 0 and err == ""
    assert " epoch " not in out and "task 1/2" not in out and "accuracy matrix" in out


def test_progress_lines_go_through_tqdm_and_name_each_epoch(capsys, tmp_path):
    argv = [a for a in _base(tmp_path / "p") if a != "-q"]
    rc, out, err = _run(capsys, *argv)
    assert rc == 0
    assert "task t1 epoch 1/1 loss" in out and "task 2/2 t2:" in out
    assert err == ""  # no terminal here: tqdm draws no bar


def test_task_bars_count_batches_of_every_training_call(tmp_path):
    import io

    buf = io.StringIO()
    bars = runner._TaskBars(["t1", "t2"], 0, file=buf, disable=False)
    bars.begin("t1", 2, 3)
    for _ in range(6):
        bars.batch()
    bars.begin("t1", 1, 3)  # a second call for the same task (a retrain)
    for _ in range(3):
        bars.batch()
    assert bars.bar.total == 9 and bars.bar.n == 9
    bars.next_task()
    bars.begin("t2", 1, 4)
    assert bars.bar.total == 4 and "task 2/2 t2" in str(bars.bar)
    bars.close()
    assert "task 1/2 t1" in buf.getvalue() and "6/9" in buf.getvalue()  # the total grew at the second call


# ---- seeds ----------------------------------------------------------------------------------------


def test_seeds_run_as_normal_runs_and_aggregate(capsys, tmp_path):
    out = tmp_path / "sweep"
    rc, o, err = _run(capsys, *_base(out), "--seeds", "0", "1")
    assert rc == 0, err
    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["seeds"] == [0, 1] and agg["runs"] == ["seed0", "seed1"]
    per = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    for name in ("AP", "AF", "F", "BWT"):
        want = stats.summary([r["metrics"][name] for r in per])
        got = agg["metrics"][name]
        assert got["mean"] == pytest.approx(want.mean) and got["sd"] == pytest.approx(want.sd)
        assert got["ci95"] == pytest.approx(list(want.ci95))
    assert agg["metrics"]["params"]["values"] == [float(r["params"][-1]["total"]) for r in per]
    csv_lines = (out / "aggregate.csv").read_text().splitlines()
    assert csv_lines[0] == "metric,mean,sd,ci95_low,ci95_high,n,seed0,seed1" and csv_lines[1].startswith("AP,")
    assert "mean ± sd" in o and "95% CI" in o
    # each seed is a normal run: the seed is its own, resume works on it
    assert json.loads((out / "seed1" / "run.json").read_text())["seed"] == 1
    assert main(["run", "--resume", str(out / "seed1"), "-q"]) == 0


def test_resuming_a_sweep_runs_only_unfinished_seeds(capsys, tmp_path):
    out = tmp_path / "sweep"
    spec = runner.RunSpec("finetune", "synthetic", stream_options={"n_tasks": 2, "n_train_per_class": 8,
                          "n_val_per_class": 2, "n_test_per_class": 4, "input_shape": [16]}, config={"epochs": 1})
    sweep.start_sweep(spec, [3, 5], out)
    assert sorted(p.name for p in (out / "seed3").iterdir()) == ["run.json", "snapshots"]
    runner.resume(out / "seed3", echo=lambda m: None)
    done_before = (out / "seed3" / "results.json").stat().st_mtime_ns
    rc, o, err = _run(capsys, "run", "--resume", out, "--seeds", "3", "5")
    assert rc == 0, err
    assert "1 of 2 seeds already done" in o and "== seed 5" in o and "== seed 3" not in o
    assert (out / "seed3" / "results.json").stat().st_mtime_ns == done_before
    assert json.loads((out / "aggregate.json").read_text())["metrics"]["AP"]["n"] == 2
    _one_line_error(*_run(capsys, "run", "--resume", out, "--seeds", "3"), "conflicts with the sweep")
    _one_line_error(*_run(capsys, "run", "--resume", out, "--epochs", "4"), "--epochs 4 conflicts")


def test_seeds_in_parallel_processes_give_the_same_numbers(capsys, tmp_path):
    a, b = tmp_path / "serial", tmp_path / "parallel"
    assert main(_base(a) + ["--seeds", "0", "1"]) == 0
    rc, _, err = _run(capsys, *_base(b), "--seeds", "0", "1", "--jobs", "2")
    assert rc == 0, err
    for s in (0, 1):
        ra = json.loads((a / f"seed{s}" / "results.json").read_text())
        rb = json.loads((b / f"seed{s}" / "results.json").read_text())
        assert ra["matrix"] == rb["matrix"] and ra["metrics"] == rb["metrics"]


def test_aggregate_on_hand_made_results(tmp_path):
    """Three seeds whose metrics are set by hand: AP 0.80, 0.82, 0.84 -> mean 0.82, sd 0.02,
    CI 0.82 -+ t(0.975, 2) * 0.02 / sqrt(3) = [0.7703, 0.8697]."""
    out = tmp_path / "sweep"
    spec = runner.RunSpec("finetune", "synthetic", stream_options={"n_tasks": 2, "input_shape": [4]})
    sweep.start_sweep(spec, [0, 1, 2], out)
    aps, fs = [0.80, 0.82, 0.84], [0.10, 0.20, 0.30]
    for s, (ap, f) in enumerate(zip(aps, fs)):
        res = {"format": 1, "strategy": "finetune", "stream": "synthetic", "seed": s, "tasks": ["t1", "t2"],
               "done": 2, "matrix": [[0.9], [0.8, 0.8]], "metrics": {"AP": ap, "AF": -f / 2, "F": f, "BWT": -f},
               "params": [{"total": 100, "shared": 0, "owned": {"t1": 100}},
                          {"total": 100 + 10 * s, "shared": 0, "owned": {"t1": 100, "t2": 10 * s}}],
               "wall_time": [1.0, float(s)], "epochs": [1, 1],
               "snapshots": ["snapshots/task_00_t1.jn", "snapshots/task_01_t2.jn"]}
        (out / f"seed{s}" / "results.json").write_text(json.dumps(res))
    agg = sweep.aggregate(out)
    m = agg["metrics"]
    assert m["AP"]["mean"] == pytest.approx(0.82) and m["AP"]["sd"] == pytest.approx(0.02)
    assert m["AP"]["ci95"] == pytest.approx([0.82 - 4.302652730 * 0.02 / math.sqrt(3),
                                             0.82 + 4.302652730 * 0.02 / math.sqrt(3)])
    assert m["F"]["mean"] == pytest.approx(0.2) and m["F"]["sd"] == pytest.approx(0.1)
    assert m["BWT"]["mean"] == pytest.approx(-0.2)
    assert m["params"]["values"] == [100.0, 110.0, 120.0] and m["params"]["mean"] == pytest.approx(110.0)
    assert m["wall_time_s"]["values"] == [1.0, 2.0, 3.0]
    assert "FWT" not in m
    sweep.write_aggregate(out, agg)
    text = sweep.format_aggregate(agg)
    assert "0.8200 ± 0.0200" in text and "[0.7703, 0.8697]" in text


def test_aggregate_refuses_unfinished_seeds(tmp_path):
    out = tmp_path / "sweep"
    sweep.start_sweep(runner.RunSpec("finetune", "synthetic", stream_options={"n_tasks": 2}), [0, 1], out)
    with pytest.raises(JointNetError, match="seed 0 has not finished a task yet"):
        sweep.aggregate(out)


def test_a_forged_sweep_json_is_one_clear_error(capsys, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"format": 1, "seeds": ["../../etc"]}))
    _one_line_error(*_run(capsys, "run", "--resume", out), "is not a valid sweep description")
    assert sorted(os.listdir(out)) == ["sweep.json"]
