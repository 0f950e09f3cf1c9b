"""Export of one task's network (`jointnet.execution.export`, ``jointnet export``): the exported
program gives the compiled module's outputs, on nets with BatchNorm, dropout, task gates with a
recorded gate scale, and masks; bad input is one line and writes nothing.

The ``.pt2`` (torch.export) tests always run. The ONNX round trip needs the optional packages
of ``jointnet[export]`` (onnx, onnxscript) and onnxruntime to check it: without them it skips,
saying so; the one-line error naming the extra is tested either way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from jointnet import backbones, snapshot
from jointnet.cli import main
from jointnet.errors import JointNetError
from jointnet.execution.compile import compile_net
from jointnet.execution.export import ATOL, export_task, task_module
from jointnet.execution.program import task_context
from jointnet.execution.store import ParamStore
from jointnet.graph import (
    add_head, add_task, add_task_embedding, attach_mask, bind, clone_node, commit_mask, per_task_bn,
    set_context,
)

torch.set_num_threads(1)


def mlp_two_tasks():
    net = backbones.build(backbones.mlp(6, [8, 8], dropout=0.25), task="t1", n_classes=3)
    net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    return clone_node(net, node="fc2", task="t2")


def conv_bn_masks():
    """Conv + BatchNorm (per-task for t2), a committed mask for t1 and a live sigmoid mask for t2."""
    layers = [{"kind": "input", "shape": (1, 8, 8)}, {"kind": "conv", "out_ch": 4, "padding": 1},
              {"kind": "BatchNorm"}, {"kind": "relu"}, {"kind": "maxpool", "kernel": 2}, {"kind": "flatten"},
              {"kind": "linear", "out_f": 8}, {"kind": "relu"}]
    net = backbones.build(layers, task="t1", n_classes=2)
    net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    bn = next(n for n in net.nodes if net.node(n).kind == "BatchNorm")
    conv = next(n for n in net.nodes if net.node(n).kind == "Conv2d")
    net = per_task_bn(net, node=bn, task="t2")
    net = attach_mask(net, node=conv, task="t1", granularity="kernel")
    net = attach_mask(net, node=conv, task="t2", transform="sigmoid")
    store = ParamStore(seed=1).realize(net)
    m = net.node(conv).mask("t1")
    store.update(m.key, (torch.arange(m.shape[0] * m.shape[1]) % 3 != 0).float().reshape(m.shape))
    net = commit_mask(net, node=conv, task="t1")
    m2 = net.node(conv).mask("t2")
    store.update(m2.key, torch.randn(m2.shape, generator=torch.Generator().manual_seed(3)))
    # running statistics that are not the defaults, so eval-mode BatchNorm is really exercised
    for p in net.node(bn).params:
        if p.buffer and "var" in p.name:
            store.update(p.key, torch.rand(p.shape) + 0.5)
        elif p.buffer and "mean" in p.name:
            store.update(p.key, torch.randn(p.shape))
    return net, store.realize(net)


def gated():
    """HAT-style gates with per-task embeddings; t2 records a gate scale of its own."""
    layers = [{"kind": "input", "shape": (5,)}, {"kind": "linear", "out_f": 6}, {"kind": "relu"}, {"kind": "Gate"}]
    net = backbones.build(layers, task="t1", n_classes=2)
    net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=4)
    gate = next(n for n in net.nodes if net.node(n).kind == "Gate")
    for t in ("t1", "t2"):
        net = add_task_embedding(net, node=gate, task=t)
    net = set_context(net, task="t2", values={"gate_scale": 3.0})
    return net, ParamStore(seed=2).realize(net)


def _cases():
    net = mlp_two_tasks()
    yield "mlp", net, ParamStore(seed=0).realize(net)
    yield ("conv", *conv_bn_masks())
    yield ("gated", *gated())


CASES = {name: (net, store) for name, net, store in _cases()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("task", ["t1", "t2"])
def test_pt2_gives_the_compiled_modules_outputs(tmp_path, case, task):
    net, store = CASES[case]
    r = export_task(net, store, task, tmp_path / "m.pt2")
    assert r.checked and r.max_abs_diff <= ATOL and r.format == "pt2" and r.path.is_file()
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    compiled = compile_net(net, store, task).eval()
    ctx = task_context(net, task)
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.rand((batch, *r.input_shape), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = compiled(x, ctx)
            got = program(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_export_uses_the_tasks_inference_context():
    """t2 records gate scale 3: its exported module must not run at the default 400."""
    net, store = CASES["gated"]
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    compiled = compile_net(net, store, "t2").eval()
    with torch.no_grad():
        at_3 = compiled(x, task_context(net, "t2"))
        at_default = compiled(x, task_context(net, "t2", gate_scale=400.0))
        got = task_module(net, store, "t2")(x)
    assert not torch.equal(at_3, at_default)
    torch.testing.assert_close(got, at_3, atol=0, rtol=0)


def test_export_leaves_the_cached_module_alone():
    net, store = CASES["mlp"]
    cached = compile_net(net, store, "t1").train()
    task_module(net, store, "t1")
    assert compile_net(net, store, "t1") is cached and cached.training


def test_export_errors(tmp_path):
    net, store = CASES["mlp"]
    with pytest.raises(JointNetError, match=r"export\(task='t9'\): no such task; tasks are t1, t2"):
        export_task(net, store, "t9", tmp_path / "m.pt2")
    with pytest.raises(JointNetError, match=r"must end in \.pt2 or \.onnx"):
        export_task(net, store, "t1", tmp_path / "m.pt")
    (tmp_path / "d.pt2").mkdir()
    with pytest.raises(JointNetError, match="is a directory"):
        export_task(net, store, "t1", tmp_path / "d.pt2")
    with pytest.raises(JointNetError, match="does not exist"):
        export_task(net, store, "t1", tmp_path / "missing" / "m.pt2")
    with pytest.raises(JointNetError, match="batch must be an int >= 2"):
        export_task(net, store, "t1", tmp_path / "m.pt2", batch=1)
    open_task = add_task(net, task="t3")
    with pytest.raises(JointNetError, match="no head yet"):
        export_task(open_task, store, "t3", tmp_path / "m.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt2"]  # nothing written, no temporary left


def test_onnx_without_the_extra_is_one_line(tmp_path, monkeypatch):
    net, store = CASES["mlp"]
    monkeypatch.setitem(sys.modules, "onnx", None)  # import fails
    with pytest.raises(JointNetError, match=r"needs the optional packages onnx and onnxscript .*jointnet\[export\]"):
        export_task(net, store, "t1", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.mark.skipif(not _ONNX, reason="optional extra jointnet[export] (onnx, onnxscript) and onnxruntime not installed")
@pytest.mark.parametrize("case", ["mlp", "conv"])
def test_onnx_gives_the_compiled_modules_outputs(tmp_path, case):
    import onnxruntime

    net, store = CASES[case]
    r = export_task(net, store, "t2", tmp_path / "m.onnx")
    assert r.checked and r.format == "onnx"
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand((3, *r.input_shape), generator=torch.Generator().manual_seed(7))
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = task_module(net, store, "t2")(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    net, store = CASES["conv"]
    d = tmp_path_factory.mktemp("export")
    return snapshot.save(d / "conv.jn", net, store), snapshot.save(d / "bare.jn", net, None, tensors=False)


def test_cli_export(capsys, tmp_path, snap):
    out = tmp_path / "t2.pt2"
    assert main(["export", str(snap[0]), "--task", "t2", "-o", str(out), "--batch", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"wrote {out} (pt2, task t2, input [batch]x1x8x8); outputs equal to the compiled")
    net, store = CASES["conv"]
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), task_module(net, store, "t2")(x),
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize("argv, needle", [
    (["--task", "t9", "-o", "{d}/x.pt2"], "no such task"),
    (["--task", "t1", "-o", "{d}/x.txt"], "must end in .pt2 or .onnx"),
    (["--task", "t1", "-o", "{d}"], "is a directory"),
])
def test_cli_export_errors(capsys, tmp_path, snap, argv, needle):
    rc = main(["export", str(snap[0])] + [a.format(d=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_export_needs_tensors(capsys, tmp_path, snap):
    rc = main(["export", str(snap[1]), "--task", "t1", "-o", str(tmp_path / "x.pt2")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "holds no tensors" in err and err.count("\n") == 1
    assert not Path(tmp_path / "x.pt2").exists()


def test_compiled_module_refuses_pickling_but_deep_copies():
    import copy
    import io

    from jointnet.errors import CompileError

    net = mlp_two_tasks()
    store = ParamStore(seed=0).realize(net)
    module = compile_net(net, store, "t1").eval()
    with pytest.raises(CompileError, match="jointnet export"):
        torch.save(module, io.BytesIO())
    x = torch.randn(4, 6)
    assert torch.equal(copy.deepcopy(module)(x), module(x))
    torch.save(module.state_dict(), io.BytesIO())  # the tensors alone still save
