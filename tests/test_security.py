"""Hostile input: names from arbitrary text, forged snapshots with valid checksums, the demo's
output directory, damaged run directories, bad rewrite calls (issue: untrusted snapshots must
never run code or hang, and jointnet must never destroy a user's files)."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import msgpack
import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jointnet.graph.names
from jointnet import backbones, snapshot
from jointnet.cli import main
from jointnet.execution.compile import compile_net
from jointnet.errors import CompileError, RewriteError, SnapshotError, SpecError
from jointnet.graph.layers import Linear
from jointnet.graph.net import JointNet, Node
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_input, add_node, add_task, bind, clone_node, set_lr_scale, widen
from jointnet.experiments.runner import RunSpec, resume, run

# Text that would set a flag if it ever ran as Python: after a newline it is a statement, inside a
# string literal it closes the quote first.
PAYLOADS = [
    "x\n    __import__('jointnet.graph.names').PWNED = True\n",
    "x')\n__import__('jointnet.graph.names').PWNED = True\n#",
    'x")\n__import__("jointnet.graph.names").PWNED = True\n#',
    "x; __import__('jointnet.graph.names').PWNED = True",
    "x # \u2028__import__('jointnet.graph.names').PWNED = True",
    "fc1\r__import__('jointnet.graph.names').PWNED = True",
]
valid_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:+@/-]{0,10}", fullmatch=True)
hostile_text = st.sampled_from(PAYLOADS) | st.text(max_size=40) | st.text(
    st.characters(codec="ascii"), min_size=1, max_size=12) | valid_names


def _not_pwned() -> None:
    assert not hasattr(jointnet.graph.names, "PWNED"), "text from a name ran as code"


def _mlp():
    return backbones.build(backbones.mlp(4, [6]), task="t1", n_classes=2)


# ---- names from arbitrary text --------------------------------------------------------------------


@given(node=hostile_text, task=hostile_text, clone=hostile_text)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_names_from_arbitrary_text_are_rejected_or_run_harmlessly(node, task, clone):
    """Every entry point either refuses the name with a typed error or builds a net that compiles
    and runs without executing anything from the name."""
    net = _mlp()
    try:
        net = add_task(net, task=task)
        net = bind(net, task=task, to="t1")
        net = add_node(net, node=node, spec={"kind": "relu"}, inputs=["relu1"], task=task)
        net = add_head(net, task=task, n_classes=2)
        net = clone_node(net, node="fc1", task=task, new_id=clone)
    except RewriteError as e:
        assert "must be a name" in str(e) or "already exists" in str(e), str(e)
        for bad in (node, task, clone):
            if not jointnet.graph.names.is_name(bad):
                break
        else:
            assert "already exists" in str(e)
        return
    for name in (node, task, clone):
        assert jointnet.graph.names.is_name(name)
    event("built and compiled")
    store = ParamStore(seed=0).realize(net)
    for tasks in (task, None):
        module = compile_net(net, store, tasks)
        module(torch.randn(3, 4))
    _not_pwned()
    # And through a snapshot and replay.
    net2, store2 = snapshot.loads(snapshot.dumps(net, store))
    compile_net(net2, store2, task)(torch.randn(2, 4))
    _not_pwned()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_entry_point_refuses_a_payload(payload):
    net = _mlp()
    for call in (
        lambda: add_input(net, node=payload, shape=[4]),
        lambda: add_task(net, task=payload),
        lambda: add_node(add_task(net, task="t2"), node=payload, spec={"kind": "relu"}, inputs=["input"], task="t2"),
        lambda: clone_node(net, node="fc1", task="t1", new_id=payload),
    ):
        with pytest.raises(RewriteError, match="must be a name"):
            call()
    with pytest.raises(SpecError):
        Node(payload, Linear(in_f=2, out_f=2))
    _not_pwned()


def test_compile_refuses_a_graph_built_around_the_validators():
    """A graph key that is not a valid name (the Node inside is valid) never reaches the source."""
    net = _mlp()
    g = nx.DiGraph(net.graph)
    bad = PAYLOADS[0]
    node = net.node("relu1")
    g = nx.relabel_nodes(g, {"relu1": bad})
    g.nodes[bad]["n"] = node
    forged = JointNet(nx.freeze(g), tasks=net.tasks, version=net.version)
    store = ParamStore(seed=0).realize(net)
    with pytest.raises(CompileError, match="not a valid name"):
        compile_net(forged, store, "t1")
    _not_pwned()


# ---- rewrite calls -----------------------------------------------------------------------------------


def test_positional_arguments_are_a_rewrite_error():
    net = add_task(_mlp(), task="t2")
    with pytest.raises(RewriteError, match=r"keyword-only.*bind\(net, task=\.\.\., to=\.\.\.\)"):
        bind(net, "t2", "t1")


@pytest.mark.parametrize("call, says", [
    (lambda n: widen(n, node="fc1", k=10**12, task="t1"), "k must be an int in [1, 16777216]"),
    (lambda n: add_head(add_task(n, task="t2"), task="t2", n_classes=10**9, after="input"),
     "n_classes must be an int in [1, 16777216]"),
    (lambda n: add_node(add_task(n, task="t2"), node="big", spec={"kind": "linear", "out_f": 10**9},
                        inputs=["input"], task="t2"), "out_f must be an int in [1, 16777216]"),
    (lambda n: add_input(n, node="in2", shape=[4096] * 9), "at most 8 are allowed"),
    (lambda n: add_input(n, node="in2", shape=["8"]), "must hold ints"),
    (lambda n: add_node(add_task(n, task="t2"), node="big", spec={"kind": "linear", "out_f": 1 << 20},
                        inputs=["fc1"], task="t2"), "route of task"),
    (lambda n: set_lr_scale(n, nodes="fc1", scale=float("nan")), "finite number"),
])
def test_sizes_and_numbers_are_bounded(call, says):
    with pytest.raises(RewriteError) as e:
        call(_mlp())
    assert says in str(e.value)


def test_a_parameter_too_large_to_allocate_is_refused_before_allocation():
    net = add_task(backbones.build(backbones.mlp(1 << 16, [4]), task="t1", n_classes=2), task="t2")
    with pytest.raises(RewriteError, match="elements; at most"):
        add_node(net, node="huge", spec={"kind": "linear", "out_f": 1 << 16}, inputs=["input"], task="t2")


# ---- forged snapshots (valid checksum) -------------------------------------------------------------


def _snapshot_bytes() -> bytes:
    net = _mlp()
    store = ParamStore(seed=0).realize(net)
    return snapshot.dumps(net, store)


def forge(edit) -> bytes:
    """The test snapshot with its decoded map edited by `edit(obj)`, re-encoded with a valid CRC."""
    obj = msgpack.unpackb(_snapshot_bytes())
    edit(obj)
    body = b"\x87" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in list(obj.items())[:6])
    return body + msgpack.packb("crc32") + b"\xce" + zlib.crc32(body).to_bytes(4, "big")


def _node(obj, node_id):
    return next(n for n in obj["net"]["nodes"] if n["id"] == node_id)


def _tensor(obj, prefix):
    i = next(i for i, t in enumerate(obj["tensors"]) if t["key"].startswith(prefix))
    return i, obj["tensors"][i]


def _rename_node(obj, old, new):
    _node(obj, old)["id"] = new
    for e in obj["net"]["edges"]:
        e["src"] = new if e["src"] == old else e["src"]
        e["dst"] = new if e["dst"] == old else e["dst"]


def _bomb_tensor(obj):
    _, t = _tensor(obj, "fc1.weight")
    t["shape"] = [2**64 - 1] * 120_000


def _bomb_param(obj):
    _node(obj, "fc1")["params"][0]["shape"] = [2**64 - 1] * 120_000


def _transposed(obj):
    _, t = _tensor(obj, "fc1.weight")
    t["shape"] = t["shape"][::-1]


def _int_bias(obj):
    _, t = _tensor(obj, "fc1.bias")
    t.update(dtype="int32", requires_grad=False, parameter=False)


def _float_weight(dtype: str, size: int):
    def edit(obj):
        i, t = _tensor(obj, "fc1.weight")
        t.update(dtype=dtype, nbytes=math.prod(t["shape"]) * size)
        obj["data"][i] = bytes(t["nbytes"])
    return edit


def _too_few(obj):
    i, t = _tensor(obj, "fc1.weight")
    t["shape"] = [t["shape"][0], t["shape"][1] - 1]
    t["nbytes"] = math.prod(t["shape"]) * 4
    obj["data"][i] = obj["data"][i][: t["nbytes"]]


def _unreferenced(obj):
    i, t = _tensor(obj, "fc1.bias")
    obj["tensors"].append(dict(t, key="zz.stray"))
    obj["data"].append(obj["data"][i])


def _oversized(obj):
    _, t = _tensor(obj, "fc1.weight")
    t["shape"] = [1 << 20, 1 << 10]
    t["nbytes"] = (1 << 30) * 4


def _policy(value):
    def edit(obj):
        obj["net"]["policy"].append({"task": None, "node": "fc1", "frozen": False, "lr_scale": value,
                                     "keep_owned": False})
    return edit


def _init_nan(obj):
    _node(obj, "fc1")["params"][0]["init"]["value"] = float("nan")


def _input_shape(obj):
    _node(obj, "input")["spec"]["shape"] = ["8"]


def _lineage(obj):
    obj["net"]["lineage"] = "x\nimport os"


FORGERIES = {
    "code in a node id": (lambda o: _rename_node(o, "relu1", PAYLOADS[0]), "must be a name"),
    "code in a task name": (lambda o: o["net"]["tasks"][0].__setitem__("name", PAYLOADS[1]), "must be a name"),
    "code in a lineage": (_lineage, "must be a key"),
    "shape bomb in a tensor index": (_bomb_tensor, "at most 8 are allowed"),
    "shape bomb in a parameter": (_bomb_param, "at most 8 are allowed"),
    "weight stored transposed": (_transposed, "the net says [6, 4]"),
    "bias stored as int32": (_int_bias, "parameters and live masks are float32"),
    "weight stored as float64": (_float_weight("float64", 8), "has dtype float64; parameters and live masks are float32"),
    "weight stored as float16": (_float_weight("float16", 2), "has dtype float16; parameters and live masks are float32"),
    "too few elements": (_too_few, "the net says [6, 4]"),
    "a tensor no one references": (_unreferenced, "'zz.stray' is not referenced by the net"),
    "tensor bytes beyond the file": (_oversized, "more than the file's"),
    "lr_scale NaN": (_policy(float("nan")), "lr_scale must be a finite number"),
    "lr_scale inf": (_policy(float("inf")), "lr_scale must be a finite number"),
    "lr_scale -1": (_policy(-1.0), "lr_scale must be a finite number"),
    "init.value NaN": (_init_nan, "init.value must be a finite number"),
    "Input shape of strings": (_input_shape, "must hold ints"),
}


@pytest.fixture(scope="module")
def forged(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("forged")
    paths = {}
    for i, (name, (edit, _)) in enumerate(FORGERIES.items()):
        paths[name] = folder / f"f{i:02d}.jn"
        paths[name].write_bytes(forge(edit))
    return paths


def test_an_unedited_forgery_loads():
    net, store = snapshot.loads(forge(lambda o: None))
    assert list(net.tasks) == ["t1"] and store is not None


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_snapshot_is_a_snapshot_error_naming_the_field(forged, name):
    with pytest.raises(SnapshotError) as e:
        snapshot.load(forged[name])
    assert FORGERIES[name][1] in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 700
    _not_pwned()


@pytest.mark.parametrize("name", list(FORGERIES))
def test_inspect_on_a_forged_snapshot_is_one_line_and_exit_2(forged, name, capsys):
    assert main(["inspect", str(forged[name])]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("jointnet: error: SnapshotError: ")
    _not_pwned()


def _limits():  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))


def test_inspect_rejects_every_forgery_under_cpu_and_memory_limits(forged):
    """The whole batch in one process limited by the kernel to 60 s of CPU and 3 GiB of data: the
    shape bombs included, each forgery ends in exit 2 (before the fix one took 136 s)."""
    script = (
        "import sys\nfrom jointnet.cli import main\n"
        "print([main(['inspect', p]) for p in sys.argv[1:]])\n"
    )
    paths = [str(p) for p in forged.values()]
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True,
                          preexec_fn=_limits, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str([2] * len(paths))
    assert len(proc.stderr.strip().splitlines()) == len(paths)


# ---- the demo never deletes what it did not write ---------------------------------------------------


def test_demo_refuses_a_non_empty_directory_it_did_not_write(tmp_path, capsys):
    (tmp_path / "packnet").mkdir()
    mine = tmp_path / "packnet" / "notes.txt"
    mine.write_text("my notes")
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "40"]) == 2
    assert "not the output of an earlier `jointnet demo`" in capsys.readouterr().err
    assert mine.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "packnet"]


@pytest.mark.parametrize("argv, says", [
    (["--epochs", "0"], "--epochs must be an int >= 1"),
    (["--epochs", "-1"], "--epochs must be an int >= 1"),
    (["--n-train", "0"], "--n-train must be an int >= 20"),
    (["--seed", "-3"], "--seed must be an int >= 0"),
])
def test_demo_options_are_validated_before_anything_is_written(tmp_path, capsys, argv, says):
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), *argv]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_demo_rerun_keeps_a_users_file_in_its_output_tree(tmp_path, capsys):
    """A second demo into the same directory replaces the demo's own files and leaves a file the
    user put in `DIR/packnet` (and one at the top) untouched."""
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "40"]
    assert main(argv) == 0
    mine = tmp_path / "packnet" / "mine.txt"
    mine.write_text("keep me")
    top = tmp_path / "README-mine"
    top.write_text("keep me too")
    first = json.loads((tmp_path / ".jointnet-demo.json").read_text())["files"]
    assert main(argv) == 0
    capsys.readouterr()
    assert mine.read_text() == "keep me" and top.read_text() == "keep me too"
    again = json.loads((tmp_path / ".jointnet-demo.json").read_text())["files"]
    assert [f["path"] for f in again] == [f["path"] for f in first]


def test_demo_keeps_a_file_of_its_own_name_that_changed_and_says_so(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "40"]
    assert main(argv) == 0
    changed = tmp_path / "finetune" / "results.csv"
    changed.write_text("edited by the user")
    assert main(argv) == 2
    assert "was not written by the last demo" in capsys.readouterr().err
    assert changed.read_text() == "edited by the user"


@pytest.mark.parametrize("entry", [
    {"path": "../outside.txt", "size": 1, "mtime_ns": 1},
    {"path": "/etc/passwd", "size": 1, "mtime_ns": 1},
    {"path": "elsewhere/x", "size": 1, "mtime_ns": 1},
    "packnet/run.json",
])
def test_a_forged_demo_manifest_deletes_nothing(tmp_path, capsys, entry):
    victim = tmp_path / "outside.txt"
    victim.write_text("x")
    out = tmp_path / "demo"
    out.mkdir()
    (out / ".jointnet-demo.json").write_text(json.dumps({"format": 1, "files": [entry]}))
    assert main(["demo", "--out", str(out), "--epochs", "1", "--n-train", "40"]) == 2
    assert "not a file a demo writes" in capsys.readouterr().err
    assert victim.read_text() == "x"


# ---- run directories ---------------------------------------------------------------------------------

SYN = {"n_tasks": 2, "n_train_per_class": 30, "n_test_per_class": 10}


def _finished_run(tmp_path) -> Path:
    out = tmp_path / "r"
    run(RunSpec("finetune", "synthetic", seed=1, stream_options=SYN, config={"epochs": 1}), out, echo=lambda m: None)
    return out


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_text('{"done": '), "not readable JSON"),
    (lambda p: p.write_text("[]"), "must be a map with the keys"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "done": 7})), "done must be an int in [0, 2]"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "done": 1})), "must be a list of 1 entries"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                        "snapshots": ["../../etc/passwd", "snapshots/task_01_t2.jn"]})),
     "snapshot entry 0 must be 'snapshots/task_00_t1.jn'"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "seed": 9})), "is not the run's 1"),
])
def test_resume_with_a_damaged_results_json_is_one_clear_error(tmp_path, capsys, damage, says):
    out = _finished_run(tmp_path)
    damage(out / "results.json")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.json is damaged" in err and says in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_cleans_temporary_files_a_kill_left(tmp_path):
    out = _finished_run(tmp_path)
    stale = [out / ".results.json.0123456789ab.tmp", out / "snapshots" / ".task_01_t2.jn.a1b2c3d4e5f6.tmp"]
    for p in stale:
        p.write_text("half a file")
    keep = out / ".results.json.not-ours.tmp"
    keep.write_text("not ours")
    resume(out, echo=lambda m: None)
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_every_run_file_has_the_same_mode(tmp_path):
    old = os.umask(0o022)
    try:
        out = _finished_run(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o644}, modes


def test_resume_with_a_damaged_run_json_is_one_clear_error(tmp_path, capsys):
    out = _finished_run(tmp_path)
    spec = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**spec, "seed": "1; rm -rf /"}))
    assert main(["run", "--resume", str(out)]) == 2
    assert "seed must be int" in capsys.readouterr().err
