"""The parameter store: the one mutable place where tensors live, keyed by stable string keys.

A net only says which tensors it needs and how to make them (`Param.init`, `Mask.init`,
`OwnerMap.init`); `store.realize(net)` creates exactly the missing ones. Training updates
trainable tensors in place through compiled modules that hold the very same objects. Everything
else writes through the store's API: `put` (a new key), `update` (new values for an existing
key), `checkpoint` / `restore` (LASEM's rollback). A rewrite can never change a tensor that
another task reads: it can only ask for new keys.

Committed masks are packed bits (`pack_bits`): 8 entries per byte.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import attrs
import torch
from torch import nn

from jointnet.errors import JointNetError
from jointnet.graph.net import Init, JointNet, TensorRef

__all__ = ["ParamStore", "Checkpoint", "make_tensor", "referenced_keys", "pack_bits", "unpack_bits"]

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool (or 0/1) tensor as packed bits: a flat uint8 tensor of ``ceil(numel / 8)`` bytes,
    entry i in bit ``i % 8`` of byte ``i // 8``.

    >>> pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1])).tolist()
    [13, 1]
    """
    flat = mask.detach().reshape(-1).to("cpu", torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed into `packed`."""
    n = math.prod(shape)
    bits = (packed.reshape(-1, 1) & _BITS.to(packed.device)) != 0
    return bits.reshape(-1)[:n].reshape(shape)


def _seed(seed: int, key: str) -> int:
    return (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (1 << 63)


def make_tensor(key: str, shape: tuple[int, ...], init: Init, seed: int, lookup) -> torch.Tensor:
    """The tensor `init` describes, on CPU; `lookup(key)` gives an existing tensor for copies.

    Fresh schemes: ``kaiming`` and ``fan_in_uniform`` draw U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    PyTorch's default for Linear and Conv2d weights and biases; ``normal`` draws N(0, 1), as
    ``torch.nn.Embedding`` (gate embeddings); ``zeros``; ``ones``. ``threshold`` makes packed
    bits; ``slice`` keeps entries of its source along an axis (unpacking and packing bits when
    the source is a committed mask).
    """
    if init.kind == "copy":
        src = lookup(init.src)
        if tuple(src.shape) != tuple(shape):
            raise JointNetError(f"cannot make {key!r} as a copy of {init.src!r}: shape {tuple(src.shape)} != {shape}")
        return src.detach().to("cpu", copy=True)
    if init.kind == "threshold":
        from jointnet.execution.masks import deterministic

        src = lookup(init.src).detach().to("cpu")
        if tuple(src.shape) != tuple(shape):
            raise JointNetError(f"cannot commit {key!r} from {init.src!r}: shape {tuple(src.shape)} != {shape}")
        return pack_bits(deterministic(init.scheme, src) > init.value)
    if init.kind == "slice":
        src = lookup(init.src).detach().to("cpu")
        if init.src_shape:
            src = unpack_bits(src, init.src_shape)
        out = src.index_select(init.axis, torch.tensor(init.index, dtype=torch.long))
        if tuple(out.shape) != tuple(shape):
            raise JointNetError(f"cannot make {key!r} as a slice of {init.src!r}: shape {tuple(out.shape)} != {shape}")
        return pack_bits(out) if init.src_shape else out.clone()
    if init.scheme == "zeros":
        return torch.zeros(shape)
    if init.scheme == "ones":
        return torch.ones(shape)
    if init.scheme in ("kaiming", "fan_in_uniform"):
        g = torch.Generator().manual_seed(_seed(seed, key))
        bound = 1.0 / math.sqrt(max(init.fan_in, 1))
        return torch.empty(shape).uniform_(-bound, bound, generator=g)
    if init.scheme == "normal":
        g = torch.Generator().manual_seed(_seed(seed, key))
        return torch.randn(shape, generator=g)
    raise JointNetError(f"unknown init scheme {init.scheme!r} for {key!r}")


@attrs.frozen
class Checkpoint:
    """Copies of some of a store's tensors, taken by `ParamStore.checkpoint`."""

    values: Mapping[str, torch.Tensor]


def wanted(net: JointNet) -> dict[str, tuple[tuple[int, ...], Init, str]]:
    """key -> (shape, init, role) of every tensor `net` declares; role ``param`` (trainable),
    ``buffer``, ``live`` (a trainable mask), ``bits`` (a committed mask), ``owners`` (int32)."""
    out: dict[str, tuple] = {}
    for n in net.nodes:
        node = net.node(n)
        for p in node.params:
            out[p.key] = (p.shape, p.init, "buffer" if p.buffer else "param")
            if p.owners is not None:
                out[p.owners.key] = (p.owners.shape(p.shape), p.owners.init, "owners")
        for m in node.masks:
            out[m.key] = (m.shape, m.init, "live" if m.state == "live" else "bits")
    return out


class ParamStore:
    """Tensors by key: trainable ones as ``nn.Parameter``, buffers, committed masks (packed bits)
    and owner maps as plain tensors.

    Args:
        seed: seeds fresh initialisation, per key (so the order of realization does not matter).
        device: where new tensors go.

    >>> from jointnet import backbones
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> store = ParamStore(seed=0).realize(net)
    >>> sorted(k.split("@")[0] for k in store)[:2]
    ['fc1.bias', 'fc1.weight']
    """

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu"):
        self.seed = int(seed)
        self.device = torch.device(device)
        self._tensors: dict[str, torch.Tensor] = {}
        self._compiled: dict = {}
        self._unpacked: dict[str, torch.Tensor] = {}

    @property
    def tensors(self) -> Mapping[str, torch.Tensor]:
        """A read-only view of the tensors by key (write with `put`, `update`, `restore`)."""
        return MappingProxyType(self._tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            raise JointNetError(f"the store has no tensor {key!r}; realize the net first") from None

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def put(self, key: str, tensor: torch.Tensor, trainable: bool | None = None) -> None:
        """Store a copy of `tensor` under the new `key` (strategy data referenced by a `TensorRef`).

        Raises:
            JointNetError: `key` is taken (use `update` for new values of an existing tensor).
        """
        if key in self._tensors:
            raise JointNetError(f"the store already has a tensor {key!r}; update it or use a new key")
        t = tensor.detach().to(self.device, copy=True)  # the store's own copy: nothing else aliases it
        if trainable or (trainable is None and isinstance(tensor, nn.Parameter)):
            t = nn.Parameter(t)
        self._tensors[key] = t

    @torch.no_grad()
    def update(self, key: str, values: torch.Tensor) -> None:
        """Write `values` into the existing tensor `key` in place (compiled modules see them).

        Raises:
            JointNetError: no such key, or `values` of another shape.
        """
        t = self[key]
        if tuple(values.shape) != tuple(t.shape):
            raise JointNetError(f"cannot update {key!r}: shape {tuple(values.shape)} != {tuple(t.shape)}")
        t.copy_(values.to(t.device, t.dtype))
        self._unpacked.pop(key, None)

    def checkpoint(self, keys: Iterable[str]) -> Checkpoint:
        """Copies of the tensors `keys`, for `restore` (LASEM's per-task rollback)."""
        return Checkpoint(MappingProxyType({k: self[k].detach().clone() for k in keys}))

    def restore(self, checkpoint: Checkpoint) -> None:
        """Put the values of `checkpoint` back, in place (optimizers and modules keep their tensors)."""
        for key, value in checkpoint.values.items():
            self.update(key, value)

    def unpacked(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The committed mask `key` (packed bits) as 0/1 floats of `shape`, cached."""
        out = self._unpacked.get(key)
        if out is None or tuple(out.shape) != tuple(shape):
            out = self._unpacked[key] = unpack_bits(self[key], shape).to(torch.float32)
        return out

    def realize(self, net: JointNet) -> "ParamStore":
        """Create every tensor `net` needs that the store lacks; returns the store."""
        want = wanted(net)
        busy: set[str] = set()

        def make(key: str) -> torch.Tensor:
            if key in self._tensors:
                return self._tensors[key]
            if key not in want:
                raise JointNetError(f"tensor {key!r} is neither in the store nor made by the net")
            if key in busy:
                raise JointNetError(f"tensor {key!r} is made from itself")
            busy.add(key)
            shape, init, role = want[key]
            t = make_tensor(key, shape, init, self.seed, make)
            if role == "owners":
                t = t.to(torch.int32)
            t = t.to(self.device)
            self._tensors[key] = nn.Parameter(t) if role in ("param", "live") else t
            return self._tensors[key]

        for key in want:
            make(key)
        return self

    def to(self, device: str | torch.device) -> "ParamStore":
        """Move every tensor to `device`, keeping each Parameter object (compiled modules follow)."""
        self.device = torch.device(device)
        for key, t in self._tensors.items():
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(self.device)
            else:
                self._tensors[key] = t.to(self.device)
        self._compiled.clear()
        self._unpacked.clear()
        return self

    def load(self, tensors: Mapping[str, torch.Tensor]) -> "ParamStore":
        """Add tensors read from a snapshot (keys must be new)."""
        for key, t in tensors.items():
            if key in self._tensors:
                raise JointNetError(f"the store already has a tensor {key!r}")
            self._tensors[key] = t
        return self

    def keys_of(self, nets: JointNet | Iterable[JointNet]) -> set[str]:
        """Keys referenced by `nets` (params, masks, owner maps and TensorRef annotations)."""
        return referenced_keys(nets)

    def gc(self, keep: JointNet | Iterable[JointNet]) -> int:
        """Drop tensors none of the nets in `keep` references; returns how many went."""
        live = self.keys_of(keep)
        dead = [k for k in self._tensors if k not in live]
        for k in dead:
            del self._tensors[k]
            self._unpacked.pop(k, None)
        self._compiled.clear()
        return len(dead)

    def numel(self, keys: Iterable[str]) -> int:
        return sum(self._tensors[k].numel() for k in keys)


def referenced_keys(nets: JointNet | Iterable[JointNet]) -> set[str]:
    """Keys referenced by `nets`: parameters, masks (and their `where` sets), owner maps,
    gradient rules' tensors and `TensorRef` annotations."""
    nets = [nets] if isinstance(nets, JointNet) else list(nets)
    keys: set[str] = set()

    def refs(value) -> None:
        if isinstance(value, TensorRef):
            keys.add(value.key)
        elif isinstance(value, (tuple, list)):
            for v in value:
                refs(v)
        elif hasattr(value, "values"):
            for v in value.values():
                refs(v)

    for net in nets:
        refs(net.annotations)
        for pol in net.policy.values():  # gradient rules' tensors
            for pp in pol.params.values():
                keys.update(r.tensor for r in pp.rules if r.tensor is not None)
        for info in net.tasks.values():
            refs(info.annotations)
        for n in net.nodes:
            node = net.node(n)
            refs(node.annotations)
            for p in node.params:
                keys.add(p.key)
                if p.owners is not None:
                    keys.add(p.owners.key)
                refs(p.annotations)
            for m in node.masks:
                keys.add(m.key)
                if m.where is not None:
                    keys.add(m.where)
    return keys
