"""Mask transforms: how a mask's stored tensor becomes the multiplier of a parameter block.

A transform has two forms: the one the forward pass uses (it may read the call's `Context`: a
Gumbel mask samples with ``ctx.noise_seed`` and ``ctx.tau`` while training) and a deterministic
one (evaluation without noise, and `commit_mask`'s threshold). Built in:

- ``identity``: the tensor itself;
- ``sigmoid``: ``sigmoid(m)``;
- ``hard``: ``m > 0`` as 0/1;
- ``gumbel``: binary concrete (Gumbel-sigmoid) with a straight-through hard sample: training with a
  noise seed, ``y = sigmoid((m + log u - log(1 - u)) / tau)``, ``u ~ U(0, 1)``, forward value
  ``y > 0.5``, gradient of ``y``; otherwise ``m > 0`` (GROWN spec §2.3).

`register_transform` adds one (its name becomes valid in `attach_mask` and in snapshots).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch

from jointnet.graph.net import MASK_TRANSFORMS

__all__ = ["register_transform", "deterministic", "RUNTIME", "salt"]

_TRAIN: dict[str, Callable] = {}
_DETERMINISTIC: dict[str, Callable] = {}
RUNTIME: dict[str, Callable] = {}
"""name -> the function the compiled code calls (``_mask_<transform>(m, ctx, salt)``)."""


def register_transform(name: str, forward: Callable, deterministic: Callable) -> None:
    """Make mask transform `name` known: ``forward(m, ctx, salt) -> multiplier`` is what compiled
    code calls (ctx: the call's `Context`; salt: an int fixed per mask, to seed noise), and
    ``deterministic(m) -> multiplier`` is used without noise and to commit a mask."""
    MASK_TRANSFORMS.add(name)
    _TRAIN[name] = forward
    _DETERMINISTIC[name] = deterministic
    RUNTIME[f"_mask_{name}"] = forward


def deterministic(name: str, m: torch.Tensor) -> torch.Tensor:
    """The deterministic multiplier of transform `name` (commit thresholds it)."""
    return _DETERMINISTIC[name](m)


def salt(key: str) -> int:
    """A per-mask int that seeds its noise: the same mask gets the same noise for one seed."""
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def _hard(m: torch.Tensor) -> torch.Tensor:
    return (m > 0).to(m.dtype)


def _gumbel(m: torch.Tensor, ctx, salt_: int) -> torch.Tensor:
    if not ctx.training or ctx.noise_seed is None:
        return _hard(m)
    g = torch.Generator(device=m.device).manual_seed((ctx.noise_seed * 1_000_003 + salt_) % (1 << 63))
    u = torch.rand(m.shape, generator=g, device=m.device, dtype=m.dtype).clamp_(1e-6, 1 - 1e-6)
    y = torch.sigmoid((m + torch.log(u) - torch.log1p(-u)) / ctx.tau)
    hard = (y > 0.5).to(y.dtype)
    return hard + y - y.detach()


register_transform("identity", lambda m, ctx, s: m, lambda m: m)
register_transform("sigmoid", lambda m, ctx, s: torch.sigmoid(m), torch.sigmoid)
register_transform("hard", lambda m, ctx, s: _hard(m), _hard)
register_transform("gumbel", _gumbel, torch.sigmoid)
