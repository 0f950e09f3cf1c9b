"""Snapshots: a net, its rewrite log and (optionally) its tensors in one msgpack file.

A snapshot holds everything a `JointNet` is made of and, when a `ParamStore` is given, every
tensor the net references as raw little-endian bytes with dtype and shape. Loading never runs
code from the file (plain msgpack, every value through the rewrites' own validators), checks the
file length and a CRC-32 before it builds anything, and gives back an equal net and
bit-identical tensors; `save` is atomic. The layout and every guarantee are documented in
``docs/snapshot-format.md``. This module holds the layout (the file's entries, the tensor index)
and the checks of tensors against the net; the ``"net"`` entry is `jointnet.persistence.schema`,
the records in it `jointnet.persistence.codec` (derived from their attrs classes), annotation
values `jointnet.persistence.values`, checksums, atomic writes and reading
`jointnet.persistence.fileio`.

>>> from jointnet import backbones
>>> from jointnet.execution.store import ParamStore
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> store = ParamStore(seed=0).realize(net)
>>> net2, store2 = loads(dumps(net, store))
>>> net2 == net, sorted(store2) == sorted(store)
(True, True)
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import msgpack
import torch
from torch import nn

from jointnet.errors import InvariantError, SnapshotError, SpecError
from jointnet.execution.store import ParamStore, referenced_keys
from jointnet.graph.names import check_shape
from jointnet.graph.net import JointNet
from jointnet.persistence.fileio import (
    Source, crc32_combine, crc_for, prefer_huge_pages, raw_view, write_atomically,
)
from jointnet.persistence.schema import decode_net, encode_net
from jointnet.persistence.values import Malformed, Unstorable, check_keys, shown

__all__ = ["save", "load", "dumps", "loads", "FORMAT", "FORMAT_VERSION", "SUPPORTED_VERSIONS"]

FORMAT = "jointnet-snapshot"
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)

# Top-level entries of a version-1 file, in file order.
_ENTRIES = ("format", "format_version", "net", "store", "tensors", "data", "crc32")
_MAGIC = msgpack.packb("format") + msgpack.packb(FORMAT)
_TAIL_KEY = msgpack.packb("crc32")
_TAIL_LEN = len(_TAIL_KEY) + 5  # key, then 0xce + big-endian uint32
_CHUNK = 1 << 16

_DTYPE_NAMES = (
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
)
_DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in _DTYPE_NAMES if hasattr(torch, n)}
_DTYPE_OF: dict[torch.dtype, str] = {d: n for n, d in _DTYPES.items()}
_STORE_KEYS = frozenset(("seed",))
_TENSOR_KEYS = frozenset(("key", "dtype", "shape", "parameter", "requires_grad", "nbytes"))

_crc_combine = crc32_combine  # the name the tests know


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic GC: (de)coding makes many small acyclic objects, and collections
    triggered by them would cost more than the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _map(v: Any, keys: frozenset, what: str) -> dict:
    """`v` if it is a map with exactly `keys`, else `Malformed` saying what is missing or extra."""
    if type(v) is not dict:
        raise Malformed(f"{what} must be a map (got {type(v).__name__})")
    check_keys(v, keys, what)
    return v


_dec_net = decode_net  # a name of this module's own, so that tests can replace it


# ---- tensors --------------------------------------------------------------------------------------


def _tensor_plan(net: JointNet, store: ParamStore) -> tuple[list[dict], list[torch.Tensor]]:
    """The tensor index entries and the contiguous CPU tensors whose bytes follow, in order."""
    index: list[dict] = []
    keep: list[torch.Tensor] = []
    for key in sorted(k for k in store.keys_of(net) if k in store.tensors):
        t = store.tensors[key]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise Unstorable(f"tensor {key!r} is not a dense (strided) tensor")
        name = _DTYPE_OF.get(t.dtype)
        if name is None:
            raise Unstorable(
                f"tensor {key!r} has dtype {t.dtype}, which snapshots do not store; "
                f"supported dtypes are {', '.join(_DTYPES)}"
            )
        data = t.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        data = data.resolve_conj().resolve_neg().contiguous()
        nbytes = data.numel() * data.element_size()
        if nbytes >= 1 << 32:
            raise Unstorable(f"tensor {key!r} takes {nbytes} bytes; a snapshot stores at most 4 GiB per tensor")
        index.append({
            "key": key, "dtype": name, "shape": list(data.shape),
            "parameter": isinstance(t, nn.Parameter), "requires_grad": bool(t.requires_grad),
            "nbytes": nbytes,
        })
        keep.append(data)
    return index, keep


def _check_index(index: Any, store_obj: Any, size: int) -> list[tuple]:
    """Validate the store entry and the tensor index against the file's `size`; the plan of
    tensors to read: (key, dtype, shape, nbytes, parameter, requires_grad) per tensor."""
    if store_obj is not None and type(_map(store_obj, _STORE_KEYS, "store")["seed"]) is not int:
        raise Malformed(f"store.seed must be an integer (got {shown(store_obj['seed'])})")
    if type(index) is not tuple:
        raise Malformed(f"tensors must be an array (got {type(index).__name__})")
    plan = []
    seen = set()
    for i, raw in enumerate(index):
        where = f"tensors[{i}]"
        e = _map(raw, _TENSOR_KEYS, where)
        key = e["key"]
        if type(key) is not str:
            raise Malformed(f"{where}.key must be a string (got {shown(key)})")
        if key in seen:
            raise Malformed(f"tensor {key!r} appears twice")
        seen.add(key)
        dtype = _DTYPES.get(e["dtype"]) if type(e["dtype"]) is str else None
        if dtype is None:
            raise Malformed(f"tensor {key!r} has unknown dtype {shown(e['dtype'])}; known are {', '.join(_DTYPES)}")
        # Bounded axis by axis before any arithmetic (names.check_shape): a declared shape of
        # 120,000 axes of 2**64-1 must cost nothing, not a product of huge integers.
        try:
            shape = check_shape(e["shape"], where + ".shape", zero=True)
        except SpecError as err:
            raise Malformed(str(err)) from None
        nbytes = e["nbytes"]
        if type(nbytes) is not int or nbytes != math.prod(shape) * dtype.itemsize:
            raise Malformed(f"tensor {key!r} has {shown(nbytes)} bytes, but shape {list(shape)} of {e['dtype']} "
                            f"needs {math.prod(shape) * dtype.itemsize}")
        param, grad = e["parameter"], e["requires_grad"]
        if type(param) is not bool or type(grad) is not bool:
            raise Malformed(f"{where}.parameter and .requires_grad must be booleans")
        if grad and not (dtype.is_floating_point or dtype.is_complex):
            raise Malformed(f"tensor {key!r} of dtype {e['dtype']} cannot require grad")
        plan.append((key, dtype, shape, nbytes, param, grad))
    if plan and store_obj is None:
        raise Malformed("the file has tensors but no store entry")
    total = sum(p[3] for p in plan)
    if total > size:
        raise Malformed(f"the tensor index declares {total} bytes of tensors, more than the file's {size} bytes")
    return plan


def _check_tensors(net: JointNet, tensors: dict[str, tuple]) -> None:
    """Every tensor of the file against what the net says of it: a parameter or mask tensor has
    the shape of its `Param` / `Mask` and dtype float32, the store's (a mask whose init makes packed bits,
    a committed one, is the flat uint8 tensor of ``ceil(numel / 8)`` bytes that holds them); any
    other tensor must be referenced by the net (a `TensorRef`, ...; strategy data, any dtype)."""
    if not tensors:
        return
    # key -> (what, shape, dtype rule): "float" (parameters, live masks), "bits" (committed masks:
    # packed uint8), "int32" (owner maps), "bool" (a mask's `where` set)
    expected: dict[str, tuple[str, tuple[int, ...], str]] = {}
    for n in net.nodes:
        node = net.node(n)
        for p in node.params:
            expected[p.key] = (f"parameter {p.name!r} {p.block} of node {n!r}", p.shape, "float")
            if p.owners is not None:
                expected[p.owners.key] = (f"owner map of {n!r}.{p.name} {p.block}", p.owners.shape(p.shape), "int32")
        for m in node.masks:
            packed = bool(getattr(m.init, "packed", False))
            shape = (-(-math.prod(m.shape) // 8),) if packed else m.shape
            what = f"mask of task {m.task!r} on {n!r}.{m.param}"
            expected[m.key] = (what, shape, "bits" if packed else "float")
            if m.where is not None:
                expected[m.where] = (f"`where` set of the {what}", m.shape, "bool")
    refs = referenced_keys(net)
    rules = {"float": (lambda d: d == torch.float32, "parameters and live masks are float32, as the store makes them"),
             "bits": (lambda d: d == torch.uint8, "committed masks are packed bits (uint8)"),
             "int32": (lambda d: d == torch.int32, "owner maps are int32"),
             "bool": (lambda d: d == torch.bool, "a mask's `where` set is bool")}
    for key, (t, _param, _grad) in tensors.items():
        if key in expected:
            what, shape, rule = expected[key]
            if tuple(t.shape) != shape:
                raise Malformed(f"tensor {key!r} ({what}) has shape {list(t.shape)}, the net says {list(shape)}")
            ok, why = rules[rule]
            if not ok(t.dtype):
                raise Malformed(f"tensor {key!r} ({what}) has dtype {_DTYPE_OF[t.dtype]}; {why}")
        elif key not in refs:
            raise Malformed(f"tensor {key!r} is not referenced by the net (no parameter, mask or TensorRef has it)")


# ---- writing --------------------------------------------------------------------------------------


def _head(net: JointNet, store: ParamStore | None, tensors: bool) -> tuple[bytes, list[torch.Tensor]]:
    """Every byte of the file before the first tensor's bin header, and the tensors to follow."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
        raise Unstorable("snapshots store little-endian tensors; this machine is big-endian")
    if store is not None and tensors:
        index, keep = _tensor_plan(net, store)
        store_obj = {"seed": store.seed}
    else:
        index, keep, store_obj = [], [], None
    pk = msgpack.Packer(use_bin_type=True, autoreset=False)
    pk.pack_map_header(len(_ENTRIES))
    for key, value in (
        ("format", FORMAT), ("format_version", FORMAT_VERSION), ("net", encode_net(net)),
        ("store", store_obj), ("tensors", index),
    ):
        pk.pack(key)
        pk.pack(value)
    pk.pack("data")
    pk.pack_array_header(len(keep))
    return pk.bytes(), keep


