"""The example script and `jointnet demo` run end to end (small settings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jointnet import snapshot
from jointnet.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_graph_api_example_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("graph_api", ROOT / "examples" / "graph_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    out = capsys.readouterr().out
    assert "bit-identical outputs = True" in out
    net, store = snapshot.load(tmp_path / "final.jn")
    assert list(net.tasks) == ["t1", "t2", "t3"]
    assert net.node("conv2.t2").cloned_from == "conv2"
    assert [g.owner for g in net.node("conv1").out_groups] == ["t3"]


def test_demo_runs_on_real_data(tmp_path, capsys):
    """`jointnet demo` on a small slice of split Fashion-MNIST (needs the Debian data package)."""
    rc = main(["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "200"])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("packnet", "finetune", "independent"):
        assert (tmp_path / name / "results.json").exists()
        assert len(list((tmp_path / name / "snapshots").glob("*.jn"))) == 5
    assert "accuracy matrix" in out or "after t5" in out
    assert "what changed in packnet" in out and "jointnet inspect" in out
