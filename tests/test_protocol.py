"""The shared benchmark protocol (benchmarks/protocol.py): paired-CI tables on hand-computed
values, reuse of finished cells only when their recorded spec matches, derived options, and the
validation-size check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.protocol import Arm, Metric, Run, check_validation, run_grid, table
from jointnet.errors import JointNetError
from jointnet.experiments.streams import get_stream

D = 6
MLP = [{"kind": "input", "shape": [D]}, {"kind": "linear", "out_f": 5}, {"kind": "relu"}]
STREAM = {"n_tasks": 2, "input_shape": [D], "n_train_per_class": 8, "n_val_per_class": 4, "n_test_per_class": 4}
CONFIG = {"epochs": 1, "batch_size": 8}


def _run(label: str, seed: int, ap: float, bwt: float = 0.0, params: int = 100) -> Run:
    result = {"metrics": {"AP": ap, "BWT": bwt}, "params": [{"total": params}], "matrix": [[ap]], "seconds": 1.0}
    return Run(label, "s", seed, Path("."), {}, result)


def _grid(values: dict[str, list[float]]) -> dict:
    return {("s", label, seed): _run(label, seed, v) for label, vs in values.items() for seed, v in enumerate(vs)}


def test_paired_table_on_hand_computed_values():
    grid = _grid({"control": [0.80, 0.82, 0.84], "arm": [0.90, 0.91, 0.95]})
    grid[("s", "lonely", 1)] = _run("lonely", 1, 0.5)  # one common seed: no interval
    text = table(grid, "s", control="control", metrics=["AP"])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    # arm: mean 0.92, sd sqrt((0.02^2 + 0.01^2 + 0.03^2) / 2) = 0.026458; differences 0.10, 0.09,
    # 0.11: mean 0.1, sd 0.01, half width t(0.975, 2) * 0.01 / sqrt(3) = 4.302653 * 0.0057735 = 0.024841.
    assert rows["arm"] == "| arm | 3 | 0.9200 ± 0.0265 | +0.1000 [+0.0752, +0.1248] |"
    assert rows["control"] == "| control | 3 | 0.8200 ± 0.0200 | - |"
    assert rows["lonely"] == "| lonely | 1 | 0.5000 ± 0.0000 | - |"
    assert text.splitlines()[0] == "| arm | n | AP | Δ AP vs control [95% CI] |"


def test_table_unpaired_and_custom_metrics():
    grid = _grid({"control": [0.5, 0.6], "arm": [0.7, 0.9]})
    m = Metric("twice", lambda r, runs: 2 * r.metrics["AP"] - 2 * runs["control"].metrics["AP"], ".2f")
    text = table(grid, "s", control="control", metrics=[m, "params"])
    arm = [line for line in text.splitlines()[2:] if line.startswith("| arm")][0]
    # twice(arm) = 2 * (0.2, 0.3) = (0.4, 0.6): mean 0.5, sd 0.1414; paired against twice(control) = 0:
    # mean 0.5, half width t(0.975, 1) * 0.1414 / sqrt(2) = 12.7062 * 0.1 = 1.2706.
    assert arm == "| arm | 2 | 0.50 ± 0.14 | +0.50 [-0.77, +1.77] | 100 ± 0 |"
    assert math.isclose(12.706204736 * 0.1, 1.2706, abs_tol=1e-4)


def _arms(width: int = 5):
    layers = [{"kind": "input", "shape": [D]}, {"kind": "linear", "out_f": width}, {"kind": "relu"}]
    return [
        Arm("ft", "finetune", {"backbone": layers}),
        Arm("ind", "independent", {"backbone": layers},
            derive=lambda seed, runs: {"backbone": layers[:2] + [{"kind": "linear", "out_f": runs["ft"].params % 3 + 2},
                                                                  {"kind": "relu"}]}),
    ]


def test_run_grid_reuses_only_matching_cells(tmp_path):
    grid = run_grid(_arms(), {"synthetic": STREAM}, out=tmp_path, seeds=[0, 1], config=CONFIG, min_val=4, echo=None)
    assert len(grid) == 4 and not any(r.reused for r in grid.values())
    ft = grid[("synthetic", "ft", 0)]
    spec = json.loads((ft.dir / "run.json").read_text())
    assert spec["strategy"] == "finetune" and spec["seed"] == 0 and spec["config"] == CONFIG
    # the derived option is part of the recorded spec
    ind = grid[("synthetic", "ind", 1)]
    assert ind.spec["strategy_options"]["backbone"][2]["out_f"] == grid[("synthetic", "ft", 1)].params % 3 + 2
    again = run_grid(_arms(), {"synthetic": STREAM}, out=tmp_path, seeds=[0, 1], config=CONFIG, min_val=4, echo=None)
    assert all(r.reused for r in again.values())
    assert again[("synthetic", "ft", 0)].result == ft.result
    # another option: another cell, run beside the old one (which stays)
    wider = run_grid(_arms(7), {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None)
    assert not wider[("synthetic", "ft", 0)].reused and wider[("synthetic", "ft", 0)].dir != ft.dir
    assert (ft.dir / "result.json").exists()
    # another config: rerun as well
    other = run_grid(_arms(), {"synthetic": STREAM}, out=tmp_path, seeds=[0], config={**CONFIG, "epochs": 2},
                     min_val=4, echo=None)
    assert not other[("synthetic", "ft", 0)].reused


def test_run_grid_refuses_a_foreign_run_and_reruns_an_unfinished_one(tmp_path):
    grid = run_grid(_arms()[:1], {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None)
    cell = grid[("synthetic", "ft", 0)].dir
    (cell / "result.json").unlink()  # killed before the result was written
    rerun = run_grid(_arms()[:1], {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None)
    assert not rerun[("synthetic", "ft", 0)].reused and (cell / "result.json").exists()
    spec = json.loads((cell / "run.json").read_text())
    spec["strategy_options"]["backbone"][1]["out_f"] = 99  # edited by hand: not the run wanted
    (cell / "run.json").write_text(json.dumps(spec))
    with pytest.raises(JointNetError, match="records another run"):
        run_grid(_arms()[:1], {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None)


def test_validation_size_and_unique_labels(tmp_path):
    stream = get_stream("synthetic", seed=0, **STREAM)
    with pytest.raises(JointNetError, match="fewer than 200 validation images"):
        check_validation(stream)
    check_validation(stream, min_val=4)
    with pytest.raises(JointNetError, match="fewer than 200"):
        run_grid(_arms(), {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, echo=None)
    with pytest.raises(JointNetError, match="labels repeat"):
        run_grid([Arm("a", "finetune"), Arm("a", "independent")], {"synthetic": STREAM}, out=tmp_path, seeds=[0],
                 min_val=4, echo=None)


def test_snapshots_cpu_time_and_failed_cells(tmp_path):
    arms = _arms()[:1]
    grid = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None)
    ft = grid[("synthetic", "ft", 0)]
    assert len(ft.cpu) == 2 and all(c >= 0 for c in ft.cpu) and ft.failed is None
    with pytest.raises(JointNetError, match="no snapshot after task index -1"):
        ft.load()
    # asking for snapshots the finished cell did not keep reruns it (same directory), then reuses it
    every = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None,
                     snapshots="every")[("synthetic", "ft", 0)]
    assert not every.reused and every.dir == ft.dir and every.result["snapshots"] == [0, 1]
    assert every.result["matrix"] == ft.result["matrix"]
    net, _ = every.load(0)
    assert list(net.tasks) == ["t1"] and list(every.load()[0].tasks) == ["t1", "t2"]
    last = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None,
                    snapshots="last")[("synthetic", "ft", 0)]
    assert last.reused
    with pytest.raises(JointNetError, match="snapshots must be one of"):
        run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4, echo=None,
                 snapshots="all")
    # a diverged loss: a failed cell, reused as such, left out of the table with a count
    hot = {**CONFIG, "lr": 1e30, "optimizer": "sgd"}
    runs = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0, 1], config=hot, min_val=4, echo=None)
    bad = runs[("synthetic", "ft", 0)]
    assert bad.failed and bad.failed.startswith("task 1 of 2:")
    again = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0, 1], config=hot, min_val=4, echo=None)
    assert again[("synthetic", "ft", 0)].reused and again[("synthetic", "ft", 0)].failed == bad.failed
    text = table(runs, "synthetic", control="ft", metrics=["AP"])
    assert "| ft (2 of 2 seeds failed) | 0 | - | - |" in text


def test_a_result_without_cpu_seconds_is_run_again(tmp_path):
    arms = _arms()[:1]
    cell = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4,
                    echo=None)[("synthetic", "ft", 0)]
    result = json.loads((cell.dir / "result.json").read_text())
    del result["cpu_time"], result["snapshots"]  # as the protocol wrote them before it recorded CPU seconds
    (cell.dir / "result.json").write_text(json.dumps(result))
    again = run_grid(arms, {"synthetic": STREAM}, out=tmp_path, seeds=[0], config=CONFIG, min_val=4,
                     echo=None)[("synthetic", "ft", 0)]
    assert not again.reused and again.dir == cell.dir and len(again.cpu) == 2
    assert again.matrix == cell.matrix
