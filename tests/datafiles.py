"""Writers of small data files for the tests: IDX files, CIFAR-100 pickles, tiny fake data sets.

The library only reads data (`jointnet.experiments.data`); these helpers write files in the
published formats, without numpy, so that tests can build data sets of their own.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from jointnet.errors import DataError

# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

# torch dtype -> IDX dtype code (IDX data are big-endian)
IDX_CODES = {
    torch.uint8: 0x08,
    torch.int8: 0x09,
    torch.int16: 0x0B,
    torch.int32: 0x0C,
    torch.float32: 0x0D,
    torch.float64: 0x0E,
}


def write_idx(path: str | os.PathLike, tensor: torch.Tensor) -> Path:
    """Write `tensor` as an IDX file, gzipped when `path` ends with ``.gz``; returns the path.

    Raises:
        DataError: the dtype has no IDX code, or the tensor is 0-d.

    Example:
        >>> import tempfile
        >>> from jointnet.experiments.data import read_idx
        >>> with tempfile.TemporaryDirectory() as d:
        ...     print(read_idx(write_idx(d + "/y.gz", torch.zeros(2, 3))).shape)
        torch.Size([2, 3])
    """
    path = Path(path)
    if tensor.dtype not in IDX_CODES:
        raise DataError(f"write_idx: dtype {tensor.dtype} has no IDX code; use one of {list(IDX_CODES)}")
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise DataError(f"write_idx: tensor must have 1..255 dims (got {tensor.dim()})")
    t = tensor.detach().cpu().contiguous()
    itemsize = t.element_size()
    raw = t.view(torch.uint8).reshape(-1, itemsize) if t.numel() else torch.empty(0, 1, dtype=torch.uint8)
    if itemsize > 1 and sys.byteorder == "little":
        raw = raw.flip(1)
    header = bytes([0, 0, IDX_CODES[t.dtype], t.dim()]) + struct.pack(f">{t.dim()}I", *t.shape)
    payload = header + _tensor_bytes(raw)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a uint8 tensor, without numpy."""
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    out = bytearray(t.numel())
    torch.frombuffer(out, dtype=torch.uint8).copy_(t)
    return bytes(out)


def fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0) -> Path:
    """Four small IDX files in MNIST's layout (random images, labels ``i % 10``)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", (torch.arange(n) % 10).to(torch.uint8))
    return folder


# --------------------------------------------------------------------------------------------
# CIFAR-100, python version
# --------------------------------------------------------------------------------------------


def write_cifar100(
    folder: str | os.PathLike,
    *,
    train: dict[str, Any],
    test: dict[str, Any],
    fine_label_names: list[str] | None = None,
    coarse_label_names: list[str] | None = None,
) -> Path:
    """Write a CIFAR-100 python-version folder (``train``, ``test``, ``meta``) in the published format.

    The pickles are byte-for-byte the kind the published files are (protocol 2, Python 2 strings,
    ``data`` a numpy uint8 array pickled via ``numpy.core.multiarray._reconstruct``), written
    without numpy.

    Args:
        folder: created if needed.
        train, test: ``{"images": uint8 Nx3x32x32, "fine_labels": N ints, "coarse_labels": N ints}``.
        fine_label_names, coarse_label_names: default ``fine0..fine99``, ``coarse0..coarse19``.

    Returns:
        `folder` as a Path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, d in (("train", train), ("test", test)):
        x = torch.as_tensor(d["images"])
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (3, 32, 32):
            raise DataError(f"write_cifar100: {split} images must be uint8 Nx3x32x32 (got {x.dtype} {tuple(x.shape)})")
        n = x.shape[0]
        obj = {
            b"batch_label": f"{split} batch".encode(),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"fine_labels": [int(v) for v in d["fine_labels"]],
            b"coarse_labels": [int(v) for v in d["coarse_labels"]],
            b"data": _PyArray(x.reshape(n, 3072)),
        }
        (folder / split).write_bytes(_py2_pickle(obj))
    meta = {
        b"fine_label_names": [s.encode() for s in (fine_label_names or [f"fine{i}" for i in range(100)])],
        b"coarse_label_names": [s.encode() for s in (coarse_label_names or [f"coarse{i}" for i in range(20)])],
    }
    (folder / "meta").write_bytes(_py2_pickle(meta))
    return folder


class _PyArray:
    """A uint8 tensor to be written as a numpy array pickle."""

    def __init__(self, t: torch.Tensor):
        self.t = t


def _py2_pickle(obj: Any) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes it: bytes as str (BINSTRING), no memo."""
    out = bytearray(b"\x80\x02")

    def s(v: Any) -> None:
        if isinstance(v, dict):
            out.extend(b"}(")
            for k, val in v.items():
                s(k)
                s(val)
            out.extend(b"u")
        elif isinstance(v, list):
            out.extend(b"](")
            for item in v:
                s(item)
            out.extend(b"e")
        elif isinstance(v, bool):
            out.extend(b"\x88" if v else b"\x89")
        elif isinstance(v, int):
            out.extend(b"J" + struct.pack("<i", v))
        elif isinstance(v, bytes):
            out.extend((b"U" + bytes([len(v)])) if len(v) < 256 else (b"T" + struct.pack("<I", len(v))))
            out.extend(v)
        elif isinstance(v, _PyArray):
            shape = tuple(v.t.shape)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            out.extend(b"J\x00\x00\x00\x00\x85U\x01b\x87R")  # _reconstruct(ndarray, (0,), 'b')
            out.extend(b"(J\x01\x00\x00\x00(")  # state: (1, shape, dtype, False, data)
            for d in shape:
                s(int(d))
            out.extend(b"t")
            out.extend(b"cnumpy\ndtype\nU\x02u1J\x00\x00\x00\x00J\x01\x00\x00\x00\x87R")
            out.extend(b"(J\x03\x00\x00\x00U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffJ\x00\x00\x00\x00tb")
            out.extend(b"\x89")
            s(_tensor_bytes(v.t))
            out.extend(b"tb")
        else:
            raise DataError(f"write_cifar100: cannot write {type(v).__name__}")

    s(obj)
    out.extend(b".")
    return bytes(out)


def tiny_cifar(
    folder: Path, n_train_per_class: int = 1, n_test_per_class: int = 1, seed: int = 0
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A seeded random CIFAR-100 under ``folder/cifar-100-python``, every fine class equally often.

    Each coarse label covers 5 fine classes (a seeded map). Returns `folder` and the written
    splits (``{"train": {"images", "fine_labels", "coarse_labels"}, "test": ...}``).
    """
    g = torch.Generator().manual_seed(seed)
    coarse_of = (torch.randperm(100, generator=g) // 5).tolist()
    splits = {}
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        fine = torch.arange(100).repeat(n)
        splits[split] = {
            "images": torch.randint(0, 256, (len(fine), 3, 32, 32), generator=g, dtype=torch.uint8),
            "fine_labels": fine.tolist(),
            "coarse_labels": [coarse_of[f] for f in fine.tolist()],
        }
    write_cifar100(folder / "cifar-100-python", train=splits["train"], test=splits["test"])
    return folder, splits
