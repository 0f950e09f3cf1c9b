"""The parameter store: the one mutable place where tensors live, keyed by stable string keys.

A net only says which tensors it needs and how to make them (`Param.init`); `store.realize(net)`
creates exactly the missing ones. Nothing else writes the store except training, which updates
the tensors in place through compiled modules that hold the very same objects. So a rewrite can
never change a tensor that another task reads: it can only ask for new keys.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from jointnet.errors import JointNetError
from jointnet.graph.net import Init, JointNet

__all__ = ["ParamStore", "make_tensor", "referenced_keys"]


def _seed(seed: int, key: str) -> int:
    return (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (1 << 63)


def make_tensor(key: str, shape: tuple[int, ...], init: Init, seed: int, lookup) -> torch.Tensor:
    """The tensor `init` describes, on CPU; `lookup(key)` gives an existing tensor for copies.

    Fresh schemes: ``kaiming`` and ``fan_in_uniform`` draw U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    PyTorch's default for Linear and Conv2d weights and biases; ``normal`` draws N(0, 1), as
    ``torch.nn.Embedding`` (gate embeddings); ``zeros``; ``ones``.
    """
    if init.kind == "copy":
        src = lookup(init.src)
        if tuple(src.shape) != tuple(shape):
            raise JointNetError(f"cannot make {key!r} as a copy of {init.src!r}: shape {tuple(src.shape)} != {shape}")
        return src.detach().to("cpu", copy=True)
    if init.kind == "threshold":
        src = lookup(init.src).detach().to("cpu")
        if init.scheme == "sigmoid":
            src = torch.sigmoid(src)
        elif init.scheme == "hard":
            src = (src > 0).to(src.dtype)
        return (src > init.value).to(torch.float32)
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


class ParamStore:
    """Tensors by key: trainable ones as ``nn.Parameter``, buffers and committed masks as tensors.

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
        self.tensors: dict[str, torch.Tensor] = {}
        self._compiled: dict = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self.tensors[key]
        except KeyError:
            raise JointNetError(f"the store has no tensor {key!r}; realize the net first") from None

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def put(self, key: str, tensor: torch.Tensor, trainable: bool | None = None) -> None:
        """Store `tensor` under `key` (e.g. strategy data referenced by a `TensorRef`)."""
        t = tensor.detach().to(self.device)
        if trainable or (trainable is None and isinstance(tensor, nn.Parameter)):
            t = nn.Parameter(t)
        self.tensors[key] = t

    def realize(self, net: JointNet) -> "ParamStore":
        """Create every tensor `net` needs that the store lacks; returns the store."""
        wanted: dict[str, tuple] = {}
        for n in net.nodes:
            node = net.node(n)
            for p in node.params:
                wanted[p.key] = (p.shape, p.init, not p.buffer)
            for m in node.masks:
                wanted[m.key] = (m.shape, m.init, m.state == "live")
        busy: set[str] = set()

        def make(key: str) -> torch.Tensor:
            if key in self.tensors:
                return self.tensors[key]
            if key not in wanted:
                raise JointNetError(f"tensor {key!r} is neither in the store nor made by the net")
            if key in busy:
                raise JointNetError(f"tensor {key!r} is made from itself")
            busy.add(key)
            shape, init, trainable = wanted[key]
            t = make_tensor(key, shape, init, self.seed, make).to(self.device)
            self.tensors[key] = nn.Parameter(t) if trainable else t
            return self.tensors[key]

        for key in wanted:
            make(key)
        return self

    def to(self, device: str | torch.device) -> "ParamStore":
        """Move every tensor to `device`, keeping each Parameter object (compiled modules follow)."""
        self.device = torch.device(device)
        for key, t in self.tensors.items():
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(self.device)
            else:
                self.tensors[key] = t.to(self.device)
        self._compiled.clear()
        return self

    def keys_of(self, nets: JointNet | Iterable[JointNet]) -> set[str]:
        """Keys referenced by `nets` (params, masks and TensorRef annotations)."""
        return referenced_keys(nets)

    def gc(self, keep: JointNet | Iterable[JointNet]) -> int:
        """Drop tensors none of the nets in `keep` references; returns how many went."""
        live = self.keys_of(keep)
        dead = [k for k in self.tensors if k not in live]
        for k in dead:
            del self.tensors[k]
        self._compiled.clear()
        return len(dead)

    def numel(self, keys: Iterable[str]) -> int:
        return sum(self.tensors[k].numel() for k in keys)


def referenced_keys(nets: JointNet | Iterable[JointNet]) -> set[str]:
    """Keys referenced by `nets`: parameters, masks and `TensorRef` annotations."""
    from jointnet.graph.net import TensorRef

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
        for info in net.tasks.values():
            refs(info.annotations)
        for n in net.nodes:
            node = net.node(n)
            refs(node.annotations)
            keys.update(p.key for p in node.params)
            keys.update(m.key for m in node.masks)
            for p in node.params:
                refs(p.annotations)
    return keys
