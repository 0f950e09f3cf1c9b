"""A restricted unpickler for the CIFAR-100 python pickles: reads them without numpy and can
never run code (`load_pickle`). Used by `jointnet.experiments.data.load_cifar100`.
"""

from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from jointnet.errors import DataError

__all__ = ["load_pickle", "as_str"]

#
# Why this is safe. A pickle is a program for a small stack machine; the only way it can run code
# is by naming a global (opcodes GLOBAL, STACK_GLOBAL, INST, OBJ, and EXT through the copyreg
# registry), which `Unpickler.find_class` resolves, and then calling it (REDUCE, NEWOBJ, BUILD).
# `_SafeUnpickler.find_class` resolves only the names in `_ALLOWED`, and maps each to an inert
# stand-in defined below, never to numpy or to anything importable: the numpy array pickles in the
# CIFAR files (`_reconstruct(ndarray, (0,), b'b')` + `__setstate__((version, shape, dtype,
# fortran, raw bytes))`, and `dtype('u1', 0, 1)` + `__setstate__(...)`) become `_NDArray` and
# `_DType` records that only store the shape, dtype string and bytes they are given. Every other
# global is refused with a DataError, and persistent ids are refused by the default
# `persistent_load`. Containers (dict, list, tuple) and scalars (str, bytes, int, float, bool,
# None) are built by opcodes without calling any global. So loading a hostile file can fail with
# a DataError but cannot run code; numpy need not even be installed. The CIFAR pickles do need the
# numpy stand-ins: their `data` entry is a numpy uint8 array (checked on the published files, and
# on pickles written by numpy 1.x/2.x with protocols 2 and 5).


def as_str(v: Any) -> str:
    return v.decode("latin1") if isinstance(v, (bytes, bytearray)) else str(v)


class _DType:
    """Stand-in for ``numpy.dtype(spec, align, copy)``: remembers the spec and byte order."""

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = True):
        if not isinstance(spec, (str, bytes)):
            raise DataError(f"unsupported numpy dtype spec {spec!r} in a pickle")
        self.spec = as_str(spec)
        self.order = "="

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2:
            raise DataError(f"unsupported numpy dtype state {state!r} in a pickle")
        if len(state) >= 4 and state[3] is not None:
            raise DataError("structured numpy dtypes are not supported in CIFAR pickles")
        self.order = as_str(state[1])


class _NDArray:
    """Stand-in for a pickled ``numpy.ndarray``: shape, dtype, order and raw bytes."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = (0,)
        self.dtype: _DType | None = None
        self.fortran = False
        self.data: bytes = b""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise DataError("unsupported numpy array state in a pickle")
        shape, dtype, fortran, data = state
        if isinstance(data, str):  # written by Python 3 with encoding='latin1' semantics
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)) or not isinstance(dtype, _DType):
            raise DataError("unsupported numpy array in a pickle (object arrays are refused)")
        self.shape = tuple(int(s) for s in shape)
        self.dtype, self.fortran, self.data = dtype, bool(fortran), bytes(data)

    def to_tensor(self) -> torch.Tensor:
        assert self.dtype is not None
        spec = self.dtype.spec.lstrip("<>|=")
        order = self.dtype.spec[0] if self.dtype.spec[:1] in ("<", ">") else self.dtype.order
        if spec not in _NP_DTYPES:
            raise DataError(f"unsupported numpy dtype {self.dtype.spec!r} in a pickle")
        dtype, itemsize = _NP_DTYPES[spec]
        count = math.prod(self.shape)
        if len(self.data) != count * itemsize:
            raise DataError(
                f"numpy array of shape {self.shape} and dtype {spec} needs {count * itemsize} bytes, "
                f"has {len(self.data)}"
            )
        if count == 0:
            return torch.empty(self.shape, dtype=dtype)
        t = torch.frombuffer(bytearray(self.data), dtype=torch.uint8).view(-1, itemsize)
        if itemsize > 1 and order in ("<", ">") and (order == ">") == (sys.byteorder == "little"):
            t = t.flip(1).contiguous()
        t = t.view(dtype).reshape(-1)
        if self.fortran and len(self.shape) > 1:
            return t.reshape(self.shape[::-1]).permute(*reversed(range(len(self.shape)))).contiguous()
        return t.reshape(self.shape)


_NP_DTYPES = {
    "u1": (torch.uint8, 1), "i1": (torch.int8, 1), "b1": (torch.bool, 1),
    "i2": (torch.int16, 2), "i4": (torch.int32, 4), "i8": (torch.int64, 8),
    "f2": (torch.float16, 2), "f4": (torch.float32, 4), "f8": (torch.float64, 8),
}


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _NDArray:
    if cls is not _NDArray:
        raise DataError("numpy _reconstruct in a pickle called with something other than ndarray")
    return _NDArray()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _NDArray:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (numpy's protocol-5 array pickles)."""
    a = _NDArray()
    a.__setstate__((tuple(shape), dtype, as_str(order) == "F", bytes(buf)))
    return a


def _latin1_encode(s: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 protocol-2 pickles use for bytes: latin1 only."""
    if not isinstance(s, str) or as_str(encoding).lower().replace("-", "") != "latin1":
        raise DataError(f"refused _codecs.encode({type(s).__name__}, {encoding!r}) in a pickle")
    return s.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _reconstruct
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = _NDArray
_ALLOWED[("numpy", "dtype")] = _DType
_ALLOWED[("_codecs", "encode")] = _latin1_encode


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path}: refused to load global {module}.{name}: a CIFAR pickle may only hold dicts, "
                "lists, strings, numbers and numpy arrays"
            ) from None


def _plain(obj: Any) -> Any:
    """Stand-ins to tensors, byte-string keys to str, recursively."""
    if isinstance(obj, _NDArray):
        return obj.to_tensor()
    if isinstance(obj, dict):
        return {as_str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, path).load()
        obj = _plain(obj)
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"{path}: not a readable CIFAR pickle (truncated or corrupt): {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj
