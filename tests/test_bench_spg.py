"""The SPG benchmark on the shared protocol (benchmarks/spg.py): its default streams keep the
training sizes and >= 200 validation images, FWT against the same seed's independent nets, the
claims table on hand-computed values (failed cells left out), and the snapshot-reading columns
(blocked fraction, pruning probe) on a tiny real grid."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.spg as bench
from benchmarks.protocol import MIN_VAL, SEEDS, Run, run_grid, table
from jointnet.experiments.metrics import summarize
from jointnet.experiments.streams import get_stream

pytestmark = pytest.mark.usefixtures("one_thread")

STREAM = "split-fmnist"


def _run(label: str, seed: int, matrix: list | None, strategy: str = "finetune", failed: str | None = None) -> Run:
    if failed is not None:
        result = {"failed": failed, "matrix": []}
    else:
        result = {"metrics": summarize(matrix), "matrix": matrix, "params": [{"total": 1}],
                  "wall_time": [1.0] * len(matrix), "cpu_time": [2.0] * len(matrix), "seconds": 3.0}
    return Run(label, STREAM, seed, Path(f"/nonexistent/{label}/{seed}"), {"strategy": strategy}, result)


def _grid() -> dict:
    spg = [[[0.9], [0.9, 0.9]], [[0.9], [0.8, 0.9]], [[0.9], [0.9, 0.8]]]
    ft = [[[0.9], [0.5, 0.9]], [[0.9], [0.6, 0.9]], [[0.9], [0.7, 0.9]]]
    flat = [[0.8], [0.8, 0.8]]
    grid = {}
    for s in range(3):
        runs = [
            _run("SPG", s, spg[s], "spg"),
            _run("HAT", s, flat, "hat"),
            _run("EWC λ=100", s, [[0.9], [0.9, 0.9]]),
            # the higher ACC on the seeds it finished, but it failed once: not "the better EWC"
            _run("EWC λ=1000", s, [[0.95], [0.95, 0.95]],
                 failed="task 2 of 2: the loss is inf at epoch 1, batch 3" if s == 1 else None),
            _run("finetune (NCL)", s, ft[s]),
            _run("independent (ONE)", s, flat, "independent"),
        ]
        grid.update({(STREAM, r.label, s): r for r in runs})
    return grid


@pytest.fixture
def fake_blocked(monkeypatch):
    stats = {"spg": {"method": "spg", "total": {"blocked": 0.001, "> 0.5": 0.6, "> 0.9": 0.4}},
             "hat": {"method": "hat", "total": {"blocked": 0.8}}}
    monkeypatch.setattr(bench, "blocked_of", lambda run: stats.get(run.spec["strategy"]))


def test_default_streams_keep_training_sizes_with_200_validation_images():
    args = bench.parse([])
    assert args.seeds == list(SEEDS) and args.out == "runs/spg-p"
    want = {"split-fmnist": (1800, 200, 1000), "similar-fmnist": (900, 225, 1000)}
    for name, options in bench._streams(args).items():
        for seed in SEEDS:
            sizes = {(len(t.y_train), len(t.y_val), len(t.y_test)) for t in get_stream(name, seed=seed, **options).tasks}
            assert sizes == {want[name]}, (name, seed)
            assert want[name][1] >= MIN_VAL


def test_fwt_is_against_the_same_seeds_independent_nets():
    grid = _grid()
    runs = {label: r for (_, label, s), r in grid.items() if s == 2}
    # SPG seed 2: diagonal (0.9, 0.8), independent (0.8, 0.8): FWT = (0.1 + 0.0) / 2 = 5 points
    assert bench.fwt(runs["SPG"], runs) == pytest.approx(5.0)
    assert bench.fwt(runs["SPG"], {"SPG": runs["SPG"]}) is None


def test_claims_on_hand_computed_values(fake_blocked):
    text = bench.claims({STREAM: _grid()})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    # ACC (points) SPG 90, 85, 85 - finetune 70, 75, 80 = 20, 10, 5: mean 11.667, sd 7.6376,
    # half width 4.302653 * 7.6376 / sqrt(3) = 18.973.
    assert rows["SPG ACC >= finetune's (split-fmnist)"] == (
        "| SPG ACC >= finetune's (split-fmnist) | mean only | +11.67 [-7.31, +30.64] | 3 | +20.0, +10.0, +5.0 |")
    # FWT SPG 10, 10, 5 - HAT 0: mean 8.333, sd 2.8868, half width 7.171.
    assert rows["SPG FWT >= HAT's (split-fmnist)"] == (
        "| SPG FWT >= HAT's (split-fmnist) | yes | +8.33 [+1.16, +15.50] | 3 | +10.0, +10.0, +5.0 |")
    # the better EWC is the one that finished every seed: ACC 0, -5, -5 against it
    ewc = [r for r in rows if "better EWC" in r]
    assert ewc == ["SPG ACC >= the better EWC's, EWC λ=100 (split-fmnist)"]
    assert rows[ewc[0]].split(" | ")[1] == "no"
    assert rows["SPG BWT above finetune's (dissimilar)"].split(" | ")[1] == "mean only"
    assert rows["SPG blocked fraction far (10x) below HAT's (split-fmnist)"] == (
        "| SPG blocked fraction far (10x) below HAT's (split-fmnist) | yes | 0.10% vs 80.00% | 3 / 3 | - |")
    assert not any("similar-fmnist" in r or "(similar)" in r for r in rows)  # no similar-fmnist runs


def test_claims_with_one_seed_claim_no_interval(fake_blocked):
    grid = {k: r for k, r in _grid().items() if k[2] == 0}
    line = [x for x in bench.claims({STREAM: grid}).splitlines() if x.startswith("| SPG ACC >= finetune")][0]
    assert line.split(" | ")[1] == "one seed: no CI"


def test_failed_cells_are_listed_and_left_out_of_the_table(fake_blocked):
    grid = _grid()
    assert bench.failures(grid, STREAM, list(bench.METHODS)) == [
        "Failed runs, EWC λ=1000: seed 1: task 2 of 2: the loss is inf at epoch 1, batch 3"]
    text = table(grid, STREAM, control="SPG", metrics=list(bench.COLUMNS.values()),
                 labels=["SPG", "EWC λ=1000", "HAT"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[2:]}
    assert rows["EWC λ=1000 (1 of 3 seeds failed)"][1] == "2"
    # SPG: ACC 90, 85, 85; FWT 10, 10, 5; blocked 0.1%; HAT has no importance columns
    assert rows["SPG"][2:5] == ["86.7 ± 2.9", "-", "+8.3 ± 2.9"]
    assert rows["SPG"][8:11] == ["0.1 ± 0.0", "60.0 ± 0.0", "40.0 ± 0.0"]
    assert rows["HAT"][8:11] == ["80.0 ± 0.0", "-", "-"]


def test_blocked_fraction_and_pruning_probe_read_the_snapshots(tmp_path):
    options = {"n_tasks": 2, "input_shape": [6], "n_train_per_class": 8, "n_val_per_class": 4, "n_test_per_class": 4}
    config = {"epochs": 1, "batch_size": 8, "optimizer": "sgd", "lr": 0.1}
    arms = [bench.Arm("SPG", "spg"), bench.Arm("HAT", "hat")]
    grid = run_grid(arms, {"synthetic": options}, out=tmp_path, seeds=[0], config=config, min_val=4,
                    snapshots="every", echo=None)
    spg, hat = grid[("synthetic", "SPG", 0)], grid[("synthetic", "HAT", 0)]
    b = bench.blocked_of(spg)
    assert b["method"] == "spg" and 0 <= b["total"]["blocked"] <= b["total"]["> 0.9"] <= b["total"]["> 0.5"] <= 1
    assert bench.blocked_of(hat)["method"] == "hat"
    assert bench.blocked_of(_run("finetune (NCL)", 0, [[0.5]])) is None
    probe = bench.pruning(grid, "synthetic", options, [0]).splitlines()
    assert probe[0].startswith("| pruned | nothing | lowest 10% | random 10% | highest 10% |")
    # nothing pruned: task 1's test accuracy after task 1, the run's R[0][0]
    assert probe[2].split(" | ")[1] == f"{100 * spg.matrix[0][0]:.1f} ± 0.0"
    assert bench.pruning(grid, "synthetic", options, [5]) is None


def test_options_are_checked_before_anything_runs(tmp_path):
    quick = bench.parse(["--quick"])
    assert quick.seeds == [0, 1] and quick.epochs == 2 and quick.out == "runs/spg-quick"
    with pytest.raises(SystemExit):
        bench.parse(["--threads", "0"])
    with pytest.raises(SystemExit):
        bench.parse(["--seeds", "-1"])
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit):
        bench.parse(["--out", str(tmp_path / "f")])
    assert bench._snapshots("SPG") == "every" and bench._snapshots("HAT") == "last"
    assert bench._snapshots("finetune (NCL)") == "none"
