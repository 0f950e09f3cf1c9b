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
from jointnet.graph import (
    add_head, add_task, attach_mask, bind, clone_node, commit_mask, freeze, track_owners, widen,
)

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
    assert "  {t1,t2} (2 tasks): input, fc1, relu1" in out
    assert "capacity" not in out  # no masks, owner maps or gates


def test_inspect_after_growth(capsys, snaps):
    rc, out, _ = run(capsys, "inspect", snaps.b)
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "cloned_from=fc1" in lines["fc1.t2"] and "groups=t2:+2" in lines["fc1.t2"]
    assert "policy[t2]=frozen" in lines["relu1"]
    # t1: fc1 40 + head.t1 18 = 58; t2: fc1.t2 (10x4 + 10 = 50) + head.t2 (3x10 + 3 = 33) = 83.
    # head.t1 gains no columns: t1 enters relu1 from fc1, which does not carry fc1.t2's channels.
    assert "parameters: total 141, shared 0, owned t1=58, t2=83" in out
    assert "  {t1,t2} (2 tasks): input, relu1" in out
    assert "one task only: 2 task(s) with 2 node(s) of their own (e.g. t1: fc1, head.t1)" in out


def test_inspect_json(capsys, snaps):
    rc, out, _ = run(capsys, "inspect", snaps.b, "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["version"] == snaps.net_b.version
    assert [t["name"] for t in data["tasks"]] == ["t1", "t2"]
    assert data["params"]["total"] == 141 and data["params"]["owned"] == {"t1": 58, "t2": 83}
    assert data["sharing"] == [{"tasks": ["t1", "t2"], "nodes": ["relu1"]}]
    nodes = {n["id"]: n for n in data["nodes"]}
    assert nodes["fc1.t2"]["users"] == ["t2"]


# ---- log ----------------------------------------------------------------------------------------


def test_log(capsys, snaps):
    rc, out, _ = run(capsys, "log", snaps.b)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == snaps.net_b.version == 11
    assert lines[0] == "v1   add_input(node=input, shape=[4])"
    assert lines[6] == "v7   bind(task=t2, to=t1)"
    assert lines[-3].startswith("v9   clone_node(node=fc1, task=t2")
    assert lines[-1] == "v11  freeze(nodes=relu1, task=t2, keep_owned=False)"
    rc, out, _ = run(capsys, "log", snaps.b, "--full")  # every argument, as Python values
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 11
    assert lines[0] == "v1   add_input(node='input', shape=(4,))"
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
    assert "owned: t1 +40, t2 +56" in out
    assert "tensors: 1 of 6 shared tensors moved" in out
    assert f"{snaps.moved}  l2=5  max_abs=4" in out


def test_diff_json(capsys, snaps):
    rc, out, _ = run(capsys, "diff", snaps.a, snaps.b, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["empty"] is False
    assert list(d["nodes_added"]) == ["fc1.t2"]
    assert d["ownership"]["fc1"] == {"a": ["t1", "t2"], "b": ["t1"]}
    assert d["params_added"] == {"t1": 40, "t2": 56}
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
    assert proc.stdout.splitlines()[-1] == "v8  add_head(task=t2, n_classes=3)"
    proc = subprocess.run([sys.executable, "-m", "jointnet.cli", "inspect", str(snaps.dir / "missing.jn")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("jointnet: error: ") and "Traceback" not in proc.stderr


# ---- condensed views: many tasks, capacity, summarised log, a task's render ---------------------


def many_tasks(n: int = 200):
    """`n` tasks bound to t1's trunk (a head each), every other task with its own clone of fc2,
    a mask per task on fc1's weight and an owner map there: the shape of HAT / PackNet / L2BG
    nets at scale."""
    net = backbones.build(backbones.mlp(4, [8, 8]), task="t1", n_classes=2)
    net = track_owners(net, node="fc1", param="weight", granularity="param")
    net = attach_mask(net, node="fc1", task="t1")
    for i in range(2, n + 1):
        t = f"t{i}"
        net = add_head(bind(add_task(net, task=t), task=t, to="t1"), task=t, n_classes=2)
        net = attach_mask(net, node="fc1", task=t)
        if i % 2 == 0:
            net = clone_node(net, node="fc2", task=t)
        net = freeze(net, nodes=f"head.t{i - 1}")
    return net


def test_inspect_is_bounded_at_200_tasks(capsys, tmp_path):
    net = many_tasks()
    path = snapshot.save(tmp_path / "many.jn", net, ParamStore(seed=0).realize(net))
    rc, out, err = run(capsys, "inspect", str(path))
    lines = out.splitlines()
    assert rc == 0 and err == ""
    assert len(lines) <= 40, out  # was one line per task, node and shared pair before
    assert max(len(line) for line in lines) <= 160
    assert "JointNet version" in lines[0] and "200 task(s), 305 node(s)" in lines[0]
    assert "tasks: 200 {t1..t200}" in out
    assert "  fc1        Linear(4->8)  owners={t1..t200}  params=40  masks of {t1..t200}: weight live x200" in out
    assert "head.t1 .. head.t200  Head(8->2)  200 nodes, one task each, {t1..t200}  params=18 each" in out
    assert "fc2.t2 .. fc2.t200  Linear(8->8)  100 nodes, one task each" in out
    assert "owned 200 tasks: min 18 (t1), median 54, max 90 (t2)" in out
    assert "  {t1..t200} (200 tasks): input, fc1, relu1, relu2" in out
    # --full: every task and node on a line of its own
    rc, out, _ = run(capsys, "inspect", str(path), "--full")
    lines = out.splitlines()
    assert rc == 0
    assert sum(1 for line in lines if line.startswith("  t") and "added_at=" in line) == 200
    assert sum(1 for line in lines if "owners={" in line) == 305
    # --json: everything
    rc, out, _ = run(capsys, "inspect", str(path), "--json")
    data = json.loads(out)
    assert sorted(n for g in data["usage"] for n in g["nodes"]) == sorted(net.nodes)
    assert len(data["capacity"]["tensors"][0]["used"]) == 200
    assert data["task_params"]["t2"] == {"owned": 90, "shared": 40, "reused": 0, "total": 130, "from": {}}


def _masked_net():
    """t1, t2, t3 on one trunk; an owner map and a mask per task on fc1's weight (8x4 = 32
    entries): t1 owns 16 and uses them, t2 owns 8 and uses 24 (its own and t1's), t3 owns none
    and uses t1's 16; 8 entries are free."""
    net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    for t in ("t2", "t3"):
        net = add_head(bind(add_task(net, task=t), task=t, to="t1"), task=t, n_classes=2)
    net = track_owners(net, node="fc1", param="weight", granularity="param")
    for t in ("t1", "t2", "t3"):
        net = attach_mask(net, node="fc1", task=t)
    store = ParamStore(seed=0).realize(net)
    node = net.node("fc1")
    owners = torch.zeros(32, dtype=torch.int32)
    owners[:16] = net.tasks["t1"].added_at
    owners[16:24] = net.tasks["t2"].added_at
    store.update(node.param("weight").owners.key, owners.reshape(8, 4))
    uses = {"t1": torch.arange(32) < 16, "t2": torch.arange(32) < 24, "t3": torch.arange(32) < 16}
    for t, u in uses.items():
        store.update(node.mask(t).key, u.float().reshape(8, 4))
    net = commit_mask(net, node="fc1", task="t1")  # a committed mask (packed bits) reads the same
    return net, store.realize(net)


def test_inspect_capacity_of_masks_and_owner_maps(capsys, tmp_path):
    net, store = _masked_net()
    path = snapshot.save(tmp_path / "masked.jn", net, store)
    rc, out, _ = run(capsys, "inspect", str(path))
    assert rc == 0
    assert ("  fc1.weight        32  masks+owners   free 25.0%  owned t1=50.0%, t2=25.0%  "
            "used t1=50.0%, t2=75.0%, t3=50.0%") in out
    assert "    t1: uses 50.0%, owns 50.0%" in out and "    t3: uses 50.0%, owns 0.0%" in out
    rc, out, _ = run(capsys, "inspect", str(path), "--json")
    cap = json.loads(out)["capacity"]
    assert cap["tensors"][0]["owned"] == {"t1": 0.5, "t2": 0.25}
    assert cap["tensors"][0]["used"] == {"t1": 0.5, "t2": 0.75, "t3": 0.5}
    assert cap["free"] == 0.25
    # parameters per task split by the owner map over the entries each task's mask uses
    tp = json.loads(out)["task_params"]
    assert tp["t2"]["owned"] == 8 + 18 and tp["t2"]["reused"] == 16 and tp["t2"]["from"] == {"t1": 16}
    assert tp["t3"]["owned"] == 18 and tp["t3"]["reused"] == 16
    # without tensors there is nothing to measure: said, not guessed
    bare = snapshot.save(tmp_path / "bare.jn", net, None, tensors=False)
    rc, out, _ = run(capsys, "inspect", str(bare))
    assert rc == 0 and out.splitlines()[-1] == "capacity: the snapshot holds no tensors"


def test_inspect_capacity_of_task_gates(capsys, tmp_path):
    """HAT-style gates: a unit is used by a task when sigmoid(s * e) > 0.5; a weight when its
    output unit's gate (and its input unit's gate, if any) is open."""
    from jointnet.graph import add_task_embedding

    layers = [{"kind": "input", "shape": [4]}, {"kind": "linear", "out_f": 4}, {"kind": "relu"}, {"kind": "Gate"},
              {"kind": "linear", "out_f": 2}, {"kind": "relu"}, {"kind": "Gate"}]
    net = backbones.build(layers, task="t1", n_classes=2)
    net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    gates = [n for n in net.nodes if net.node(n).kind == "Gate"]
    for t in ("t1", "t2"):
        for g in gates:
            net = add_task_embedding(net, node=g, task=t)
    store = ParamStore(seed=0).realize(net)
    opened = {("t1", 0): [1, 1, -1, -1], ("t2", 0): [-1, 1, 1, -1], ("t1", 1): [1, -1], ("t2", 1): [1, 1]}
    for (t, k), signs in opened.items():
        store.update(net.node(gates[k]).param("embedding", task=t).key, torch.tensor(signs, dtype=torch.float32))
    path = snapshot.save(tmp_path / "gated.jn", net, store)
    rc, out, _ = run(capsys, "inspect", str(path), "--json")
    cap = json.loads(out)["capacity"]
    units = {u["node"]: u for u in cap["units"]}
    assert units[gates[0]]["used"] == {"t1": 0.5, "t2": 0.5} and units[gates[0]]["free"] == 0.25
    assert units[gates[1]]["used"] == {"t1": 0.5, "t2": 1.0} and units[gates[1]]["free"] == 0.0
    by = {(e["node"], e["param"]): e for e in cap["tensors"]}
    first, second = [n for n in net.route("t1") if net.node(n).kind == "Linear"][:2]
    assert by[(first, "weight")]["used"] == {"t1": 0.5, "t2": 0.5}  # input not gated: rows only
    # second layer: rows (its gate) x columns (the first gate): t1 1/2 * 2/4, t2 1 * 2/4
    assert by[(second, "weight")]["used"] == {"t1": 0.25, "t2": 0.5}
    assert by[(second, "bias")]["used"] == {"t1": 0.5, "t2": 1.0}
    rc, out, _ = run(capsys, "inspect", str(path))
    assert rc == 0 and f"  {gates[0]}" in out and "gate units" in out


def test_log_summarises_long_annotations(capsys, tmp_path):
    from jointnet.graph import annotate
    from jointnet.graph.net import TensorRef

    net = two_tasks()
    provenance = {"bound_to": "t1", "conflict": 0.220656352924, "prob": 0.7346781850909027, "rank": 0,
                  "slots": [{"slot": f"fc{i}", "conflict": 0.1 * i} for i in range(6)]}
    net = annotate(net, node="fc1", key="l2bg.provenance", value=provenance)
    net = annotate(net, node="fc1", key="hat.cum_mask", value=TensorRef("fc1.hat.cum_mask@106829814279"))
    net = annotate(net, task="t2", key="note", value="x" * 300)
    path = snapshot.save(tmp_path / "annotated.jn", net, None, tensors=False)
    rc, out, _ = run(capsys, "log", str(path))
    lines = out.splitlines()
    assert rc == 0 and len(lines) == net.version and max(len(line) for line in lines) <= 160
    assert lines[-3] == "v9   annotate(key=l2bg.provenance, value={bound_to, conflict, prob, ... 5 keys}, node=fc1)"
    assert lines[-2] == "v10  annotate(key=hat.cum_mask, value=tensor(fc1.hat.cum_mask), node=fc1)"
    assert lines[-1] == "v11  annotate(key=note, value='" + "x" * 37 + "'..., task=t2)"
    rc, out, _ = run(capsys, "log", str(path), "--full")
    assert "'conflict': 0.220656352924" in out and "x" * 300 in out and "106829814279" in out


def test_render_task_shows_only_its_masks_and_channels(capsys, tmp_path):
    net, _ = _masked_net()
    net = widen(net, node="fc1", k=2, task="t3")
    path = snapshot.save(tmp_path / "masked.jn", net, None, tensors=False)
    rc, _, _ = run(capsys, "render", str(path), "-o", str(tmp_path / "all.dot"))
    text = (tmp_path / "all.dot").read_text()
    assert rc == 0 and "mask t1:weight (committed)" in text and "mask t2:weight (live)" in text
    assert "+2 ch (t3)" in text
    rc, _, _ = run(capsys, "render", str(path), "--task", "t2", "-o", str(tmp_path / "t2.dot"))
    text = (tmp_path / "t2.dot").read_text()
    assert rc == 0 and "mask t2:weight (live)" in text
    assert "mask t1" not in text and "mask t3" not in text and "+2 ch" not in text
    assert "{t1..t3}" in text  # users as a run of tasks
    # a mask per block (t3 masks its base and its grown channels): one line with the count
    net = attach_mask(net, node="fc1", task="t3", kind="grown", granularity="channel")
    path = snapshot.save(tmp_path / "blocks.jn", net, None, tensors=False)
    rc, _, _ = run(capsys, "render", str(path), "--task", "t3", "-o", str(tmp_path / "t3.dot"))
    text = (tmp_path / "t3.dot").read_text()
    assert rc == 0 and "mask t3:weight/grown (live) x2" in text and text.count("mask t3:weight/grown") == 1


def test_help_lists_report_and_export(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "report" in out and "export" in out
