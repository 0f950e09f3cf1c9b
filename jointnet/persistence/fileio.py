"""File plumbing for snapshots: CRC-32, atomic writes, and a sequential reader under a checksum.

- **CRC-32** (ISO-HDLC, exactly ``zlib.crc32``): `crc32` uses libdeflate's PCLMUL-accelerated
  implementation when the system has the library (two to three times zlib's speed; same
  result, checked once against zlib before first use), else zlib. `RunningCrc` checksums chunks
  in order; `ParallelCrc` hands large pieces to helper threads while the caller does I/O and
  joins them with `crc32_combine`.
- **Atomic writes**: `write_atomically` writes a temporary file beside the target, fsyncs it,
  renames it over the target and fsyncs the directory; on any failure the temporary file goes
  and the target is untouched.
- **Reading**: `Source` reads a stream of known size sequentially, feeding a running CRC, and
  raises `Malformed` ("truncated") when the stream ends early.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Callable

import torch

from jointnet.persistence.values import Malformed

__all__ = [
    "write_bytes_atomically",
    "crc32", "crc32_combine", "fast_crc32_available", "RunningCrc", "ParallelCrc", "crc_for",
    "crc_helpers", "prefer_huge_pages", "raw_view", "FileWriter", "write_atomically", "Source", "PIECE",
]

# The unit of reading tensors and of parallel checksumming: small, so that when the I/O is done
# the caller, helping with what is left, waits for at most one short piece per helper thread.
PIECE = 1 << 20
_WRITEBACK = 4 << 20  # how often a writer asks the kernel to start writing back
_PARALLEL_MIN = 8 << 20  # below this, helper threads cost more than they save
_FAST_MIN = 1 << 14  # below this, a ctypes call costs more than zlib's slower loop

# ---- CRC-32 -------------------------------------------------------------------------------------


def _find_libdeflate() -> Callable[[int, Any, int], int] | None:
    """libdeflate's ``libdeflate_crc32`` if the system has it and it agrees with zlib, else None.

    Loaded by file name (no ``ldconfig`` subprocess); ctypes releases the GIL during the call, so
    helper threads checksum in parallel.
    """
    names = {"linux": ("libdeflate.so.0", "libdeflate.so"), "darwin": ("libdeflate.0.dylib", "libdeflate.dylib"),
             "win32": ("libdeflate.dll", "deflate.dll")}
    for name in names.get(sys.platform, ("libdeflate.so.0",)):
        try:
            fn = ctypes.CDLL(name).libdeflate_crc32
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        fn.restype = ctypes.c_uint32
        probe = bytes(range(256)) * 300  # long enough for the vector code paths
        if fn(0x1234ABCD, probe, len(probe)) == zlib.crc32(probe, 0x1234ABCD):
            return fn
    return None


_fast: Any = None  # libdeflate_crc32, False when unavailable, None before the first look


def fast_crc32_available() -> bool:
    """Whether `crc32` uses libdeflate (for the benchmark's report)."""
    global _fast
    if _fast is None:
        _fast = _find_libdeflate() or False
    return bool(_fast)


def crc32(data: Any, crc: int = 0) -> int:
    """``zlib.crc32(data, crc)``, computed by libdeflate when that is faster and available."""
    view = memoryview(data)
    n = view.nbytes
    if n >= _FAST_MIN and fast_crc32_available() and view.contiguous:
        if type(data) is bytes:
            return _fast(crc, data, n)
        if not view.readonly:
            return _fast(crc, (ctypes.c_char * n).from_buffer(view), n)
    return zlib.crc32(view, crc)


# CRC-32 of a concatenation from the CRCs of its parts (zlib's crc32_combine): appending n
# bytes to a message maps its CRC through a linear operator over GF(2), the n-th power of the
# one-byte operator; _OPS[k] is the operator for 2**k bytes, as 32 column vectors.
_OPS: list[list[int]] = []


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)``.

    >>> crc32_combine(zlib.crc32(b"snap"), zlib.crc32(b"shot"), 4) == zlib.crc32(b"snapshot")
    True
    """
    k = 0
    while len2:
        while k >= len(_OPS):
            if not _OPS:
                one_bit = [0xEDB88320] + [1 << (n - 1) for n in range(1, 32)]
                _OPS.append(_gf2_square(_gf2_square(_gf2_square(one_bit))))  # 8 bits: one byte
            else:
                _OPS.append(_gf2_square(_OPS[-1]))
        if len2 & 1:
            crc1 = _gf2_times(_OPS[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


class RunningCrc:
    """A running CRC-32 over the chunks fed to it, in order."""

    def __init__(self) -> None:
        self.crc = 0

    def feed(self, chunk: Any) -> None:
        self.crc = crc32(chunk, self.crc)

    def value(self) -> int:
        return self.crc


class ParallelCrc(RunningCrc):
    """The same CRC-32, its large chunks checksummed by helper threads while the caller does I/O.

    Chunks are cut into pieces that helper threads checksum as soon as they are fed (the CRC
    code releases the GIL), so checksumming overlaps the reads or writes; `value` has the caller
    help with what is left, then combines the pieces' CRCs in order. Chunks must stay alive and
    unchanged until `value` returns.
    """

    def __init__(self, helpers: int) -> None:
        super().__init__()
        self._sizes: list[int] = []  # per piece, in file order
        self._crcs: list[int | None] = []  # filled in by whoever checksums the piece
        self._todo: list[tuple[int, memoryview]] = []
        self._taken = 0
        self._closed = False
        self._small_run = False  # whether the last piece is a run of small chunks still open
        self._cv = threading.Condition()
        self._threads = [threading.Thread(target=self._work, daemon=True, name="jointnet-crc")
                         for _ in range(helpers)]
        for t in self._threads:
            t.start()

    def feed(self, chunk: Any) -> None:
        view = memoryview(chunk).cast("B")
        if view.nbytes < PIECE // 16:  # headers and small tensors: not worth a hand-off
            # Consecutive small chunks run on in one piece, so `value` combines per large piece,
            # not per chunk (a net of thousands of small tensors would otherwise pay a GF(2)
            # combine for each).
            if self._small_run:
                self._crcs[-1] = crc32(view, self._crcs[-1])
                self._sizes[-1] += view.nbytes
            else:
                self._sizes.append(view.nbytes)
                self._crcs.append(crc32(view))
                self._small_run = True
            return
        self._small_run = False
        with self._cv:
            for start in range(0, view.nbytes, PIECE):
                piece = view[start : start + PIECE]
                self._todo.append((len(self._sizes), piece))
                self._sizes.append(piece.nbytes)
                self._crcs.append(None)
            self._cv.notify_all()

    def _take(self, wait: bool) -> tuple[int, memoryview] | None:
        with self._cv:
            while self._taken == len(self._todo):
                if self._closed or not wait:
                    return None
                self._cv.wait()
            item = self._todo[self._taken]
            self._taken += 1
            return item

    def _work(self, wait: bool = True) -> None:
        while (item := self._take(wait)) is not None:
            i, piece = item
            self._crcs[i] = crc32(piece)

    def value(self) -> int:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._work(wait=False)  # help with the pieces no helper has taken yet
        for t in self._threads:
            t.join()
        crc = 0
        for part, n in zip(self._crcs, self._sizes, strict=True):
            crc = crc32_combine(crc, part, n)
        return crc


def crc_helpers() -> int:
    """How many helper threads `crc_for` gives a large checksum now: one per CPU that is idle at
    this moment (Linux's count of runnable threads, this one included), at most 3.

    Helpers only pay when they get a CPU of their own: on a busy machine they add hand-offs and
    waits for a descheduled helper to the same work (measured: a 38 MiB load took 24 ms with a
    helper against 19 ms without, with the run queue at 8 on 2 CPUs).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        running = 1
    return max(0, min(3, cpus - 1, cpus - running))


def crc_for(nbytes: int) -> RunningCrc:
    """A CRC-32 for `nbytes` of bulk data: with helper threads when it is large and CPUs are
    idle (`crc_helpers`)."""
    helpers = crc_helpers() if nbytes >= _PARALLEL_MIN else 0
    return ParallelCrc(helpers) if helpers else RunningCrc()


_HUGE = 2 << 20  # a transparent huge page on x86-64 and most arm64 kernels
_madvise: Any = None


def prefer_huge_pages(t: torch.Tensor, nbytes: int) -> None:
    """Advise Linux to back the fresh CPU tensor `t` with transparent huge pages before its
    bytes are first written (best effort; a no-op elsewhere or for small tensors).

    Filling fresh memory faults in one 4 KiB page at a time; on a VM that costs more than the
    copy itself (~12 ms for 16 MiB here, against ~1 ms with 2 MiB pages). Only whole huge pages
    inside the tensor's own bytes are advised, so nothing else in the heap changes.
    """
    global _madvise
    if nbytes < 2 * _HUGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return
    if _madvise is None:
        _madvise = False
        try:
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):  # pragma: no cover - no libc symbol
            pass
    if _madvise:
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        end = (t.data_ptr() + nbytes) // _HUGE * _HUGE
        if end > start:
            _madvise(start, end - start, mmap.MADV_HUGEPAGE)  # failure only means 4 KiB pages


