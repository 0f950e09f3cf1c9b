"""Snapshots: exact round trips, corruption always raises `SnapshotError`, writes are atomic."""

from __future__ import annotations

import base64
import io
import os
import threading
import warnings
import zlib
from pathlib import Path

import msgpack
import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from jointnet import backbones, snapshot
from jointnet.execution.compile import compile_net
from jointnet.errors import SnapshotError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.layers import BatchNorm, Conv2d, Input, Linear
from jointnet.graph.net import Init, JointNet, Record, TensorRef
from jointnet.execution.store import ParamStore
from jointnet.graph.draft import replay
from jointnet.graph import (
    add_head,
    add_task,
    annotate,
    attach_mask,
    bind,
    clone_node,
    commit_mask,
    freeze,
    own_param,
    set_lr_scale,
    widen,
)

FUZZ = dict(derandomize=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- nets ---------------------------------------------------------------------------------------

# backbone -> (layers, input shape, node to clone, node to widen and mask, BatchNorm node or None)
CASES = {
    "mlp": (backbones.mlp(12, [10, 8]), (12,), "fc1", "fc2", None),
    "small_conv": (backbones.small_conv((1, 8, 8), widths=(3, 4), hidden=6), (1, 8, 8), "conv1", "conv2", None),
    "vgg_bn": (backbones.vgg((3, 8, 8), cfg=(4, "M", 5), hidden=6), (3, 8, 8), "conv1", "conv2", "bn1"),
    "resnet_tiny": (backbones.resnet_tiny((3, 6, 6), width=4, blocks=1), (3, 6, 6), "stem", "b1_conv1", "stem_bn"),
}


def rewritten(name: str) -> tuple[JointNet, ParamStore]:
    """A net of backbone `name` after every kind of rewrite, and its realized store."""
    layers, _, clone, grow, bn = CASES[name]
    net = backbones.build(layers, task="t1", n_classes=3)
    net = add_task(net, task="t2")
    net = bind(net, task="t2", to="t1")
    net = add_head(net, task="t2", n_classes=4)
    net = clone_node(net, node=clone, task="t2")
    net = attach_mask(net, node=grow, task="t2", transform="sigmoid")
    store = ParamStore(seed=7).realize(net)  # the live mask must exist before it is committed
    net = commit_mask(net, node=grow, task="t2", threshold=0.25)
    net = widen(net, node=grow, k=2, task="t2")
    if bn is not None:
        net = own_param(net, node=bn, task="t2")
    net = freeze(net, nodes=[clone], task="t1")
    net = set_lr_scale(net, nodes=grow, scale=0.25, task="t2")
    net = set_lr_scale(net, nodes=[grow], scale=0.5)
    net = add_task(net, task="t3")  # added after the widen: sees t2's channels
    net = bind(net, task="t3", to="t2")
    net = add_head(net, task="t3", share_with="t1")
    net = annotate(net, key="importance", node=grow,
                   value={"ref": TensorRef("imp." + grow), "stats": [1, 2.5, ("a", None, True)],
                          "nested": {"deep": [[1], {"x": -3}], "empty": {}}})
    net = annotate(net, key="lambda", value=0.5, task="t2")
    net = annotate(net, key="seen", value=["t1", "t2"], node=grow, param="weight")
    net = annotate(net, key="stream", value={"name": "split", "seed": 3})
    store.realize(net)
    store.put("imp." + grow, torch.rand(5))
    with torch.no_grad():  # move every tensor off its initial value, statistics included
        g = torch.Generator().manual_seed(1)
        for t in store.tensors.values():
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=g) * 0.1)
    return net, store


NETS = {name: rewritten(name) for name in CASES}


def _probe(name: str) -> torch.Tensor:
    return torch.randn((3, *CASES[name][1]), generator=torch.Generator().manual_seed(0))


