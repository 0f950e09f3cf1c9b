"""benchmarks/lasem.py on the shared protocol: what each stream draws, the custom tables on
hand-computed runs, and a tiny grid that a second invocation prints again from its cells.

The Fashion-MNIST streams need the Debian package dataset-fashion-mnist (as tests/test_streams.py):
they fail, never skip, when it is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import lasem
from benchmarks.protocol import MIN_VAL, Run
from jointnet.experiments.metrics import summarize
from jointnet.experiments.streams import get_stream

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("synthetic", [False, True])
@pytest.mark.parametrize("name", lasem.STREAMS)
@pytest.mark.parametrize("per_class", [100, 10])
def test_streams_keep_training_size_and_draw_200_validation_images(name, synthetic, per_class):
    registered, opts = lasem.stream_spec(name, per_class, synthetic)
    stream = get_stream(registered, seed=3, **opts)
    assert len(stream.tasks) == 5
    for task in stream.tasks:
        assert len(task.y_train) == 5 * per_class  # as before the port: 500 per task at P = 100
        assert len(task.y_val) == lasem.N_VAL >= MIN_VAL
        assert len(task.y_test) == (200 if synthetic and name == "split-fmnist" else 500)


def _run(label: str, seed: int, final: float, cpu: list[float], masks=None, settled=None) -> Run:
    """A finished 2-task cell: R = [[0.9], [final, final]] (AP = final, peak = (0.9 + final) / 2)."""
    matrix = [[0.9], [final, final]]
    tasks = {}
    if masks is not None:
        for i, m in enumerate(masks):
            tasks[f"t{i + 1}"] = {"lasem": {"mask": m, "settled": None if settled is None else settled[i]}}
    result = {"matrix": matrix, "metrics": summarize(matrix), "cpu_time": cpu,
              "wall_time": cpu, "tasks": ["t1", "t2"], "annotations": {"net": {}, "tasks": tasks, "nodes": {}}}
    return Run(label, "s", seed, Path("."), {}, result)


def _grid() -> dict:
    """Per seed s an offset d = 0.01 s on every arm's AP: the paired differences are constant."""
    grid = {}
    for seed in (0, 1, 2):
        d = 0.01 * seed
        runs = [
            _run("LASEM-HPS", seed, 0.80 + d, [4.0, 4.0], ["TTTT", "FFTT"]),
            _run("LASEM-HPS (settle=1)", seed, 0.75 + d, [1.0, 1.0], ["TTTT", "TTTT"], [1, None]),
            _run("HPS all", seed, 0.70 + d, [1.0, 2.0]),
            _run("HPS top2", seed, 0.72 + d, [1.0, 2.0]),
            _run("HPS bottom2", seed, 0.60 + d, [1.0, 2.0]),
            _run("independent", seed, 0.85 + d, [1.0, 1.0]),
        ]
        grid.update({("s", r.label, seed): r for r in runs})
    return grid


def test_run_readers_on_a_hand_computed_matrix():
    r = _run("x", 0, 0.6, [1.0, 3.0], ["TFTF", "FFFF"], [2, None])
    assert lasem.peak(r) == pytest.approx(0.75)
    assert lasem.forgetting_ratio(r) == pytest.approx(0.6 / 0.9)
    assert lasem.masks(r) == ["TFTF", "FFFF"]
    assert lasem.task_ratio(r, _run("y", 0, 0.6, [2.0, 1.0])) == pytest.approx((0.5 + 3.0) / 2)


def test_settle_and_summary_rows(capsys):
    grid = _grid()
    lasem.print_settle(grid, ["s"])
    lasem.print_summary(grid, ["s"])
    lines = capsys.readouterr().out.splitlines()
    # settle=1: CPU per task / All = mean(1/1, 1/2) = 0.75, default mean(4/1, 4/2) = 3.00; AP 0.75 + d:
    # mean 0.760, sd 0.010; -0.05 against the default, +0.05 against All on every seed; settled on
    # task 1 of each seed at batch 1; the same mask as the default on t1 only.
    assert ("| s | HPS | 1 | 0.75 ± 0.00x | 3.00 ± 0.00x | 0.760 ± 0.010 | -0.050 [-0.050, -0.050] | "
            "+0.050 [+0.050, +0.050] | 3 of 6, batch 1-1 | 3 of 6 |") in lines
    # the default: AP 0.81 ± 0.01; +0.10 against All; the best static by mean AP is top2 (+0.08);
    # -0.05 against independent; no finetune arm; forgetting ratio (0.80, 0.81, 0.82) / 0.9.
    assert ("| HPS | 0.810 ± 0.010 | +0.100 [+0.100, +0.100] | +0.080 [+0.080, +0.080] (top2) | "
            "-0.050 [-0.050, -0.050] | - | 0.900 ± 0.011 |") in lines


def test_task_cost_table_leaves_out_missing_variants(capsys):
    lasem.print_task_cost(_grid(), ["s"])
    out = capsys.readouterr().out
    assert "| s | 3.00 ± 0.00x | - | - |" in out
    assert "| s (settle=1) | 0.75 ± 0.00x | - | - |" in out
    assert "settle=5" not in out


def test_only_that_matches_nothing_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--only nothing-like-this: no arm matches"):
        lasem.main(["--quick", "--synthetic", "--sections", "accuracy", "--only", "nothing-like-this",
                    "--out", str(tmp_path)])


def test_bad_option_values_are_refused_before_anything_is_written(tmp_path, capsys):
    for argv in (["--epochs", "0"], ["--per-class", "-1"], ["--seeds", "1", "1"]):
        with pytest.raises(SystemExit):
            lasem.main(argv + ["--out", str(tmp_path / "cells")])
    assert not (tmp_path / "cells").exists()


def test_a_second_invocation_prints_the_same_tables_from_the_cells(tmp_path, capsys):
    argv = ["--quick", "--synthetic", "--sections", "accuracy", "--streams", "lowlevel-fmnist",
            "--only", "LASEM-HPS", "HPS all", "--out", str(tmp_path)]
    lasem.main(argv)
    first = capsys.readouterr()
    lasem.main(argv)
    second = capsys.readouterr()
    progress = [line for line in second.err.splitlines() if line.startswith("  synthetic:lowlevel-fmnist seed 0 ")]
    assert len(progress) == 2 and all(line.endswith("(reused)") for line in progress)
    tables = [out[out.index("### "):out.index("(total")] for out in (first.out, second.out)]
    assert tables[0] == tables[1]
    # every table of the section, with the masks read from the cells' annotations and the
    # posterior history from their final snapshots (5 EM tasks)
    assert "### synthetic:lowlevel-fmnist: accuracy and forgetting, base HPS (1 seeds" in tables[0]
    mask_row = [line for line in tables[0].splitlines() if line.startswith("| HPS | ")][0]
    assert mask_row.endswith(" of 5 |") and len(mask_row.split(" | ")[1].split()) == 5
    assert "### Cost per task, end to end" in tables[0] and "### Summary on synthetic:lowlevel-fmnist" in tables[0]
    cells = sorted(p.parent.parent.name for p in tmp_path.glob("synthetic_lowlevel-fmnist/*/seed-0-*/result.json"))
    assert cells == ["HPS_all", "LASEM-HPS"]