def _emit(write: Callable[[Any], None], head: bytes, keep: list[torch.Tensor]) -> None:
    """Write the file: `head`, each tensor as a bin 32 object, then the crc32 entry."""
    chunks: list[Any] = [head]
    total = 0
    for t in keep:
        nbytes = t.numel() * t.element_size()
        chunks.append(b"\xc6" + nbytes.to_bytes(4, "big"))
        chunks.append(raw_view(t, nbytes))
        total += nbytes
    crc = crc_for(total)
    try:
        for chunk in chunks:
            crc.feed(chunk)
            write(chunk)
    finally:
        value = crc.value()  # joins the helper threads even when a write failed
    write(_TAIL_KEY + b"\xce" + value.to_bytes(4, "big"))


def _encode(net: JointNet, store: ParamStore | None, tensors: bool, name: str):
    if not isinstance(net, JointNet):
        raise SnapshotError(f"cannot write snapshot {name}: expected a JointNet, got {type(net).__name__}")
    if store is not None and not isinstance(store, ParamStore):
        raise SnapshotError(f"cannot write snapshot {name}: store must be a ParamStore, got {type(store).__name__}")
    try:
        with _no_gc():
            return _head(net, store, tensors)
    except Unstorable as e:
        raise SnapshotError(f"cannot write snapshot {name}: {e}") from None
    except Exception as e:  # msgpack refusing a value, a field type the codec has no encoding for
        raise SnapshotError(f"cannot write snapshot {name}: {type(e).__name__}: {e}") from e


