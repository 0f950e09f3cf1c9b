"""Data sets from local files: an IDX reader and Fashion-MNIST, MNIST and CIFAR-100 loaders.

Nothing here downloads anything, writes data files, or imports torchvision or numpy (the
tests write their small data files with ``tests/datafiles.py``). Every loader reads a
folder the user already has, checks each file completely (magic number, dtype, dims, exact
length, label ranges, matching counts), and raises one `DataError` naming the file and what is
wrong. It never returns a partial data set.

Where Fashion-MNIST is looked for, in order (the first folder that holds all four IDX files wins;
each file may be gzipped, ``name.gz``, or raw, ``name``):

1. ``data_dir``, the explicit argument (``--data-dir`` on the command line);
2. ``$JOINTNET_DATA``;
3. torchvision's layout ``<dir>/FashionMNIST/raw`` under ``data_dir``, under ``$JOINTNET_DATA``
   and under ``./data``;
4. ``/usr/share/datasets/fashion-mnist``, where the Debian package ``dataset-fashion-mnist``
   puts it.

Decoded arrays are cached in-process by resolved folder (`clear_cache` empties the cache), so the
streams of `jointnet.experiments.streams` decode each file once. The returned tensors are shared by every
caller: treat them as read-only (index or ``.clone()`` before changing them).

>>> import gzip, tempfile
>>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")  # ubyte, 2x3
>>> with tempfile.TemporaryDirectory() as d:
...     path = Path(d, "t.idx.gz")
...     _ = path.write_bytes(gzip.compress(header + bytes(range(6))))
...     print(read_idx(path).tolist())
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch

from jointnet.errors import DataError
from jointnet.experiments.safe_pickle import as_str as _as_str, load_pickle as _load_pickle

__all__ = [
    "read_idx",
    "load_fashion_mnist",
    "load_mnist",
    "load_cifar100",
    "fashion_mnist_dirs",
    "mnist_dirs",
    "cifar100_dirs",
    "clear_cache",
    "ENV_VAR",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
]

ENV_VAR = "JOINTNET_DATA"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# The four files of an MNIST-like data set (MNIST and Fashion-MNIST use the same names).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_HOW_TO_GET_FASHION = (
    "To get it: `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; installs the files "
    f"under {DEBIAN_FASHION_MNIST}), or point --data-dir / {ENV_VAR} at a folder holding the four "
    "IDX files " + ", ".join(f"{n}[.gz]" for n in IDX_FILES.values()) + "."
)
_HOW_TO_GET_MNIST = (
    "To get it: put the four MNIST IDX files ("
    + ", ".join(f"{n}[.gz]" for n in IDX_FILES.values())
    + f") in a folder and pass it as data_dir / --data-dir, or use torchvision's layout "
    f"<dir>/MNIST/raw under data_dir, ${ENV_VAR} or ./data. Nothing is downloaded at run time."
)
_HOW_TO_GET_CIFAR = (
    "To get it: unpack cifar-100-python.tar.gz (the 'python version' of CIFAR-100) so that a folder "
    f"holds cifar-100-python/{{train,test,meta}}, and pass that folder as data_dir / --data-dir or "
    f"set {ENV_VAR} to it. Nothing is downloaded at run time."
)


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

# IDX dtype code -> (torch dtype, bytes per item, name). Data are big-endian.
_IDX_DTYPES: dict[int, tuple[torch.dtype, int, str]] = {
    0x08: (torch.uint8, 1, "ubyte"),
    0x09: (torch.int8, 1, "sbyte"),
    0x0B: (torch.int16, 2, "short"),
    0x0C: (torch.int32, 4, "int"),
    0x0D: (torch.float32, 4, "float"),
    0x0E: (torch.float64, 8, "double"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24


def _open_maybe_gzip(path: Path):
    """Open `path` for binary reading, through gzip when its content starts with gzip's magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == _GZIP_MAGIC:
            return gzip.open(path, "rb"), True
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
    if path.suffix == ".gz":
        raise DataError(f"{path}: named .gz but is not gzip data (starts with {head!r})")
    return open(path, "rb"), False


