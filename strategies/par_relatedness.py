"""PAR's task relatedness: prototypes, the nearest-prototype KL estimate, squashing, the decision,
the (pluggable) relatedness extractor and the task-distance heat map.

PAR spec §3.1-§3.4, §8.2-§8.4. Every decision function here is pure and tested on its own:

- `class_prototypes`: the mean feature of every class (eq. 5 of §3.2), from the task's
  validation split ([C], §8.4).
- `np_kl`: the nearest-prototype estimate of KL(q_new || q_old), eq. 2-4: for every sample,
  ``rho`` = Euclidean distance to its own class prototype, ``nu`` = distance to the nearest old
  prototype; the per-class means of ``log(nu / rho)`` are **summed** over classes (no factor d,
  no offset). With ``clip`` (the code's choice, the default) each class term is clipped below at 0.
- `squash`: eq. 6, ``min(s, 1 - exp(-2 s))``; `pair_distance` adds the code's zero-to-one rule (a
  squashed value of exactly 0 becomes 1, "unrelated").
- `group_scores`: a task's score for every group: the mean of the per-pair squashed distances
  (``order="squash-mean"``, the code's) or the squash of the mean raw estimate
  (``"mean-squash"``, the paper's eq. 5-6).
- `decide`: ``g* = argmin s``; ``s* <= alpha`` regularize, ``<= beta`` reuse the cell, else search.
- `simulate_groups`: the whole grouping a stream gets from its raw distance matrix (pure): the
  decisions depend on nothing else, so sweeps over alpha / beta need no training.

The **extractor** (never part of the net, never counted in its size) is pluggable (`EXTRACTORS`,
`register_extractor`, `build_extractor`):

- ``random-conv`` (default): a fixed, seeded random convolutional net (Conv3x3(32)-ReLU-MaxPool2-
  Conv3x3(32)-ReLU-AvgPool2, spatial features kept: 32 x H/4 x W/4), then a PCA whitening to
  ``whiten`` dimensions fitted once, on the first task's training images (`Whitening`). The
  whitening matters: without it the distances are dominated by a few directions, and on
  2-class tasks the estimate for a repeated task scatters around 0, where the code's clipping and
  zero-to-one rule turn it into "unrelated" (docs/methods/par.md has the numbers). The
  paper's ImageNet ResNet-18 cannot be downloaded here; this is the documented deviation.
- ``resnet18:PATH``: torchvision's ResNet-18 architecture (written here with torchvision's
  parameter names, so torchvision is not needed) loaded from a local ``state_dict`` file
  (``torch.load(weights_only=True)``), 512-d globally pooled features ([C]); grey inputs are
  repeated to 3 channels. Use ``whiten=0`` for the paper's plain features.
- ``pixels``: the flattened input (a reference).

>>> import torch
>>> f = torch.tensor([[0.0, 0.0], [0.2, 0.0], [5.0, 5.0], [5.2, 5.0]]); y = torch.tensor([0, 0, 1, 1])
>>> P = class_prototypes(f, y, 2)
>>> np_kl(f, y, P, P)                       # a task against itself
0.0
>>> np_kl(f, y, P, P + 3.0) > 1.0           # against prototypes far away
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from jointnet.errors import JointNetError

__all__ = [
    "class_prototypes", "np_kl", "squash", "pair_distance", "group_scores", "Decision", "decide",
    "simulate_groups", "EXTRACTORS", "register_extractor", "build_extractor", "RandomConv",
    "ResNet18", "Whitening", "features", "heatmap_svg",
]

ORDERS = ("squash-mean", "mean-squash")
_TINY = 1e-12


# ---- the estimate ------------------------------------------------------------------------------


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The mean feature of every class, ``(n_classes, d)`` (a class without samples: NaN row).

    >>> class_prototypes(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 1]), 2).tolist()
    [[2.0], [5.0]]
    """
    f = features.double()
    out = torch.full((n_classes, f.shape[1]), float("nan"), dtype=torch.float64)
    for c in range(n_classes):
        sel = labels == c
        if bool(sel.any()):
            out[c] = f[sel].mean(0)
    return out