def dumps(net: JointNet, store: ParamStore | None = None, *, tensors: bool = True) -> bytes:
    """The snapshot of `net` (and the tensors it references in `store`) as bytes.

    Raises:
        SnapshotError: a value the format cannot hold (see `save`).
    """
    head, keep = _encode(net, store, tensors, "<bytes>")
    parts: list[Any] = []
    _emit(parts.append, head, keep)  # b''.join copies each tensor's bytes once
    return b"".join(parts)


def save(path: str | os.PathLike, net: JointNet, store: ParamStore | None = None, *, tensors: bool = True) -> Path:
    """Write a snapshot of `net` to `path` atomically; returns the path.

    With a `store` (and ``tensors=True``) every tensor of the store that `net` references
    (``store.keys_of(net)``: parameters, masks, `TensorRef` annotations) goes in as raw bytes;
    tensors the store does not hold yet are left out (``store.realize(net)`` makes them later).
    The file is written beside `path` under a temporary name, fsynced and renamed over `path`.

    Args:
        path: the file to write (replaced if it exists).
        net: the net.
        store: the tensors, or None for a structure-only snapshot.
        tensors: False to leave the tensors out even when `store` is given.

    Returns:
        `path` as a `Path`.

    Raises:
        SnapshotError: a value the format cannot hold (an annotation of an unknown type, a
            tensor of an unsupported dtype or layout); the file at `path` is left untouched.
        OSError: the file could not be written; the file at `path` is left untouched.

    >>> import tempfile, pathlib
    >>> from jointnet import backbones
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> p = save(pathlib.Path(tempfile.mkdtemp()) / "net.jns", net)
    >>> load(p) == (net, None)
    True
    """
    path = Path(os.fspath(path))
    head, keep = _encode(net, store, tensors, str(path))
    write_atomically(path, lambda write: _emit(write, head, keep))
    return path