def raw_view(t: torch.Tensor, nbytes: int) -> memoryview:
    """The bytes of the contiguous CPU tensor `t` as a writable memoryview, without a copy.

    The view does not keep `t` alive: the caller must.
    """
    if nbytes == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_ubyte * nbytes).from_address(t.data_ptr())).cast("B")


# ---- atomic writes ------------------------------------------------------------------------------

_sync_file_range: Any = None


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing `nbytes` at `offset` to disk now, without waiting.

    The final fsync then finds most of the file on disk already (Linux ``sync_file_range``
    with SYNC_FILE_RANGE_WRITE); a no-op elsewhere.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _sync_file_range = fn
            except (OSError, AttributeError):  # pragma: no cover - no libc symbol
                pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; failures are harmless


class FileWriter:
    """Writes everything it is given to `fd`, starting writeback every few MiB."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.synced = 0

    def __call__(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.write(self.fd, view[: min(view.nbytes, _WRITEBACK)])
            view = view[n:]
            self.pos += n
            if self.pos - self.synced >= _WRITEBACK:
                _start_writeback(self.fd, self.synced, self.pos - self.synced)
                self.synced = self.pos


def write_atomically(path: Path, emit: Callable[[Callable[[Any], None]], None]) -> None:
    """Write `path` as `emit(write)` writes it, atomically: a reader sees the old file or the
    new one, never a mix, and on any failure (an exception in `emit`, a full disk, an
    interrupt) the old file is left untouched and no temporary file remains.

    The bytes go to ``.<name>.<random>.tmp`` beside `path` (created with ``O_EXCL``), which is
    fsynced and renamed over `path` with `os.replace`; then the directory is fsynced.

    Raises:
        OSError: the file could not be written.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            emit(FileWriter(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_bytes_atomically(path: Path, data: bytes | str) -> None:
    """`write_atomically` for data in memory (text is written as UTF-8)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_atomically(Path(path), lambda write: write(payload))


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); best effort where directories cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass
    finally:
        os.close(dfd)


# ---- reading ------------------------------------------------------------------------------------


class Source:
    """A binary stream of known size, read sequentially under a running CRC-32."""

    def __init__(self, f, size: int):
        self.f = f
        self.size = size
        self.pos = 0
        self.crc: RunningCrc = RunningCrc()

    def seek(self, pos: int) -> None:
        self.f.seek(pos)
        self.pos = pos

    def take(self, n: int, crc: bool = True) -> bytes:
        """The next `n` bytes (fed to the CRC unless `crc` is False)."""
        out = self.f.read(n) if n else b""
        if len(out) != n:
            raise Malformed(f"the file ends early at byte {self.pos + len(out)} (truncated)")
        self.pos += n
        if crc:
            self.crc.feed(out)
        return out

    def take_into(self, view: memoryview) -> None:
        """Fill `view` with the next bytes, a piece at a time, each fed to the CRC once read."""
        for start in range(0, view.nbytes, PIECE):
            piece = view[start : start + PIECE]
            rest = piece
            while rest.nbytes:
                n = self.f.readinto(rest)
                if not n:
                    raise Malformed("the file ends early (truncated)")
                rest = rest[n:]
            self.pos += piece.nbytes
            self.crc.feed(piece)

    def count(self, kinds: dict[int, int], fix: tuple[int, int] | None, what: str) -> int:
        """Read a msgpack array or bin header: the element or byte count it gives."""
        m = self.take(1)[0]
        if fix is not None and fix[0] <= m <= fix[1]:
            return m - fix[0]
        width = kinds.get(m)
        if width is None:
            raise Malformed(f"expected {what} at byte {self.pos - 1}, found type byte 0x{m:02x}")
        return int.from_bytes(self.take(width), "big")
