"""Pieces every benchmark script shares: the run header and interleaved block timing (method
benchmarks run their cells through `benchmarks/protocol.py`)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time

import torch


def header(quick: bool, detail: str, with_torch: bool = True) -> None:
    """Print the command, the --quick caveat, and the machine (threads, load) on one line."""
    print(f"$ python {shlex.join(sys.argv)}")
    if quick:
        print("(--quick: a smoke run of the code paths, not a measurement)")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    machine = f"Python {platform.python_version()}, {platform.machine()}, load average {load}"
    if with_torch:
        machine = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}"
    print(machine + (f"; {detail}" if detail else ""))


def time_block(fn, n: int) -> float:
    """Milliseconds per call of `fn`, over `n` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def calls_per_block(fns, min_block_s: float, probe: int = 2) -> int:
    """Calls per timed block so that a block of the slowest of `fns` lasts at least `min_block_s`."""
    t = max(time_block(f, probe) for f in fns) / 1e3
    return max(1, int(min_block_s / max(t, 1e-6)) + 1)