# ---- reading --------------------------------------------------------------------------------------

_ARRAY = ({0xDC: 2, 0xDD: 4}, (0x90, 0x9F))
_BIN = ({0xC4: 1, 0xC5: 2, 0xC6: 4}, None)


def _expect(up: msgpack.Unpacker, key: str) -> None:
    got = up.unpack()
    if got != key:
        raise Malformed(f"expected entry {key!r}, found {shown(got)}")


def _check_magic(start: bytes) -> None:
    """Check that `start` (the file's first bytes) opens a map whose first entry is the tag.

    Done byte for byte before any msgpack decoding, so a file of another kind is turned away
    without being parsed.
    """
    first = start[0] if start else None
    width = 0 if first is not None and 0x80 <= first <= 0x8F else {0xDE: 2, 0xDF: 4}.get(first)
    if width is not None:
        got = start[1 + width : 1 + width + len(_MAGIC)]
        if got == _MAGIC:
            return
        if len(start) < 1 + width + len(_MAGIC) and _MAGIC.startswith(got):
            raise Malformed(f"the file ends early at byte {len(start)} (truncated)")
    raise Malformed(f"not a jointnet snapshot (it does not start with a map whose first entry is "
                    f"'format': {FORMAT!r}; its first bytes are {bytes(start[:12])!r})")


def _read_raw(src: Source) -> tuple[int, Any, Any, dict[str, tuple]]:
    """Parse and verify the file: (format version, net entry, store entry, tensors by key).

    Only msgpack decoding and raw tensor reads happen before the checksum is verified; the
    net is built afterwards, so a corrupted file fails here with a corruption message.
    """
    size = src.size
    if size == 0:
        raise Malformed("the file is empty")
    limit = max(min(size, (1 << 31) - 1), 1)
    up = msgpack.Unpacker(
        src.f, read_size=min(_CHUNK, limit), use_list=False, raw=False, strict_map_key=True,
        max_buffer_size=limit, max_array_len=limit, max_map_len=limit, max_str_len=limit,
        max_bin_len=limit, max_ext_len=0,
    )
    _check_magic(src.take(min(size, 5 + len(_MAGIC)), crc=False))
    src.seek(0)
    n_entries = up.read_map_header()
    up.skip()  # "format"
    up.skip()  # FORMAT, both checked by _check_magic
    _expect(up, "format_version")
    version = up.unpack()
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise Malformed(f"unsupported snapshot format version {shown(version)}; this jointnet reads format "
                        f"version(s) {supported}")
    if n_entries != len(_ENTRIES):
        raise Malformed(f"a version-{version} snapshot is a map of {len(_ENTRIES)} entries, not {n_entries}")
    _expect(up, "net")
    net_obj = up.unpack()
    _expect(up, "store")
    store_obj = up.unpack()
    _expect(up, "tensors")
    plan = _check_index(up.unpack(), store_obj, size)
    _expect(up, "data")
    # From here on read by hand: tensor bytes go straight from the file into the tensors.
    head_len = up.tell()
    del up
    src.crc = crc_for(sum(p[3] for p in plan))
    try:
        src.seek(0)
        src.take(head_len)
        tensors = _read_tensors(src, plan)
    finally:
        crc = src.crc.value()  # joins the helper threads, also when reading failed
    if src.pos + _TAIL_LEN != size:
        raise Malformed(f"the file is {size} bytes but its entries end at byte {src.pos + _TAIL_LEN} (truncated, "
                        "corrupted or with trailing data)")
    tail = src.take(_TAIL_LEN, crc=False)
    if tail[:-4] != _TAIL_KEY + b"\xce":
        raise Malformed("the file does not end in its crc32 entry (truncated or corrupted)")
    if int.from_bytes(tail[-4:], "big") != crc:
        raise Malformed("checksum mismatch: the file is corrupted")
    return version, net_obj, store_obj, tensors