def _read_exact(f, n: int, path: Path, what: str, compressed: bool) -> bytearray:
    """Read exactly `n` bytes in chunks (never trusting `n` for one allocation)."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = f.read(min(_CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        kind = "corrupt or truncated gzip stream" if compressed else "read error"
        raise DataError(f"{path}: {kind} while reading {what} (after {len(buf)} bytes): {e}") from e
    if len(buf) < n:
        raise DataError(
            f"{path}: truncated: {what} needs {n} bytes, only {len(buf)} are left"
            + (" (after decompression)" if compressed else "")
        )
    return buf  # writable, so torch.frombuffer can share it without a copy


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one IDX file (raw or gzipped) into a tensor of its dtype and shape.

    The whole file is validated: two zero bytes, a known dtype code, at least one dimension,
    and exactly ``prod(dims) * itemsize`` bytes of data after the header, no more, no less.
    Gzip is recognised by content, not by name.

    Args:
        path: the file.

    Returns:
        A tensor of shape ``dims`` (uint8, int8, int16, int32, float32 or float64; big-endian
        data converted to native order).

    Raises:
        DataError: the file cannot be read, or its magic, dtype, dims or length are wrong; the
            message names the file and what is wrong.

    Example:
        >>> import struct, tempfile
        >>> with tempfile.TemporaryDirectory() as d:  # int32 (code 0x0C), 1 dim of 2, then 1, -2
        ...     path = Path(d, "x")
        ...     _ = path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I2i", 2, 1, -2))
        ...     print(read_idx(path))
        tensor([ 1, -2], dtype=torch.int32)
    """
    path = Path(path)
    f, compressed = _open_maybe_gzip(path)
    with f:
        magic = _read_exact(f, 4, path, "the 4-byte magic number", compressed)
        if magic[0] != 0 or magic[1] != 0:
            raise DataError(
                f"{path}: not an IDX file: magic number {magic.hex()} does not start with two zero "
                "bytes" + ("" if compressed else " (if it is compressed, it is not gzip)")
            )
        code, ndim = magic[2], magic[3]
        if code not in _IDX_DTYPES:
            known = ", ".join(f"0x{c:02X} ({n})" for c, (_, _, n) in _IDX_DTYPES.items())
            raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X}; known codes are {known}")
        if ndim == 0:
            raise DataError(f"{path}: IDX header declares 0 dimensions")
        dtype, itemsize, tname = _IDX_DTYPES[code]
        dims = list(struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, f"{ndim} dims", compressed)))
        count = math.prod(dims)
        shape = "x".join(map(str, dims))
        data = _read_exact(f, count * itemsize, path, f"the data ({shape} {tname})", compressed)
        try:
            extra = f.read(1)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip stream after the data: {e}") from e
        if extra:
            raise DataError(
                f"{path}: wrong length: trailing bytes after the {count * itemsize} data bytes that the "
                f"header ({shape} {tname}) declares"
            )
    if count == 0:
        return torch.empty(dims, dtype=dtype)
    t = torch.frombuffer(data, dtype=torch.uint8).view(-1, itemsize)
    if itemsize > 1 and sys.byteorder == "little":
        t = t.flip(1).contiguous()  # IDX data are big-endian
    return t.view(dtype).reshape(dims)


# --------------------------------------------------------------------------------------------
# Finding a data set
# --------------------------------------------------------------------------------------------


def _env_dir() -> Path | None:
    v = os.environ.get(ENV_VAR)
    return Path(v).expanduser() if v else None


def fashion_mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path | None, str]]:
    """The places `load_fashion_mnist` looks, in order, as ``(folder or None, why)`` pairs.

    A None folder stands for an unset ``$JOINTNET_DATA`` (listed so that error messages say so).

    Example:
        >>> [why for _, why in fashion_mnist_dirs("/x")][:2]
        ['data_dir', '$JOINTNET_DATA']
    """
    env = _env_dir()
    out: list[tuple[Path | None, str]] = []
    if data_dir is not None:
        out.append((Path(data_dir).expanduser(), "data_dir"))
    out.append((env, f"${ENV_VAR}"))
    if data_dir is not None:
        out.append((Path(data_dir).expanduser() / "FashionMNIST" / "raw", "torchvision layout under data_dir"))
    if env is not None:
        out.append((env / "FashionMNIST" / "raw", f"torchvision layout under ${ENV_VAR}"))
    out.append((Path("data").absolute() / "FashionMNIST" / "raw", "torchvision layout under ./data"))
    out.append((DEBIAN_FASHION_MNIST, "Debian package dataset-fashion-mnist"))
    return out


def mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path | None, str]]:
    """The places `load_mnist` looks, in order, as ``(folder, why)`` pairs.

    ``$JOINTNET_DATA`` itself is *not* searched for MNIST: MNIST's files have exactly the names of
    Fashion-MNIST's, and ``$JOINTNET_DATA`` pointing at Fashion-MNIST's files is the documented
    use, so only the unambiguous ``MNIST/raw`` subfolder is looked at there.
    """
    env = _env_dir()
    out: list[tuple[Path | None, str]] = []
    if data_dir is not None:
        out.append((Path(data_dir).expanduser(), "data_dir"))
        out.append((Path(data_dir).expanduser() / "MNIST" / "raw", "torchvision layout under data_dir"))
    out.append((env / "MNIST" / "raw" if env is not None else None, f"torchvision layout under ${ENV_VAR}"))
    out.append((Path("data").absolute() / "MNIST" / "raw", "torchvision layout under ./data"))
    return out


