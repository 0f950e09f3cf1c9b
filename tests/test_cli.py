"""The ``jointnet`` command line on real snapshot files: inspect, log, diff, render, demo hook,
errors. Run in-process through `main([...])`, and once through ``python -m jointnet.cli``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from jointnet import backbones, snapshot
from jointnet.cli import main
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_task, bind, clone_node, freeze, widen

REPO = Path(__file__).resolve().parents[1]


def two_tasks():
    net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    net = bind(add_task(net, task="t2"), task="t2", to="t1")
    return add_head(net, task="t2", n_classes=3)


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    """a: t1, t2 sharing fc1. b: a + clone fc1 for t2, widen it by 2 for t2, freeze relu1 for t2,
    with head.t1's weight moved in b's store."""
    d = tmp_path_factory.mktemp("snaps")
    a = two_tasks()
    sa = ParamStore(seed=0).realize(a)
    b = clone_node(a, node="fc1", task="t2")
    b = widen(b, node="fc1.t2", k=2, task="t2")
    b = freeze(b, nodes="relu1", task="t2")
    sb = ParamStore(seed=0).realize(b)
    key = b.node("head.t1").param("weight").key
    with torch.no_grad():
        sb[key][0, 0] += 3.0
        sb[key][1, 2] += 4.0
    pa = snapshot.save(d / "a.jn", a, sa)
    pb = snapshot.save(d / "b.jn", b, sb)
    pn = snapshot.save(d / "b_struct.jn", b, None, tensors=False)
    return types.SimpleNamespace(a=str(pa), b=str(pb), b_struct=str(pn), net_a=a, net_b=b, moved=key, dir=d)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- inspect ------------------------------------------------------------------------------------


def test_inspect(capsys, snaps):
    rc, out, err = run(capsys, "inspect", snaps.a)
    assert rc == 0 and err == ""
    assert "version 8, 2 task(s), 5 node(s)" in out
    assert "t2  input=input  head=head.t2" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "owners={t1,t2}" in lines["fc1"] and "params=40" in lines["fc1"]
    assert "owners={t2}" in lines["head.t2"]
    # fc1 (8x4 + 8 = 40) shared; heads 2x8+2 = 18 and 3x8+3 = 27 owned
    assert "parameters: total 85, shared 40, owned t1=18, t2=27" in out
    assert "  {t1,t2}: fc1, relu1" in out


def test_inspect_after_growth(capsys, snaps):
    rc, out, _ = run(capsys, "inspect", snaps.b)
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "cloned_from=fc1" in lines["fc1.t2"] and "groups=t2:+2" in lines["fc1.t2"]
    assert "policy[t2]=frozen" in lines["relu1"]
    # t1: fc1 40 + head.t1 18 = 58; t2: fc1.t2 (10x4 + 10 = 50) + head.t2 (3x10 + 3 = 33) + the
    # 2 input columns widen grew on head.t1 too, owned by t2 and unseen by t1 (2x2 = 4) = 87
    assert "parameters: total 145, shared 0, owned t1=58, t2=87" in out
    assert "  {t1,t2}: relu1" in out


def test_inspect_json(capsys, snaps):
    rc, out, _ = run(capsys, "inspect", snaps.b, "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["version"] == snaps.net_b.version
    assert [t["name"] for t in data["tasks"]] == ["t1", "t2"]
    assert data["params"]["total"] == 145 and data["params"]["owned"] == {"t1": 58, "t2": 87}
    assert data["sharing"] == [{"tasks": ["t1", "t2"], "nodes": ["relu1"]}]
    nodes = {n["id"]: n for n in data["nodes"]}
    assert nodes["fc1.t2"]["users"] == ["t2"]


# ---- log ----------------------------------------------------------------------------------------


def test_log(capsys, snaps):
    rc, out, _ = run(capsys, "log", snaps.b)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == snaps.net_b.version == 11
    assert lines[0] == "v1   add_input(node='input', shape=(4,))"
    assert lines[6] == "v7   bind(task='t2', to='t1')"
    assert lines[-3].startswith("v9   clone_node(node='fc1', task='t2'")
    assert lines[-1] == "v11  freeze(nodes='relu1', task='t2', keep_owned=False)"


def test_log_json(capsys, snaps):
    rc, out, _ = run(capsys, "log", snaps.a, "--json")
    assert rc == 0
    data = json.loads(out)
    assert [r["name"] for r in data][-3:] == ["add_task", "bind", "add_head"]
    assert data[-1] == {"version": 8, "name": "add_head",
                        "kwargs": {"task": "t2", "n_classes": 3, "after": None, "share_with": None, "node": None}}


# ---- diff ---------------------------------------------------------------------------------------


def test_diff(capsys, snaps):
    rc, out, _ = run(capsys, "diff", snaps.a, snaps.b)
    assert rc == 0
    assert out.startswith("diff v8 -> v11")
    assert "+ fc1.t2  Linear(4->10)  users={t2}" in out
    assert "fc1  {t1,t2} -> {t1}" in out
    assert "relu1 [t2]  default -> frozen" in out
    assert "owned: t1 +40, t2 +60" in out
    assert "tensors: 1 of 6 shared tensors moved" in out
    assert f"{snaps.moved}  l2=5  max_abs=4" in out


def test_diff_json(capsys, snaps):
    rc, out, _ = run(capsys, "diff", snaps.a, snaps.b, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["empty"] is False
    assert list(d["nodes_added"]) == ["fc1.t2"]
    assert d["ownership"]["fc1"] == {"a": ["t1", "t2"], "b": ["t1"]}
    assert d["params_added"] == {"t1": 40, "t2": 60}
    assert d["policy"] == [{"task": "t2", "node": "relu1", "before": None,
                            "after": {"frozen": True, "lr_scale": 1.0}}]
    moved = {k: v for k, v in d["tensors"].items() if v["l2"]}
    assert list(moved) == [snaps.moved]
    assert moved[snaps.moved] == {"l2": pytest.approx(5.0), "max_abs": pytest.approx(4.0), "numel": 16}


def test_diff_same_and_structure_only(capsys, snaps):
    rc, out, _ = run(capsys, "diff", snaps.a, snaps.a)
    assert rc == 0 and out.splitlines() == ["diff v8 -> v8: no differences", "tensors: 0 of 6 shared tensors moved"]
    rc, out, _ = run(capsys, "diff", snaps.a, snaps.b_struct)  # b without tensors
    assert rc == 0 and "tensors:" not in out and "fc1.t2" in out
    rc, out, _ = run(capsys, "diff", snaps.a, snaps.b, "--no-tensors", "--json")
    assert rc == 0 and json.loads(out)["tensors"] == {}


# ---- render -------------------------------------------------------------------------------------


def test_render_dot(capsys, snaps, tmp_path):
    target = tmp_path / "net.dot"
    rc, out, _ = run(capsys, "render", snaps.b, "-o", str(target))
    assert rc == 0 and out.strip() == f"wrote {target}"
    text = target.read_text()
    assert text.startswith("digraph") and '"fc1.t2"' in text and '"head.t1"' in text
    rc, _, _ = run(capsys, "render", snaps.b, "--task", "t1", "-o", str(tmp_path / "t1.dot"))
    only = (tmp_path / "t1.dot").read_text()
    assert rc == 0 and '"head.t1"' in only and '"fc1.t2"' not in only


def test_render_svg_without_dot_fails_cleanly(capsys, snaps, tmp_path, monkeypatch):
    import jointnet.persistence.render as r

    monkeypatch.setattr(r.shutil, "which", lambda name: None)
    rc, out, err = run(capsys, "render", snaps.a, "-o", str(tmp_path / "net.svg"))
    assert rc == 2
    assert err.count("\n") == 1 and "'dot'" in err and "Traceback" not in err
    assert (tmp_path / "net.dot").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_render_svg(capsys, snaps, tmp_path):
    rc, out, _ = run(capsys, "render", snaps.b, "-o", str(tmp_path / "net.svg"))
    assert rc == 0 and "net.svg" in out
    assert "<svg" in (tmp_path / "net.svg").read_text()


# ---- errors -------------------------------------------------------------------------------------


def _one_line_error(rc, out, err, *needles):
    assert rc == 2
    assert out == ""
    assert err.startswith("jointnet: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    for n in needles:
        assert n in err


def test_missing_file(capsys, tmp_path):
    missing = str(tmp_path / "nope.jn")
    for argv in (["inspect", missing], ["log", missing], ["render", missing, "-o", str(tmp_path / "x.dot")]):
        _one_line_error(*run(capsys, *argv), "nope.jn")


def test_directory_is_not_a_snapshot(capsys, tmp_path):
    _one_line_error(*run(capsys, "inspect", str(tmp_path)), "directory")


def test_corrupt_snapshot(capsys, snaps, tmp_path):
    garbage = tmp_path / "garbage.jn"
    garbage.write_bytes(b"this is not a snapshot\x00\xff" * 10)
    _one_line_error(*run(capsys, "inspect", str(garbage)), "SnapshotError")
    truncated = tmp_path / "truncated.jn"
    data = Path(snaps.b).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    _one_line_error(*run(capsys, "diff", snaps.a, str(truncated)), "SnapshotError")


def test_unknown_task(capsys, snaps, tmp_path):
    _one_line_error(*run(capsys, "render", snaps.a, "--task", "t9", "-o", str(tmp_path / "x.dot")), "t9")


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["inspect"]) == 2
    assert main(["frobnicate"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out


# ---- demo hook ----------------------------------------------------------------------------------


def test_demo_hook_calls_jointnet_demo_main(capsys, monkeypatch):
    seen = {}
    fake = types.ModuleType("jointnet.cli.demo")

    def fake_main(args):
        seen["out"], seen["epochs"] = args.out, args.epochs
        print("demo ran")
        return 0

    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "jointnet.cli.demo", fake)
    rc, out, _ = run(capsys, "demo", "--out", "somewhere", "--epochs", "1")
    assert rc == 0 and out == "demo ran\n"
    assert seen == {"out": "somewhere", "epochs": 1}


def test_demo_hook_without_demo_module(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jointnet.cli.demo", None)  # import fails
    _one_line_error(*run(capsys, "demo"), "demo")


# ---- the console entry --------------------------------------------------------------------------


def test_python_dash_m_entry(snaps):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "jointnet.cli", "log", snaps.a],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "v8  add_head(task='t2', n_classes=3, after=None, share_with=None, node=None)"
    proc = subprocess.run([sys.executable, "-m", "jointnet.cli", "inspect", str(snaps.dir / "missing.jn")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("jointnet: error: ") and "Traceback" not in proc.stderr