def _read_tensors(src: Source, plan: list[tuple]) -> dict[str, tuple]:
    tensors: dict[str, tuple] = {}
    if src.count(*_ARRAY, "the data array") != len(plan):
        raise Malformed(f"the data array does not hold the {len(plan)} tensors of the index")
    for key, dtype, shape, nbytes, param, grad in plan:
        if src.count(*_BIN, f"the bytes of tensor {key!r}") != nbytes:
            raise Malformed(f"the bytes of tensor {key!r} are not the {nbytes} its index entry says")
        if src.pos + nbytes + _TAIL_LEN > src.size:
            raise Malformed(f"the file ends inside tensor {key!r} (truncated)")
        t = torch.empty(shape, dtype=dtype)
        prefer_huge_pages(t, nbytes)
        src.take_into(raw_view(t, nbytes))
        tensors[key] = (t, param, grad)
    return tensors


def _build(raw: tuple, device) -> tuple[JointNet, ParamStore | None]:
    version, net_obj, store_obj, tensors = raw
    net = _dec_net(net_obj, version < FORMAT_VERSION)
    _run_check(net)
    _check_tensors(net, tensors)
    if store_obj is None:
        return net, None
    store = ParamStore(seed=store_obj["seed"], device=device)
    dev = torch.device(device)
    loaded = {}
    for key, (t, param, grad) in tensors.items():
        if dev.type != "cpu":
            t = t.to(dev)
        if param:
            t = nn.Parameter(t, requires_grad=grad)
        elif grad:
            t.requires_grad_(True)
        loaded[key] = t
    if hasattr(store, "load"):
        store.load(loaded)
    else:  # a ParamStore whose tensors are a plain dict (before ParamStore.load)
        store.tensors.update(loaded)
    return net, store


def _run_check(net: JointNet) -> None:
    from jointnet.graph.check import check  # jointnet.graph.check imports the net module: late

    try:
        check(net)
    except InvariantError as e:
        raise Malformed(f"the net breaks an invariant: {e}") from e


def _load_from(src: Source, name: str, device) -> tuple[JointNet, ParamStore | None]:
    try:
        with _no_gc():
            return _build(_read_raw(src), device)
    except Malformed as e:
        msg = str(e)  # names the field; capped, since it may quote a hostile value
        raise SnapshotError(f"cannot load snapshot {name}: {msg if len(msg) <= 400 else msg[:397] + '...'}") from None
    except msgpack.OutOfData:
        raise SnapshotError(f"cannot load snapshot {name}: the file ends early (truncated)") from None
    except (msgpack.FormatError, msgpack.StackError, msgpack.ExtraData, UnicodeDecodeError) as e:
        raise SnapshotError(f"cannot load snapshot {name}: malformed msgpack ({type(e).__name__}: {e})") from e
    except SnapshotError as e:
        raise SnapshotError(f"cannot load snapshot {name}: {e}") from e
    except Exception as e:  # anything a corrupted file can provoke: msgpack, attrs, torch errors
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        raise SnapshotError(f"cannot load snapshot {name}: {msg if len(msg) <= 400 else msg[:397] + '...'}") from e


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[JointNet, ParamStore | None]:
    """Read a snapshot written by `save`: the net, and a store with its tensors (or None).

    The net equals the saved one (version, lineage, structure and log); the tensors are
    bit-identical, Parameters stay ``nn.Parameter``. Loading decodes plain msgpack only: it never
    runs code from the file.

    Args:
        path: the snapshot file.
        device: where the tensors go.

    Returns:
        ``(net, store)``; store is None for a structure-only snapshot.

    Raises:
        SnapshotError: for any problem with the file (missing, empty, not msgpack, truncated,
            corrupted, wrong format tag, unsupported format version, invalid contents), naming it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SnapshotError(f"cannot load snapshot {path!r}: expected a path, got {type(path).__name__}")
    name = os.fspath(path)
    try:
        f = open(path, "rb", buffering=0)
    except Exception as e:
        raise SnapshotError(f"cannot load snapshot {name}: {type(e).__name__}: {e}") from e
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
        except Exception as e:  # pragma: no cover
            raise SnapshotError(f"cannot load snapshot {name}: {e}") from e
        return _load_from(Source(f, size), name, device)


def loads(data: bytes | bytearray | memoryview, *, device: str | torch.device = "cpu") -> tuple[JointNet, ParamStore | None]:
    """`load` from bytes (as made by `dumps`).

    Raises:
        SnapshotError: as `load`, naming the file ``<bytes>``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"cannot load snapshot <bytes>: expected bytes, got {type(data).__name__}")
    return _load_from(Source(io.BytesIO(data), memoryview(data).nbytes), "<bytes>", device)
