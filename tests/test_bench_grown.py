"""benchmarks/grown.py on the shared protocol: its streams keep the training counts with >= 200
validation images per task, GROWN rows share a reference cache under --out, bad options fail
before anything is written, and its custom tables read GROWN's per-task records correctly on
hand-made runs (failed cells left out and counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import grown as bench
from benchmarks.protocol import MIN_VAL, Run, by_seed, check_validation
from jointnet.experiments.streams import get_stream


@pytest.mark.parametrize("name, n_train", [("split-fmnist", 900), ("rotated-fmnist", 540)])
def test_streams_keep_training_counts_with_200_validation_images(name, n_train):
    stream = get_stream(name, seed=0, **bench.STREAMS[name])
    assert {len(t.y_train) for t in stream.tasks} == {n_train}
    assert {len(t.y_val) for t in stream.tasks} == {200} and MIN_VAL == 200
    assert {len(t.y_test) for t in stream.tasks} == {1000}
    check_validation(stream)


def test_arms_share_one_reference_cache_per_stream(tmp_path):
    arms = bench.arms(list(bench.ROWS), tmp_path, "split-fmnist", {"rounds": 1})
    grown_arms = [a for a in arms if a.strategy in bench.GROWN_STRATEGIES]
    assert len(grown_arms) == 6
    assert {a.options["target_cache"] for a in grown_arms} == {str(tmp_path / "split-fmnist" / "refs")}
    assert all(a.options["rounds"] == 1 and a.options["backbone"] == "lenet" for a in grown_arms)
    others = [a for a in arms if a.strategy not in bench.GROWN_STRATEGIES]
    assert all("target_cache" not in a.options and a.options["backbone"][1]["out_ch"] == 20 for a in others)


@pytest.mark.parametrize("argv, message", [
    (["--grown", "lam=-1"], "benchmarks/grown.py: error: row 'grow-only': grow-only: bad options: lam=-1"),
    (["--grown", "nonsense=1"], "unknown option 'nonsense'"),
    (["--grown", "lam"], "--grown takes KEY=VALUE items (got 'lam')"),
    (["--epochs", "0"], "--epochs must be >= 1 (got 0)"),
    (["--seeds", "1", "1"], "--seeds must be distinct integers >= 0"),
    (["--rows", "hat", "hat"], "--rows repeats a row"),
])
def test_bad_options_fail_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        bench.main(argv + ["--out", str(out)])
    assert message in capsys.readouterr().err
    assert not out.exists()


def _run(label: str, seed: int, ap: float, *, grew=None, sizes=(0.2, 0.3, 0.4), released=(0, 5, 7),
         bwt: float = 0.0, failed: bool = False) -> Run:
    tasks = ["t1", "t2", "t3"]
    if failed:
        return Run(label, "s", seed, Path("."), {}, {"failed": "task 2 of 3: loss is nan", "tasks": tasks,
                                                    "matrix": [[0.5]]})
    ann = {t: {} for t in tasks}
    if grew is not None:  # a GROWN run: one record per task
        for i, t in enumerate(tasks):
            ann[t] = {"grown": {"size": sizes[i], "grew": bool(i and grew[i - 1]), "released": released[i],
                                "first": i == 0}}
    result = {
        "tasks": tasks, "metrics": {"AP": ap, "BWT": bwt}, "matrix": [[ap], [ap, ap], [ap, ap, ap]],
        "params": [{"total": 100}, {"total": 150}, {"total": 300}], "wall_time": [1.0, 2.0, 3.0],
        "cpu_time": [1.0, 1.0, 1.0], "seconds": 6.0, "annotations": {"net": {}, "tasks": ann, "nodes": {}},
    }
    return Run(label, "s", seed, Path("."), {}, result)


def _grid() -> dict:
    g = {}
    # GROWN minus independent, in points: +10, +9, +11 (mean 10, sd 1, half width
    # t(0.975, 2) / sqrt(3) = 2.4841): [+7.52, +12.48]
    for s, (a, b) in enumerate([(0.90, 0.80), (0.91, 0.82), (0.95, 0.84)]):
        g[("s", "G", s)] = _run("G", s, a, grew=[True, s != 1])
        g[("s", "independent", s)] = _run("independent", s, b)
    # a second GROWN row: 0 and -1 points on seeds 0 and 1, seed 2 failed; seed 1 with BWT below 0;
    # sizes above 1.3x after the last task
    for s, (a, b) in enumerate([(0.80, 0.80), (0.81, 0.82)]):
        g[("s", "H", s)] = _run("H", s, a, grew=[True, True], sizes=(0.5, 0.9, 1.4 - s / 10), bwt=-0.01 * s)
    g[("s", "H", 2)] = _run("H", 2, 0.0, failed=True)
    return g


def test_records_sizes_stage_b_and_released():
    g = _grid()
    grown, ind = g[("s", "G", 1)], g[("s", "independent", 1)]
    assert bench.sizes(grown, full=100) == [0.2, 0.3, 0.4] and bench.sizes(ind, full=100) == [1.0, 1.5, 3.0]
    assert bench.stage_b(grown) == 1 and bench.skipped(grown) == ["t3"] and bench.released(grown) == 12
    assert bench.records(ind) is None and bench.stage_b(ind) is None and bench.released(ind) is None


def test_stage_b_and_per_task_tables():
    seeds = by_seed(_grid(), "s")
    text = bench.stage_b_table(seeds, ["G", "H"], n_tasks=3).splitlines()
    assert text[2] == "| G | 5 of 6 tasks | t3 (seed 1) |"
    assert text[3] == "| H (1 seed(s) failed) | 4 of 4 tasks | none |"
    sizes = bench.per_task_table(seeds, ["G", "independent", "H"], 3, lambda r: bench.sizes(r, 100), ".2f", "{}")
    assert sizes.splitlines()[0] == "| method | 1 | 2 | 3 |"
    assert sizes.splitlines()[2:] == ["| G | 0.20 | 0.30 | 0.40 |", "| independent | 1.00 | 1.50 | 3.00 |",
                                      "| H (1 seed(s) failed) | 0.50 | 0.90 | 1.35 |"]


def test_targets_table_on_hand_computed_values():
    seeds = by_seed(_grid(), "s")
    rows = bench.targets_table(seeds, ["G", "H"], full=100).splitlines()[2:]
    assert rows[0] == "| G | yes (max 0.400) | +10.00 [+7.52, +12.48] (n=3) | yes | yes: t3 | yes |"
    # H: differences 0 and -1 (n=2): mean -0.5, sd 0.7071, half width 12.7062 * 0.5 = 6.35
    assert rows[1] == ("| H (1 seed(s) failed) | no (max 1.400) | -0.50 [-6.85, +5.85] (n=2) | mean only | no "
                       "| no (max |BWT| 0.0100) |")


def test_stage_a_table_on_hand_computed_records():
    seeds = {}
    for s, (a, t, f) in enumerate([((0.40, 0.50), (0.60, 0.60), (0.55, 0.57)), ((0.46, 0.52), (0.62, 0.62), (0.6, 0.6))]):
        run = _run("G", s, 0.5, grew=[True, True])
        for i, name in enumerate(("t2", "t3")):
            run.annotations["tasks"][name]["grown"].update(
                stage_a_acc=a[i], target=t[i], acc=f[i], kept={"fc1": {"selective": 0.9 + 0.02 * i + 0.01 * s}})
        seeds[s] = {"G": run}
    rows = bench.stage_a_table(seeds, ["G"]).splitlines()
    # Stage A (0.40 + 0.50 + 0.46 + 0.52) / 4 = 0.47; target 0.61; gaps 20, 10, 16, 10 points:
    # mean 14.0, [10.0, 20.0]; after Stage B 0.58; m^s off 1 - (0.90, 0.92, 0.91, 0.93) = 8.5%
    assert rows[2] == "| G | 0.470 | 0.610 | 14.0 [10.0, 20.0] | 0.580 | 8.5% |"