def cifar100_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path | None, str]]:
    """The places `load_cifar100` looks, in order: ``<dir>/cifar-100-python`` and ``<dir>``."""
    env = _env_dir()
    out: list[tuple[Path | None, str]] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        out += [(d / "cifar-100-python", "data_dir"), (d, "data_dir")]
    else:
        out.append((None, "data_dir"))
    if env is not None:
        out += [(env / "cifar-100-python", f"${ENV_VAR}"), (env, f"${ENV_VAR}")]
    else:
        out.append((None, f"${ENV_VAR}"))
    out.append((Path("data").absolute() / "cifar-100-python", "torchvision layout under ./data"))
    return out


def _find_files(path: Path, names: dict[str, str], gz: bool) -> tuple[dict[str, Path], list[str]]:
    """Which of `names` are in `path` (raw preferred over .gz); returns (found, missing names)."""
    found, missing = {}, []
    for key, name in names.items():
        for cand in (path / name, path / f"{name}.gz") if gz else (path / name,):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(name)
    return found, missing


def _locate(
    what: str,
    places: list[tuple[Path | None, str]],
    names: dict[str, str],
    how_to_get: str,
    gz: bool = True,
) -> Path:
    """The first place holding all `names`; else one DataError listing every place looked."""
    report: list[str] = []
    partial: list[str] = []
    for i, (place, why) in enumerate(places, 1):
        if place is None:
            report.append(f"  {i}. {why}: not set")
            continue
        if not place.is_dir():
            report.append(f"  {i}. {place} ({why}): {'not a folder' if place.exists() else 'does not exist'}")
            continue
        found, missing = _find_files(place, names, gz)
        if not missing:
            for p in partial:
                warnings.warn(f"{what}: skipped an incomplete copy: {p}", stacklevel=3)
            return place
        status = "none of the files" if not found else "incomplete, missing " + ", ".join(missing)
        report.append(f"  {i}. {place} ({why}): {status}")
        if found:
            partial.append(f"{place} is missing {', '.join(missing)}")
    wanted = ", ".join(f"{n}[.gz]" if gz else n for n in names.values())
    raise DataError(f"{what} not found. Looked for {wanted} in:\n" + "\n".join(report) + f"\n{how_to_get}")


# --------------------------------------------------------------------------------------------
# MNIST-like data sets
# --------------------------------------------------------------------------------------------


def _check_mnist_like(what: str, files: dict[str, Path], arrays: dict[str, torch.Tensor], n_classes: int = 10) -> None:
    for split in ("train", "test"):
        xi, yi = f"{split}_images", f"{split}_labels"
        x, y = arrays[xi], arrays[yi]
        if x.dtype != torch.uint8 or x.dim() != 3 or tuple(x.shape[1:]) != (28, 28):
            raise DataError(
                f"{files[xi]}: expected uint8 images of shape Nx28x28 for {what}, got {x.dtype} {tuple(x.shape)}"
            )
        if y.dtype != torch.uint8 or y.dim() != 1:
            raise DataError(f"{files[yi]}: expected a 1-d uint8 label file, got {y.dtype} {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{files[xi]} has {x.shape[0]} images but {files[yi]} has {y.shape[0]} labels")
        if y.numel() and int(y.max()) >= n_classes:
            raise DataError(f"{files[yi]}: label {int(y.max())} is out of range 0..{n_classes - 1}")


@functools.lru_cache(maxsize=8)
def _load_idx_set(folder: str, what: str) -> dict[str, torch.Tensor]:
    found, missing = _find_files(Path(folder), IDX_FILES, gz=True)
    if missing:  # the folder changed since it was located
        raise DataError(f"{what}: {folder} is missing {', '.join(missing)}")
    arrays = {k: read_idx(p) for k, p in found.items()}
    _check_mnist_like(what, found, arrays)
    for t in arrays.values():
        t.requires_grad_(False)
    return arrays