def same(a, b) -> bool:
    """Equal values of exactly the same types, all the way down (tuple stays tuple, ...)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, FrozenDict)):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_store(store: ParamStore, store2: ParamStore, keys) -> None:
    for k in keys:
        a, b = store[k], store2[k]
        assert type(a) is type(b), k
        assert a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad, k
        ra = a.detach().contiguous().reshape(-1).view(torch.uint8)
        rb = b.detach().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(ra, rb), k
        assert a.data_ptr() != b.data_ptr() or a.numel() == 0


# ---- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_gives_equal_net_store_and_outputs(name, tmp_path):
    net, store = NETS[name]
    path = snapshot.save(tmp_path / "net.jns", net, store)
    assert path == tmp_path / "net.jns" and os.listdir(tmp_path) == ["net.jns"]
    net2, store2 = snapshot.load(path)
    assert net2 == net
    assert (net2.version, net2.lineage, len(net2.log)) == (net.version, net.lineage, len(net.log))
    assert all(same(r2.kwargs, r.kwargs) and r2.name == r.name for r, r2 in zip(net.log, net2.log))
    assert same(net2.annotations, net.annotations)
    assert list(net2.tasks) == list(net.tasks) and net2.policy == net.policy
    assert [(u, v, d) for u, v, d in net2.edges()] == [(u, v, d) for u, v, d in net.edges()]
    assert nx.is_frozen(net2.graph)
    keys = store.keys_of(net)
    assert set(store2) == keys and store2.seed == store.seed
    assert_same_store(store, store2, keys)
    x = _probe(name)
    for task in net.tasks:
        out = compile_net(net, store, task, cache=False).eval()(x)
        out2 = compile_net(net2, store2, task, cache=False).eval()(x)
        assert torch.equal(out, out2), task


@pytest.mark.parametrize("name", list(CASES))
def test_structure_only_snapshot_has_no_store(name, tmp_path):
    net, store = NETS[name]
    for kwargs in ({"store": store, "tensors": False}, {}):
        net2, store2 = snapshot.load(snapshot.save(tmp_path / "s.jns", net, **kwargs))
        assert net2 == net and store2 is None
    # A realized copy of the structure computes what the original computes from the same store.
    x = _probe(name)
    assert torch.equal(compile_net(net2, store, "t2", cache=False).eval()(x),
                       compile_net(net, store, "t2", cache=False).eval()(x))


def test_loaded_log_replays_to_the_same_net():
    net, store = NETS["vgg_bn"]
    net2, _ = snapshot.loads(snapshot.dumps(net, store))
    # The recorded kwargs come back exactly, so replaying them rebuilds the net (and lineage).
    assert replay(net2.log) == net


def test_snapshots_are_byte_stable_and_one_msgpack_object():
    net, store = NETS["resnet_tiny"]
    data = snapshot.dumps(net, store)
    net2, store2 = snapshot.loads(data)
    assert snapshot.dumps(net2, store2) == data
    obj = msgpack.unpackb(data)  # the whole file is a single msgpack map
    assert list(obj) == ["format", "format_version", "net", "store", "tensors", "data", "crc32"]
    assert obj["format"] == "jointnet-snapshot" and obj["format_version"] == snapshot.FORMAT_VERSION
    assert obj["crc32"] == zlib.crc32(data[: -len(msgpack.packb("crc32")) - 5])
    assert [len(b) for b in obj["data"]] == [e["nbytes"] for e in obj["tensors"]]


def test_store_keeps_parameters_buffers_and_every_dtype(tmp_path):
    net = backbones.build(backbones.vgg((1, 4, 4), cfg=(2,), hidden=3), task="t1", n_classes=2)
    store = ParamStore(seed=3).realize(net)
    refs = {}
    g = torch.Generator().manual_seed(0)
    for i, dtype in enumerate(snapshot._DTYPES.values()):
        raw = torch.randint(0, 256, (3, 5 * dtype.itemsize), dtype=torch.uint8, generator=g)
        t = raw.view(dtype)  # arbitrary bit patterns, NaN payloads included
        key = f"x{i}"
        store.load({key: t.t() if t.dim() == 2 else t})  # non-contiguous on purpose
        refs[key] = TensorRef(key)
    store.load({"scalar": torch.tensor(3.5, dtype=torch.float64)})
    store.load({"empty": torch.zeros((0, 4), dtype=torch.int16)})
    store.load({"frozen_param": nn.Parameter(torch.ones(2), requires_grad=False)})
    store.load({"unreferenced": torch.ones(1)})
    for k in ("scalar", "empty", "frozen_param"):
        refs[k] = TensorRef(k)
    net = annotate(net, key="refs", value=refs)
    net2, store2 = snapshot.load(snapshot.save(tmp_path / "d.jns", net, store))
    assert net2 == net
    assert "unreferenced" not in store2
    assert_same_store(store, store2, store.keys_of(net))
    assert isinstance(store2["frozen_param"], nn.Parameter) and not store2["frozen_param"].requires_grad
    for key in store.keys_of(net):
        assert isinstance(store2[key], nn.Parameter) == isinstance(store[key], nn.Parameter), key


def test_large_tensors_use_the_parallel_checksum():
    net = backbones.build(backbones.mlp(4, [3]), task="t1", n_classes=2)
    store = ParamStore(seed=0).realize(net)
    store.put("big", torch.randn(3_000_000))  # 12 MB: above the parallel threshold
    net = annotate(net, key="big", value=TensorRef("big"))
    threads = threading.active_count()
    data = snapshot.dumps(net, store)
    net2, store2 = snapshot.loads(data)
    assert net2 == net and torch.equal(store2["big"], store["big"])
    assert threading.active_count() == threads  # the checksum helpers are gone
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x10  # inside the big tensor's bytes
    with pytest.raises(SnapshotError, match="checksum"):
        snapshot.loads(bytes(corrupt))


@given(st.binary(max_size=3000), st.binary(max_size=3000))
@settings(max_examples=60, **FUZZ)
def test_crc_combine_matches_zlib(a, b):
    assert snapshot._crc_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


# ---- annotation and log values ------------------------------------------------------------------

SPECS = [Linear(in_f=3, out_f=2), Conv2d(in_ch=1, out_ch=2, kernel=3, padding=1), Input(shape=(1, 4, 4)),
         BatchNorm(num_features=4, eps=1e-3)]
INITS = [Init.fresh("kaiming", 9), Init.copy("a.weight@x"), Init("threshold", scheme="sigmoid", src="m", value=0.25)]
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=8)
)
keys = st.sampled_from(["a", "b", "__spec__", "__list__", "__x__", "kind"]) | st.text(max_size=6)
leaves = (
    scalars | st.builds(TensorRef, st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:+@/-]{0,7}", fullmatch=True)) | st.sampled_from(INITS) | st.sampled_from(SPECS)
    | st.frozensets(st.integers(-5, 5), max_size=3)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple)
        | st.lists(inner, max_size=3)
        | st.dictionaries(keys, inner, max_size=3).map(FrozenDict)
        | st.dictionaries(keys | st.integers(), inner, max_size=3)
        | st.dictionaries(st.integers(), inner, max_size=2).map(FrozenDict)
    ),
    max_leaves=12,
)


@given(values)
@settings(max_examples=150, **FUZZ)
def test_annotation_and_log_values_round_trip_exactly(value):
    base, _ = NETS["mlp"]
    rec = Record("annotate", FrozenDict(key="k", value=value, node=None, param=None, task=None))
    net = JointNet(base.graph, tasks=base.tasks, policy=base.policy,
                   annotations=FrozenDict(v=value, w=(value, [value])), version=base.version + 1,
                   log=base.log.append(rec), lineage="x")
    net2, _ = snapshot.loads(snapshot.dumps(net))
    assert same(net2.annotations, net.annotations)
    assert same(net2.log[-1].kwargs, rec.kwargs)


def test_values_a_snapshot_cannot_hold_raise_snapshot_error(tmp_path):
    base, _ = NETS["mlp"]
    net = JointNet(base.graph, tasks=base.tasks, annotations=FrozenDict(bad=object()),
                   version=base.version, log=base.log, lineage=base.lineage)
    with pytest.raises(SnapshotError, match="cannot store a value of type object"):
        snapshot.save(tmp_path / "x.jns", net)
    assert os.listdir(tmp_path) == []
    with pytest.raises(SnapshotError):
        snapshot.dumps("not a net")


# ---- corruption ---------------------------------------------------------------------------------


def _small() -> bytes:
    net = backbones.build(backbones.mlp(3, [2]), task="t1", n_classes=2)
    net = annotate(net, key="r", value={"ref": TensorRef("imp"), "xs": [1, 2]})
    store = ParamStore(seed=1).realize(net)
    store.put("imp", torch.arange(3.0))
    return snapshot.dumps(net, store)


SMALL = _small()
TAIL = len(msgpack.packb("crc32")) + 5


def _rejects(data: bytes) -> SnapshotError:
    try:
        snapshot.loads(data)
    except SnapshotError as e:
        assert "<bytes>" in str(e)
        return e
    raise AssertionError("a corrupted snapshot loaded without error")


def reframe(data: bytes, edit) -> bytes:
    """`data` with its decoded map edited by `edit(obj)`, re-encoded with a valid checksum."""
    obj = msgpack.unpackb(data)
    edit(obj)
    body = b"\x87" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in list(obj.items())[:6])
    return body + msgpack.packb("crc32") + b"\xce" + zlib.crc32(body).to_bytes(4, "big")


def test_small_snapshot_loads_and_reframing_keeps_it_valid():
    net, store = snapshot.loads(SMALL)
    assert store is not None and "imp" in store
    assert snapshot.loads(reframe(SMALL, lambda o: None))[0] == net


def test_every_truncation_raises_snapshot_error():
    for n in range(len(SMALL)):
        _rejects(SMALL[:n])


def test_every_byte_flip_raises():
    for i in range(len(SMALL)):
        data = bytearray(SMALL)
        data[i] ^= 0xA5
        _rejects(bytes(data))


@given(st.integers(0, len(SMALL) - 1))
@settings(max_examples=120, **FUZZ)
def test_truncated_snapshot_raises(n):
    _rejects(SMALL[:n])


@given(st.integers(0, len(SMALL) * 8 - 1))
@settings(max_examples=200, **FUZZ)
def test_bit_flip_raises(bit):
    data = bytearray(SMALL)
    data[bit // 8] ^= 1 << (bit % 8)
    _rejects(bytes(data))


@given(st.data())
@settings(max_examples=150, **FUZZ)
def test_random_byte_damage_raises(data):
    buf = bytearray(SMALL)
    kind = data.draw(st.sampled_from(["overwrite", "insert", "delete", "append", "swap"]))
    pos = data.draw(st.integers(0, len(buf) - 1))
    if kind == "overwrite":
        n = data.draw(st.integers(1, 16))
        for i in range(pos, min(pos + n, len(buf))):
            buf[i] ^= data.draw(st.integers(1, 255))
    elif kind == "insert":
        buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        del buf[pos : pos + data.draw(st.integers(1, 16))]
    elif kind == "append":
        buf += data.draw(st.binary(min_size=1, max_size=16))
    else:
        other = data.draw(st.integers(0, len(buf) - 1).filter(lambda j: buf[j] != buf[pos]))
        buf[pos], buf[other] = buf[other], buf[pos]
    _rejects(bytes(buf))


@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
@settings(max_examples=60, **FUZZ)
def test_arbitrary_bytes_raise(data):
    _rejects(data)


@given(st.sampled_from(["net", "store", "tensors", "data"]), st.data())
@settings(max_examples=40, **FUZZ)
def test_valid_msgpack_of_wrong_types_raises(entry, data):
    ints = st.integers(-(2**63), 2**63 - 1)
    junk = data.draw(st.none() | ints | st.text(max_size=5) | st.lists(ints, max_size=3)
                     | st.dictionaries(st.text(max_size=4), ints, max_size=3))

    def edit(obj):
        obj[entry] = junk

    _rejects(reframe(SMALL, edit))


@pytest.mark.parametrize("version", [0, 4, 99, -1, "1", 1.0, True, None])
def test_unknown_format_version_names_the_supported_ones(version):
    def edit(obj):
        obj["format_version"] = version

    err = _rejects(reframe(SMALL, edit))
    assert "format version" in str(err) and "reads format version(s) 1" in str(err)


@pytest.mark.parametrize("tag", ["jointnet-snapshat", "", 1, None])
def test_wrong_format_tag_raises(tag):
    def edit(obj):
        obj["format"] = tag

    assert "not a jointnet snapshot" in str(_rejects(reframe(SMALL, edit)))


def _node(obj, kind):
    return next(n for n in obj["net"]["nodes"] if n["spec"]["kind"] == kind)


INVALID_CONTENT = {
    "negative width": lambda o: _node(o, "Linear")["spec"].update(out_f=-1),
    "unknown kind": lambda o: _node(o, "Linear")["spec"].update(kind="Warp"),
    "missing node field": lambda o: _node(o, "Linear").pop("params"),
    "extra node field": lambda o: _node(o, "Linear").update(colour="red"),
    "edge to nowhere": lambda o: o["net"]["edges"][0].update(dst="nowhere"),
    "duplicate node": lambda o: o["net"]["nodes"].append(o["net"]["nodes"][0]),
    "version a string": lambda o: o["net"].update(version="7"),
    "shape of floats": lambda o: _node(o, "Linear")["params"][0].update(shape=[2.0, 3.0]),
    "bad init kind": lambda o: _node(o, "Linear")["params"][0]["init"].update(kind="magic"),
    "unknown tag": lambda o: o["net"]["annotations"].update(r={"__weird__": 1}),
    "bad tensorref": lambda o: o["net"]["annotations"].update(r={"__tensorref__": 5}),
    "unknown dtype": lambda o: o["tensors"][0].update(dtype="float128"),
    "nbytes mismatch": lambda o: o["tensors"][0].update(nbytes=o["tensors"][0]["nbytes"] + 4),
    "shape mismatch": lambda o: o["tensors"][0].update(shape=[1, 1, 1, 1, 1, 1, 1, 1, 1000]),
    "missing tensor bytes": lambda o: o["data"].pop(),
    "tensor bytes not binary": lambda o: o["data"].__setitem__(0, "text"),
    "tensors without store": lambda o: o.update(store=None),
    "log kwargs not a map": lambda o: o["net"]["log"][0].update(kwargs=[1, 2]),
    "policy for unknown task": lambda o: o["net"]["policy"].append(
        {"task": "ghost", "node": "fc1", "frozen": True, "lr_scale": 1.0}),
    "edge routed for unknown task": lambda o: o["net"]["edges"][0].update(tasks=["ghost"]),
    "ext type": lambda o: o["net"]["annotations"].update(r=msgpack.ExtType(5, b"x")),
}


@pytest.mark.parametrize("case", list(INVALID_CONTENT))
def test_invalid_content_with_valid_checksum_raises(case):
    _rejects(reframe(SMALL, INVALID_CONTENT[case]))


def test_files_that_are_not_snapshots_raise_naming_the_file(tmp_path):
    cases = {
        "empty.jns": b"",
        "text.jns": b"hello, world\n",
        "json.jns": b'{"format": "jointnet-snapshot", "format_version": 1}',
        "msgpack-list.jns": msgpack.packb([1, 2, 3]),
        "msgpack-map.jns": msgpack.packb({"format": "jointnet-snapshot"}),
    }
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    cases["torch.jns"] = buf.getvalue()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SnapshotError) as info:
            snapshot.load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    for missing in (tmp_path / "missing.jns", tmp_path):  # a missing file, a directory
        with pytest.raises(SnapshotError) as info:
            snapshot.load(missing)
        assert str(missing) in str(info.value)
    with pytest.raises(SnapshotError, match="expected a path"):
        snapshot.load(0)  # never read (or close) a file descriptor by accident
    with pytest.raises(SnapshotError, match="expected bytes"):
        snapshot.loads("a string")


def test_truncated_file_on_disk_raises_naming_it(tmp_path):
    path = tmp_path / "t.jns"
    for n in (0, 1, 10, len(SMALL) // 2, len(SMALL) - 1):
        path.write_bytes(SMALL[:n])
        with pytest.raises(SnapshotError, match=str(path).replace("\\", "\\\\")):
            snapshot.load(path)


def test_keyboard_interrupt_is_not_wrapped(monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot, "_dec_net", interrupt)
    with pytest.raises(KeyboardInterrupt):
        snapshot.loads(SMALL)


# ---- atomic writes ------------------------------------------------------------------------------


def _old_snapshot(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "net.jns"
    net, store = NETS["mlp"]
    snapshot.save(path, net, store)
    return path, path.read_bytes()


def test_failing_rename_leaves_the_old_snapshot_and_no_temp_file(tmp_path, monkeypatch):
    path, before = _old_snapshot(tmp_path)
    net, store = NETS["vgg_bn"]

    def fail(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        snapshot.save(path, net, store)
    assert os.listdir(tmp_path) == ["net.jns"] and path.read_bytes() == before


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failing_write_leaves_the_old_snapshot_and_no_temp_file(tmp_path, monkeypatch, exc):
    path, before = _old_snapshot(tmp_path)
    net, store = NETS["vgg_bn"]
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(1)
        if len(calls) == 2:  # the first chunk lands, then the disk fills up
            raise exc
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(type(exc)):
        snapshot.save(path, net, store)
    assert os.listdir(tmp_path) == ["net.jns"] and path.read_bytes() == before


def test_failing_fsync_leaves_the_old_snapshot_and_no_temp_file(tmp_path, monkeypatch):
    path, before = _old_snapshot(tmp_path)

    def fail(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        snapshot.save(path, *NETS["resnet_tiny"])
    assert os.listdir(tmp_path) == ["net.jns"] and path.read_bytes() == before


def test_unsupported_tensor_leaves_the_old_snapshot_and_no_temp_file(tmp_path):
    path, before = _old_snapshot(tmp_path)
    net = backbones.build(backbones.mlp(4, [3]), task="t1", n_classes=2)
    net = annotate(net, key="bad", value=TensorRef("bad"))
    store = ParamStore(seed=0).realize(net)
    store.load({"bad": torch.sparse_coo_tensor([[0, 1]], [1.0, 2.0], (3,), check_invariants=True)})
    with pytest.raises(SnapshotError, match="'bad' is not a dense"):
        snapshot.save(path, net, store)
    with warnings.catch_warnings():  # "ComplexHalf support is experimental"
        warnings.simplefilter("ignore")
        store = ParamStore(seed=0).realize(net).load({"bad": torch.zeros(2, dtype=torch.complex32)})
    with pytest.raises(SnapshotError, match="'bad' has dtype torch.complex32"):
        snapshot.save(path, net, store)
    assert os.listdir(tmp_path) == ["net.jns"] and path.read_bytes() == before


def test_overwrite_replaces_the_snapshot(tmp_path):
    path, before = _old_snapshot(tmp_path)
    net, store = NETS["small_conv"]
    snapshot.save(str(path), net, store)
    assert os.listdir(tmp_path) == ["net.jns"] and path.read_bytes() != before
    assert snapshot.load(str(path))[0] == net


# ---- earlier format versions ----------------------------------------------------------------------

# A version-1 snapshot written by jointnet 0.1.0 (commit ffc7bed), zlib-compressed and base64: an
# MLP with tasks t1 and t2, fc1 cloned for t2 and widened, a live mask of t1 on fc1, a policy
# entry, annotations, and an int16 tensor referenced by a TensorRef.
V1_SNAPSHOT = (
    "eNrtWE+IG1UYT7JLqdJiL8WCBYtFLRbrZja7yYrd3YtQoSCI4nF4mXmTjElm4nsvjSkeuutubOml2YoexMJuZibdPy1VUFvb"
    "pmEXemm1iiIUETxZD+2xl8WD789MzGz+bjdIDy5kyZt53/f9vt/7vfe+Lx87mokygHz5nqkbxIDkZWyALE6a5KJ4IR+DCOum"
    "ESzTlycr7mhnJa0bECTgihYZGYvGlCgcliK2YaoQf3pqQVdt3cjmiIWzUJm2Urqh2m+wBzZOgiwsDThZgEAGn1kyc0ROIDOX"
    "xWcWdcP7amcATuEzy8AwTAIIDYhPLCtp04CqrCEzU1tSEASEjuKFGgtX1pQwDzbDgzlHGTpkUY/agM1iaCErrgO85gaeO2UZ"
    "IAOdPNQTSVJOwcK31MMhMZyMhoE2omhSFA4pAvFcaIA608msyEVDECcdrCRhBlZSQM/oRsLRgCHrxkAZI6VmHwPpHLwVcP9s"
    "M29AVLMITatmx9Omkpqr1Zx4TtMgWvWlKYBxsAzW1wwWG7QAVQq1w3RRYJFzhs5WsU/QOi5W6SR3sUDCNqe4gdobLAc26RCp"
    "Uzw0EhtSh7UhDUjacgIBI5cGSCcFYbxI6BPMoFewnsiYVE+YooBWWj8Gu66IRXWC3ZyDrXLuSVc0Ey5kBNM5oa0pHsp6Cx59"
    "p4/6deNUkhColKAGFVtH6KP2Gj7bpOGrrg+PZAnEw7GYNBaJ0L3pshbqUceh/ur4igeNa7kZ2Ga13B94DdzdPeAn7xATLZEO"
    "EmkyPDQZGYmqkZgai0Otrr/g1plcIJIf7Epj1E1swtIMlZDP2ML6cRish6kLDpAnH12dUh/UKXnqjA+NjUahNjYyqo4+HuqU"
    "hDqbgT026pT+V6dfnRJTpyNcdy4ABnzy/KSJ4u+EE0+dY1EVjEoxCGPD4VY3jqWY2YJLqX0cItN347StJvql2MsuWi7YZqw+"
    "wXaG2qbC6KN2X/Qx21W6wT6UWhul6xNfTwTffb6B4W6YS8G+VWKPgLxh021qp22iYGH1tX/f2VBN0Fp/hmUiiv2yigmvw7Mm"
    "IgGb8KqQ3h8bpnib1T9L4rOYOZvjFl0tHfFXbFK9YuppWuuALpi2MSXxbW6Wi4MVtzwP8f88UFXOZMhiMTw8PhI9Q6ml4bZG"
    "Q8ln6GTNtK4USrNeWW2x5ooR5NAFOQ6N1fNpJGMFpOGtiT+EgpZSEGZlttSqTyFT82i6jKA2dUGWCTSwiehAlst6JrvwAT4b"
    "vDU5KBzMzYNaOW0mvpjmsBcpTpkjdlJ5gBJ4moNwU3FbOTGVpSQzpPWZXjfAJ9caZjEX7qyZelINnaLDW0vkFhUOt8clt6F0"
    "vXZy11yxsweeHx6s2QtbAtdLnfFFQ1bSAGOIQzbQCETC8xJNHEE5r5NkjQesdaZA8lFADxhD3ThjgZhd4UhNcGrtkCzxnduG"
    "aNcbP7DEzWDAvKyrrq2d11Vo+MzcTTKfCvqMxTknrJYBIUBJypl/0y9uDOlvDHtp+gRG1s2JKCsYEtlTvRvmI/GjA4tj+3fD"
    "xlUW+8Gzm2WH/DwSZ3Dvu0PQLAB71yEmJoJTFoZQDVaEB3yu2KF7V0khCyta2gRkWPIu7EXuE9J1XbuA4Ps5nbJLj2egrjlG"
    "vEAg3l7spZlu5ZxWLl297ylu5tZrlUGwa4zBYufSZSu89F5ltCIo2J2gHcVuVeKWmG9bMW7Ja4e2e0tk994st4Qf7DFOxx80"
    "WnrunsGuYpeOrx/ESP8NMa176S0Rw4494YFeWyTsNcANglv1m6+65tssFRBw7iY9KLfPP3Nl/OlLR66ywZ5A4MREqw97Obg7"
    "XxxvMtnx1+3fxtcmPrz2y52vqtzHxVcfjL9y9N3xaDJS3eu8Pn5+3+nqZ+t3x7u+3P72zucm9q+vvsYHNx/er/558B73uev2"
    "9Wcnnvh97+GHh+9cf+GnAzf4jJXLc4dP/P3zNT4Y3L9erQzc4Y52vXnpqYlfH3xTPZ26X/18327uY1sgEAyEAraClGHph+9f"
    "+vHeP3kruSc="
)


def test_a_version_1_snapshot_still_loads():
    """Newer releases read every earlier format version (docs/snapshot-format.md, "Versioning
    policy"): a field added since takes its default; one added without a default fails here."""
    data = zlib.decompress(base64.b64decode(V1_SNAPSHOT))
    net, store = snapshot.loads(data)
    assert (net.version, list(net.tasks)) == (13, ["t1", "t2"])
    assert net.node("fc1").masks[0].task == "t1" and len(net.node("fc1.t2").out_groups) == 1
    assert store["imp"].dtype == torch.int16 and store["imp"].tolist() == [0, 1, 2]
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    for task in net.tasks:
        compile_net(net, store, task, cache=False)(x)
    if snapshot.FORMAT_VERSION == 1:
        assert snapshot.dumps(net, store) == data