def _distances(f: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(n, k)`` from every row of `f` to every prototype (exact sums of
    squares, no matrix-product shortcut)."""
    return (f.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1).sqrt()


def np_kl(features: torch.Tensor, labels: torch.Tensor, own: torch.Tensor, old: torch.Tensor,
          *, clip: bool = True) -> float:
    """The nearest-prototype estimate of KL(q_new || q_old), PAR eq. 2-4.

    Args:
        features, labels: the new task's samples (``(n, d)``, ``(n,)``).
        own: the new task's class prototypes (`class_prototypes` of the same samples).
        old: the old task's prototypes ``(k, d)`` (NaN rows, classes it never saw, are ignored).
        clip: clip each class's mean log-ratio below at 0 before the sum (the code's choice,
            spec §3.3 (a)); False is the paper's formula.

    Returns:
        ``sum_c max(mean_{l in c} log(nu_l / rho_l), 0)`` (without the max when not `clip`). A
        sample on its own prototype (rho = 0) counts as ``rho = 1e-12``.
    """
    f = features.double()
    old = old.double()
    old = old[~torch.isnan(old).any(1)]
    if len(old) == 0:
        raise JointNetError("np_kl: the old task has no prototypes")
    # One distance routine for both, so a task against itself gives exactly nu == rho.
    rho = _distances(f, own.double()).gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(_TINY)
    nu = _distances(f, old).min(1).values.clamp_min(_TINY)
    ratio = torch.log(nu / rho)
    total = 0.0
    for c in labels.unique().tolist():
        term = float(ratio[labels == c].mean())
        total += max(term, 0.0) if clip else term
    return total


def squash(s: float) -> float:
    """PAR eq. 6: ``min(s, 1 - exp(-2 s))``, monotone, ``[0, inf) -> [0, 1)``.

    >>> squash(0.3), round(squash(2.0), 4), squash(0.0)
    (0.3, 0.9817, 0.0)
    """
    if math.isinf(s):
        return 1.0 if s > 0 else s
    return min(s, 1.0 - math.exp(-2.0 * s))


def pair_distance(raw: float, *, zero_to_one: bool = True) -> float:
    """The squashed distance of one task pair; with `zero_to_one` (the code's rule, spec §3.3
    (c)) a squashed value of exactly 0 becomes 1 ("unrelated").

    >>> pair_distance(0.0), pair_distance(0.0, zero_to_one=False), pair_distance(0.1)
    (1.0, 0.0, 0.1)
    """
    s = squash(raw)
    return 1.0 if zero_to_one and s == 0.0 else s


def group_scores(raw: Mapping[str, float], groups: Mapping[str, Sequence[str]], *,
                 order: str = "squash-mean", zero_to_one: bool = True) -> dict[str, float]:
    """The new task's score `s` for every group: ``raw[j]`` is the estimate against old task j.

    ``squash-mean`` (the code's): the mean over the group's tasks of `pair_distance`;
    ``mean-squash`` (the paper's eq. 5-6): `pair_distance` of the mean raw estimate.

    >>> group_scores({"a": 0.1, "b": 3.0}, {"g": ["a", "b"]})["g"] == (0.1 + squash(3.0)) / 2
    True
    >>> round(group_scores({"a": 0.1, "b": 3.0}, {"g": ["a", "b"]}, order="mean-squash")["g"], 4)
    0.955
    """
    if order not in ORDERS:
        raise JointNetError(f"order must be one of {', '.join(ORDERS)} (got {order!r})")
    out = {}
    for g, tasks in groups.items():
        if not tasks:
            raise JointNetError(f"group {g!r} has no task")
        if order == "squash-mean":
            out[g] = sum(pair_distance(raw[j], zero_to_one=zero_to_one) for j in tasks) / len(tasks)
        else:
            out[g] = pair_distance(sum(raw[j] for j in tasks) / len(tasks), zero_to_one=zero_to_one)
    return out


@attrs.frozen
class Decision:
    """What PAR does with a new task: ``kind`` is ``regularize`` (join `group`), ``reuse`` (a new
    expert with `group`'s genotype) or ``search`` (a new expert, new genotype); `s` is the best
    score (None for the first task)."""

    kind: str
    group: str | None
    s: float | None


def decide(scores: Mapping[str, float], alpha: float, beta: float) -> Decision:
    """PAR's decision (spec §3.4): the nearest group `g*` (ties: the earliest), then
    ``s* <= alpha`` regularize, ``s* <= beta`` reuse its cell, else search. No groups: search.

    >>> decide({"e1": 0.9, "e2": 0.3}, 0.5, 0.75)
    Decision(kind='regularize', group='e2', s=0.3)
    >>> decide({"e1": 0.6}, 0.5, 0.75).kind, decide({"e1": 0.8}, 0.5, 0.75).kind, decide({}, 0.5, 0.75).kind
    ('reuse', 'search', 'search')
    """
    if not scores:
        return Decision("search", None, None)
    g = min(scores, key=lambda k: (scores[k], list(scores).index(k)))
    s = scores[g]
    if s <= alpha:
        return Decision("regularize", g, s)
    if s <= beta:
        return Decision("reuse", g, s)
    return Decision("search", g, s)


def simulate_groups(raw: Sequence[Sequence[float]], alpha: float, beta: float, *,
                    order: str = "squash-mean", zero_to_one: bool = True) -> list[Decision]:
    """The decisions PAR takes over a stream whose raw estimates are ``raw[t][j]`` (new t against
    old j < t); groups are named ``e1, e2, ...`` in creation order. The number of experts is the
    number of non-regularize decisions; searches are the ``search`` ones.

    >>> [d.kind for d in simulate_groups([[0], [2.0], [0.01, 2.0]], 0.5, 0.75)]
    ['search', 'search', 'regularize']
    """
    groups: dict[str, list[int]] = {}
    out = []
    for t in range(len(raw)):
        scores = group_scores({str(j): raw[t][j] for j in range(t)},
                              {g: [str(j) for j in ts] for g, ts in groups.items()},
                              order=order, zero_to_one=zero_to_one)
        d = decide(scores, alpha, beta)
        if d.kind == "regularize":
            groups[d.group].append(t)
        else:
            groups[f"e{len(groups) + 1}"] = [t]
        out.append(d)
    return out


# ---- extractors ----------------------------------------------------------------------------------


class RandomConv(nn.Module):
    """A fixed random conv net: Conv3x3(32)-ReLU-MaxPool2-Conv3x3(32)-ReLU-AvgPool2-Flatten.

    Weights are Kaiming-normal from a generator seeded with `seed`, biases 0: the same seed gives
    the same extractor on every machine, with nothing to download or train.
    """

    def __init__(self, in_channels: int, seed: int = 0, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.body:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                    m.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's parameter names, so its ImageNet ``state_dict`` loads; the
    output is the 512-d globally pooled feature (``fc`` is kept only to accept the file)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        cin = 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_Basic(cin, w, stride), _Basic(w, w, 1)))
            cin = w
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean((2, 3))


def _random_conv(input_shape: Sequence[int], seed: int) -> nn.Module:
    if len(input_shape) != 3:
        raise JointNetError(f"the random-conv extractor needs (C, H, W) inputs (got {tuple(input_shape)}); "
                            "use extractor='pixels'")
    return RandomConv(input_shape[0], seed)


class _Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def _resnet18(path: str) -> Callable[[Sequence[int], int], nn.Module]:
    def make(input_shape: Sequence[int], seed: int) -> nn.Module:
        if len(input_shape) != 3 or input_shape[0] not in (1, 3):
            raise JointNetError(f"the resnet18 extractor needs 1- or 3-channel images (got {tuple(input_shape)})")
        net = ResNet18()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise JointNetError(f"cannot read ResNet-18 weights from {path!r}: {e}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise JointNetError(f"{path!r} is not a torchvision ResNet-18 state_dict: {str(e)[:200]}") from None
        net.requires_grad_(False)
        return net.eval()
    return make


EXTRACTORS: dict[str, Callable[[Sequence[int], int], nn.Module]] = {
    "random-conv": _random_conv,
    "pixels": lambda input_shape, seed: _Flat(),
}


def register_extractor(name: str, factory: Callable[[Sequence[int], int], nn.Module]) -> None:
    """Make ``extractor=name`` available: ``factory(input_shape, seed) -> module`` mapping a batch
    of inputs to ``(n, d)`` features (it runs under ``no_grad`` in eval mode)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise JointNetError(f"an extractor name is a non-empty string without ':' (got {name!r})")
    EXTRACTORS[name] = factory


def check_extractor_name(name: str) -> None:
    """Raise `ValueError` unless `name` is a registered extractor or ``resnet18:PATH``."""
    if not isinstance(name, str):
        raise ValueError(f"'extractor' must be a string (got {name!r})")
    if name.startswith("resnet18:"):
        if len(name) == len("resnet18:"):
            raise ValueError("'extractor' resnet18:PATH needs the path of a local state_dict file")
        return
    if name not in EXTRACTORS:
        raise ValueError(f"'extractor' must be one of {', '.join(EXTRACTORS)} or resnet18:PATH (got {name!r})")


def build_extractor(name: str, input_shape: Sequence[int], seed: int = 0) -> nn.Module:
    """The extractor `name` for inputs of `input_shape` (see the module docstring)."""
    if name.startswith("resnet18:"):
        return _resnet18(name[len("resnet18:"):])(input_shape, seed)
    if name not in EXTRACTORS:
        raise JointNetError(f"no extractor {name!r}; known: {', '.join(EXTRACTORS)}, resnet18:PATH")
    return EXTRACTORS[name](input_shape, seed)


@attrs.frozen
class Whitening:
    """PCA whitening: ``(f - mean) @ proj``, `proj` the top principal directions divided by their
    standard deviations (fitted with `fit`)."""

    mean: torch.Tensor
    proj: torch.Tensor

    @classmethod
    def fit(cls, feats: torch.Tensor, dims: int) -> "Whitening":
        """Fit on `feats` ``(n, d)``: at most ``min(dims, n - 1, d)`` directions, those whose
        variance is not (numerically) zero."""
        f = feats.double()
        mean = f.mean(0)
        _, s, vh = torch.linalg.svd(f - mean, full_matrices=False)
        std = s / math.sqrt(max(len(f) - 1, 1))
        keep = int(min(dims, max(len(f) - 1, 1), f.shape[1], int((std > 1e-8 * std[0]).sum())))
        if keep < 1:
            raise JointNetError("cannot fit the whitening: the features do not vary")
        return cls(mean.float(), (vh[:keep].T / std[:keep]).float())

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats.float() - self.mean) @ self.proj


@torch.no_grad()
def features(extractor: nn.Module, x: torch.Tensor, *, normalize: str = "none",
             whitening: Whitening | None = None, batch_size: int = 512) -> torch.Tensor:
    """Extractor features of images `x` (batched, CPU): ``normalize`` ``task`` standardizes the
    inputs with their own mean and std first (the code's per-task statistics on CTrL)."""
    x = x.float()
    if normalize == "task":
        x = (x - x.mean()) / x.std().clamp_min(1e-8)
    elif normalize != "none":
        raise JointNetError(f"normalize must be 'none' or 'task' (got {normalize!r})")
    out = torch.cat([extractor(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    return whitening(out) if whitening is not None else out


# ---- the heat map --------------------------------------------------------------------------------


def heatmap_svg(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str = "",
                groups: Mapping[str, str] | None = None, cell: int = 44) -> str:
    """An SVG heat map of a square task-distance matrix (0 white .. 1 dark), values printed in
    the cells; `groups` (task -> group) is written under each label. Hand-written, no plotting
    library.

    >>> svg = heatmap_svg([[0, 0.5], [0.5, 0]], ["t1", "t2"])
    >>> svg.startswith("<svg") and svg.count("<rect") == 5
    True
    """
    n = len(labels)
    if len(matrix) != n or any(len(r) != n for r in matrix):
        raise JointNetError(f"heatmap_svg needs a {n}x{n} matrix")
    left, top = 70, 40 + (16 if title else 0)
    w, h = left + n * cell + 10, top + n * cell + 30

    def esc(s: str) -> str:
        return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def colour(v: float) -> str:
        v = 0.0 if v != v else min(max(float(v), 0.0), 1.0)  # NaN shows white
        r, g, b = (round(255 - v * (255 - c)) for c in (8, 48, 107))
        return f"rgb({r},{g},{b})"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11">', f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>']
    if title:
        parts.append(f'<text x="{left}" y="16" font-size="13">{esc(title)}</text>')
    for i, name in enumerate(labels):
        tag = f" ({groups[name]})" if groups and name in groups else ""
        parts.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end">'
                     f'{esc(name)}{esc(tag)}</text>')
        parts.append(f'<text x="{left + i * cell + cell / 2}" y="{top - 6}" text-anchor="middle">{esc(name)}</text>')
        for j in range(n):
            v = float(matrix[i][j])
            x, y = left + j * cell, top + i * cell
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour(v)}" '
                         f'stroke="#999" stroke-width="0.5"/>')
            ink = "white" if v > 0.55 else "black"
            parts.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{ink}">'
                         f'{v:.3f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