def _result(arrays: dict[str, torch.Tensor], folder: Path, classes: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in arrays.items()}
    out["classes"] = classes
    out["source"] = folder
    return out


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load Fashion-MNIST from local IDX files (see the module docstring for where it looks).

    Args:
        data_dir: a folder holding the four IDX files (or ``FashionMNIST/raw`` below it); looked
            at first. None: only the other places.

    Returns:
        ``{"train_images": uint8 60000x28x28, "train_labels": uint8 60000, "test_images": uint8
        10000x28x28, "test_labels": uint8 10000, "classes": the 10 class names, "source": the
        folder read}``. The tensors are cached and shared: do not modify them in place.

    Raises:
        DataError: no place holds the four files (the message lists every place looked and how
            to get the data), or a file is truncated or corrupt (the message names it).

    Example:
        >>> fm = load_fashion_mnist()
        >>> fm["train_images"].shape, fm["test_labels"].shape
        (torch.Size([60000, 28, 28]), torch.Size([10000]))
    """
    folder = _locate("Fashion-MNIST", fashion_mnist_dirs(data_dir), IDX_FILES, _HOW_TO_GET_FASHION)
    folder = folder.resolve()
    return _result(_load_idx_set(str(folder), "Fashion-MNIST"), folder, FASHION_MNIST_CLASSES)


def load_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load MNIST from local IDX files: `data_dir`, then ``MNIST/raw`` under it, ``$JOINTNET_DATA``, ``./data``.

    Returns the same dict as `load_fashion_mnist` (``classes`` are ``'0'..'9'``).

    Raises:
        DataError: not found (every place looked is listed), or a file is truncated or corrupt.
    """
    folder = _locate("MNIST", mnist_dirs(data_dir), IDX_FILES, _HOW_TO_GET_MNIST).resolve()
    return _result(_load_idx_set(str(folder), "MNIST"), folder, tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------------------------
# CIFAR-100, python version: pickles read by a restricted unpickler
# --------------------------------------------------------------------------------------------
# (the restricted unpickler and why it is safe: `jointnet.experiments.safe_pickle`)


def _labels(path: Path, d: dict, key: str, n: int, n_classes: int) -> torch.Tensor:
    if key not in d:
        raise DataError(f"{path}: no {key!r} entry; entries are {sorted(d)}")
    v = d[key]
    try:
        t = v.to(torch.int64).reshape(-1) if isinstance(v, torch.Tensor) else torch.tensor(list(v), dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: {key!r} is not a list of integers: {e}") from e
    if t.numel() != n:
        raise DataError(f"{path}: {key!r} has {t.numel()} labels for {n} images")
    if n and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise DataError(f"{path}: {key!r} has labels outside 0..{n_classes - 1}")
    return t


def _images(path: Path, d: dict) -> torch.Tensor:
    if "data" not in d:
        raise DataError(f"{path}: no 'data' entry; entries are {sorted(d)}")
    x = d["data"]
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 2 or x.shape[1] != 3072:
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape Nx3072, found {desc}")
    return x.reshape(-1, 3, 32, 32)  # rows are 1024 red, 1024 green, 1024 blue, each row-major


_CIFAR_FILES = {"train": "train", "test": "test", "meta": "meta"}


@functools.lru_cache(maxsize=4)
def _load_cifar100_dir(folder: str) -> dict[str, Any]:
    base = Path(folder)
    out: dict[str, Any] = {}
    for split in ("train", "test"):
        path = base / split
        d = _load_pickle(path)
        x = _images(path, d)
        out[f"{split}_images"] = x
        out[f"{split}_fine_labels"] = _labels(path, d, "fine_labels", x.shape[0], 100)
        out[f"{split}_coarse_labels"] = _labels(path, d, "coarse_labels", x.shape[0], 20)
    meta_path = base / "meta"
    meta = _load_pickle(meta_path)
    for key, n in (("fine_label_names", 100), ("coarse_label_names", 20)):
        names = meta.get(key)
        if not isinstance(names, list) or len(names) != n:
            raise DataError(f"{meta_path}: {key!r} must be a list of {n} names")
        out[key] = tuple(_as_str(s) for s in names)
    return out


def load_cifar100(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load CIFAR-100 (python version) from ``<dir>/cifar-100-python/{train,test,meta}`` or ``<dir>/``.

    ``<dir>`` is `data_dir`, then ``$JOINTNET_DATA``, then ``./data``. The pickles are read with a
    restricted unpickler that can build only dicts, lists, strings, numbers and numpy arrays (as
    tensors), so a hostile file cannot run code (see the comment above `_SafeUnpickler`).

    Returns:
        ``{"train_images": uint8 Nx3x32x32, "train_fine_labels": int64 N (0..99),
        "train_coarse_labels": int64 N (0..19), the same three for "test", "fine_label_names",
        "coarse_label_names", "source"}``; tensors cached and shared (read-only).

    Raises:
        DataError: not found (every place looked is listed), or a file is corrupt, truncated,
            holds a global other than numpy's array reconstruction, or has inconsistent entries.
    """
    folder = _locate("CIFAR-100", cifar100_dirs(data_dir), _CIFAR_FILES, _HOW_TO_GET_CIFAR, gz=False).resolve()
    out = dict(_load_cifar100_dir(str(folder)))
    out["source"] = folder
    return out


def clear_cache() -> None:
    """Forget every decoded data set (the next load reads the files again)."""
    _load_idx_set.cache_clear()
    _load_cifar100_dir.cache_clear()
