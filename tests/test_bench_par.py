"""benchmarks/par.py on the shared protocol: the streams keep their training sizes and have >= 200
validation images per task, the arms, the alpha replay on hand-computed estimates, the CLI's
refusals, and the §9 checks end to end on a tiny PAR grid (a synthetic stream)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import par as bench
from benchmarks.protocol import MIN_VAL, Arm, run_grid
from jointnet.experiments.streams import get_stream

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", bench.CTRL)
def test_streams_keep_training_sizes_and_have_enough_validation(name):
    default = get_stream(name, seed=0, n_test_per_class=150)
    ours = get_stream(name, seed=0, **bench.stream_options(150))
    assert [len(t.y_train) for t in ours.tasks] == [len(t.y_train) for t in default.tasks]
    assert min(len(t.y_val) for t in ours.tasks) >= MIN_VAL
    assert [len(t.y_test) for t in ours.tasks] == [300] * len(ours.tasks)


def test_arms_map_variants_to_par_options():
    arms = bench.make_arms(["par", "par-fixed", "par-alloc", "par-slong", "hat"])
    assert arms == [Arm("par", "par", {}), Arm("par-fixed", "par", {"search": "fixed"}),
                    Arm("par-alloc", "par", {"alpha": 0.0, "beta": 0.0}),
                    Arm("par-slong", "par", {"slong_override": True}), Arm("hat", "hat", {})]


def test_replay_counts_on_hand_computed_estimates():
    # t2 is far from t1 (2.0 squashes near 1): a new searched expert; t3 is t1's twin (0.01):
    # it joins t1's group at alpha 0.5 and searches at alpha 0 (nothing is <= 0).
    raw = [[], [2.0], [0.01, 2.0]]
    assert bench.replay_counts(raw, 0.5, 0.75) == (2, 2)
    assert bench.replay_counts(raw, 0.0, 0.75) == (3, 2)  # t3 reuses t1's cell (s <= beta): no search


@pytest.mark.parametrize("argv, message", [
    (["--strategies", "par", "parr"], "--strategies: unknown 'parr'"),
    (["--strategies", "par", "par"], "--strategies: repeated"),
    (["--seeds", "0", "0"], "--seeds: repeated"),
    (["--epochs", "0"], "must be >= 1"),
    (["--calib-option", "alphaa=0.3"], "unknown option 'alphaa'"),
    (["--calib-option", "whiten"], "expected KEY=VALUE"),
    (["--streams", "split-fmnist"], "invalid choice"),
])
def test_cli_refuses_bad_options_before_running(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


TINY = {"n_tasks": 3, "input_shape": [1, 12, 12], "n_train_per_class": 6, "n_val_per_class": 4,
        "n_test_per_class": 4}
PAR_TINY = {"channels": 4, "n_cells": 1, "search_channels": 2, "search_epochs": 1, "whiten": 0}


def test_checks_end_to_end_on_a_tiny_grid(tmp_path, capsys):
    arms = [Arm("par", "par", PAR_TINY), Arm("independent", "independent", {})]
    grid = {}
    for group, snaps in (([arms[0]], "last"), ([arms[1]], "none")):
        grid.update(run_grid(group, {"synthetic": TINY}, out=tmp_path, seeds=[0, 1], config={"epochs": 1},
                             min_val=8, snapshots=snaps, echo=None))
    args = argparse.Namespace(out=str(tmp_path), seeds=[0, 1], streams=["synthetic"])
    bench.checks(args, grid)
    text = capsys.readouterr().out
    assert (tmp_path / "heatmaps" / "synthetic-seed0.svg").exists()
    # the replay at the runs' own alpha / beta reproduces every recorded decision
    assert "the decisions equal the recorded ones in 2 of 2 runs" in text
    # allocation-only groups never forget: every such task's accuracy is exactly unchanged
    section = text.split("(iii)")[1].split("(v)")[0]
    row = next(line for line in section.splitlines() if line.startswith("| synthetic | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == cells[2] and int(cells[1]) > 0
    vrow = next(line for line in text.split("(v)")[1].splitlines() if line.startswith("| synthetic | "))
    assert vrow.split(" | ")[1] == "2"  # both seeds paired
    runs = [grid[("synthetic", "par", s)] for s in (0, 1)]
    assert all(not r.failed for r in runs)
    expected = [bench.par_summary(bench.final_net(r))["tasks"]["t1"]["expert"] for r in runs]
    assert expected == ["e1", "e1"]


def test_calibration_counts_the_pairs_of_one_seed(capsys):
    mid = bench.calibrate([100], {}, bench.stream_options(30))
    text = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| pairs")}
    # per seed: 3 related (ctrl-minus, ctrl-plus, ctrl-out t6 vs t1); unrelated: their t6 vs t2..t5
    # (3 x 4) plus the t1..t5 pairs of ctrl-minus and ctrl-pl (2 x 10); ctrl-in's t6 vs t1..t5
    assert rows == {"related (repeat / relabelled t1)": "3", "unrelated (distinct classes and inputs)": "32",
                    "ctrl-in's perturbed t6 vs all": "5"}
    assert 0.0 < mid < 1.0 and f"midpoint of max(related) and min(unrelated): {mid:.3f}" in text
