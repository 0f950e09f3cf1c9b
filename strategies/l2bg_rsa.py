"""L2BG's pure decision functions: RSA, task conflict, normalisation, nucleus, gains, and the
depth correction of conflicts (spec §2.2-2.4, §2.7). No graph, no training: every function maps
numbers (or activation tensors) to numbers, and each is tested with properties.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "rdm", "rsa", "task_conflict", "normalise", "ranking", "nucleus", "multitask_gain", "accuracy_gain",
    "depth_corrected", "DEPTH_CORRECTIONS",
]

def _flat(a: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a)
    return a.detach().reshape(a.shape[0], -1).to(torch.float64)


def rdm(acts: torch.Tensor, kind: str = "pearson") -> torch.Tensor:
    """The representational dissimilarity matrix (n x n) of `acts` (n samples, any shape).

    kind: ``pearson`` (``1 - corr(A_i, A_j)``; a constant row correlates 0 with everything,
    dissimilarity 1) or ``euclidean`` (``||A_i - A_j||``). The diagonal is 0.

    >>> rdm(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])).round(decimals=6).tolist()
    [[0.0, 2.0], [2.0, 0.0]]
    """
    a = _flat(acts)
    if kind == "pearson":
        c = a - a.mean(1, keepdim=True)
        norms = c.norm(dim=1)
        ok = norms > 1e-12 * (1 + a.abs().amax(1))
        u = torch.where(ok[:, None], c / norms.clamp_min(1e-300)[:, None], torch.zeros_like(c))
        d = 1.0 - (u @ u.T).clamp(-1.0, 1.0)
    elif kind == "euclidean":
        d = torch.cdist(a, a)
    else:
        raise ValueError(f"rdm kind must be 'pearson' or 'euclidean' (got {kind!r})")
    d = (d + d.T) / 2  # exactly symmetric (a matrix product need not be, bit for bit)
    d.fill_diagonal_(0.0)
    return d


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 with ties given their average rank (as Spearman's rho needs)."""
    uniq, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    avg = start.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
    return avg[inverse]


def _corr(x: torch.Tensor, y: torch.Tensor) -> float | None:
    x = x - x.mean()
    y = y - y.mean()
    nx_, ny = float(x.norm()), float(y.norm())
    if nx_ == 0.0 or ny == 0.0:
        return None
    return float((x @ y) / (nx_ * ny))


def rsa(a: torch.Tensor, b: torch.Tensor, rdm_kind: str = "pearson", compare: str = "spearman") -> float:
    """RSA dissimilarity ``rho`` in [0, 2] of two activation sets of the same `n` inputs.

    ``rho = 1 - corr(upper(RDM(a)), upper(RDM(b)))`` with `compare` ``spearman`` (rank
    correlation, ties averaged; spec §2.2) or ``pearson``. Identical RDMs give 0; when one RDM
    is constant (no structure to compare) and the other differs, the correlation counts as 0
    (``rho = 1``). `a` and `b` may differ in width; they must have the same number of rows (>= 2).

    >>> x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    >>> rsa(x, x), rsa(x, 2 * x + 1)
    (0.0, 0.0)
    """
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"rsa needs the same n >= 2 samples in both sets (got {a.shape[0]} and {b.shape[0]})")
    if compare not in ("spearman", "pearson"):
        raise ValueError(f"compare must be 'spearman' or 'pearson' (got {compare!r})")
    n = a.shape[0]
    iu = torch.triu_indices(n, n, 1)
    va = rdm(a, rdm_kind)[iu[0], iu[1]]
    vb = rdm(b, rdm_kind)[iu[0], iu[1]]
    if torch.equal(va, vb):
        return 0.0
    if compare == "spearman":
        va, vb = _ranks(va), _ranks(vb)
        if torch.equal(va, vb):
            return 0.0
    r = _corr(va, vb)
    return 1.0 if r is None else min(2.0, max(0.0, 1.0 - r))


def task_conflict(conflicts: Sequence[float], norm: str = "l2") -> float:
    """Task-level conflict ``CC = ||C||`` of per-slot conflicts (spec §2.3).

    norm: ``l2`` (default), ``l1`` or ``mean``.

    >>> task_conflict([3.0, 4.0]), task_conflict([3.0, 4.0], "l1"), task_conflict([3.0, 4.0], "mean")
    (5.0, 7.0, 3.5)
    """
    c = [float(v) for v in conflicts]
    if norm == "l2":
        return math.sqrt(sum(v * v for v in c))
    if norm == "l1":
        return sum(abs(v) for v in c)
    if norm == "mean":
        return sum(c) / len(c) if c else 0.0
    raise ValueError(f"norm must be 'l2', 'l1' or 'mean' (got {norm!r})")


def normalise(conflicts: Sequence[float], method: str = "plain", temperature: float = 1.0) -> list[float]:
    """Per-slot conflicts as a distribution over slots (spec §2.4).

    method: ``plain`` (``C / sum C``; all zero gives the uniform distribution) or ``softmax``
    (``exp(C / temperature)``, normalised).

    >>> normalise([1.0, 3.0]), normalise([0.0, 0.0])
    ([0.25, 0.75], [0.5, 0.5])
    """
    c = [float(v) for v in conflicts]
    if not c:
        return []
    if any(v < 0 or not math.isfinite(v) for v in c):
        raise ValueError(f"conflicts must be finite and >= 0 (got {c})")
    if method == "plain":
        s = sum(c)
        return [1.0 / len(c)] * len(c) if s <= 0 else [v / s for v in c]
    if method == "softmax":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature!r})")
        m = max(c)
        e = [math.exp((v - m) / temperature) for v in c]
        s = sum(e)
        return [v / s for v in e]
    raise ValueError(f"normalise method must be 'plain' or 'softmax' (got {method!r})")


def ranking(probs: Sequence[float]) -> list[int]:
    """Slot indices from most to least conflicting; ties keep slot order (spec §2.4).

    >>> ranking([0.2, 0.5, 0.3, 0.5])
    [1, 3, 2, 0]
    """
    return sorted(range(len(probs)), key=lambda i: (-float(probs[i]), i))


def nucleus(probs: Sequence[float], delta: float, tol: float = 1e-9) -> list[int]:
    """The slots to grow: the smallest prefix of `ranking(probs)` whose mass is ``>= delta``.

    ``k* = min {k : sum_{i<=k} p_(i) >= delta - tol}`` (spec §2.4): ``delta = 0`` grows
    nothing, ``delta >= 1 - tol`` grows every slot (even slots of probability 0), and the result
    grows with `delta` and is always a prefix of the ranking. Returned in ranking order.

    >>> nucleus([0.2, 0.5, 0.3], 0.0), nucleus([0.2, 0.5, 0.3], 0.6), nucleus([0.2, 0.5, 0.3], 1.0)
    ([], [1, 2], [1, 2, 0])
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be a number in [0, 1] (got {delta!r})")
    order = ranking(probs)
    if delta >= 1.0 - tol:
        return order
    total = 0.0
    for k, i in enumerate(order):
        if total >= delta - tol:
            return order[:k]
        total += float(probs[i])
    return order


def multitask_gain(errors: Sequence[float], reference: Sequence[float], floor: Sequence[float] | float = 0.0) -> float:
    """Multi-task gain in percent, positive = better than the reference (spec §2.7, corrected).

    ``(100/T) sum_t (ref_t - err_t) / max(ref_t, floor_t)``; errors are fractions in [0, 1].

    >>> multitask_gain([0.1, 0.2], [0.2, 0.2])
    25.0
    """
    if len(errors) != len(reference) or not errors:
        raise ValueError(f"need one reference error per task (got {len(errors)} and {len(reference)})")
    floors = [floor] * len(errors) if isinstance(floor, (int, float)) else list(floor)
    terms = []
    for e, r, f in zip(errors, reference, floors):
        den = max(float(r), float(f))
        if den <= 0:
            raise ValueError("a reference error is 0 and no floor > 0 was given")
        terms.append((float(r) - float(e)) / den)
    return 100.0 * sum(terms) / len(terms)



def accuracy_gain(accs: Sequence[float], reference: Sequence[float]) -> float:
    """Relative accuracy change in percent: ``(100/T) sum_t (A_t - ref_t) / ref_t`` (references
    floored at 1e-9).

    >>> accuracy_gain([0.9, 0.75], [0.9, 1.0])
    -12.5
    """
    if len(accs) != len(reference) or not accs:
        raise ValueError(f"need one reference accuracy per task (got {len(accs)} and {len(reference)})")
    return 100.0 * sum((float(a) - float(r)) / max(float(r), 1e-9) for a, r in zip(accs, reference)) / len(accs)



DEPTH_CORRECTIONS = ("none", "subtract", "ratio")


def depth_corrected(conflicts: Mapping[str, float], baseline: Mapping[str, float], method: str = "subtract",
                    eps: float = 1e-6) -> dict[str, float]:
    """Per-slot conflicts corrected for depth against a per-slot `baseline` [ours, a deviation].

    The baseline is the RSA dissimilarity of an *untrained* net of the same template from the new
    task's independent net at each slot: it rises with depth for any pair of nets (README, L2BG
    section: about 0.17 / 0.27 / 0.41 on fc1 / fc2 / fc3), so raw conflicts rank deep slots
    first whatever the tasks are. method ``subtract``: ``max(0, C(l) - B(l))`` (conflict above
    what an unrelated net shows); ``ratio``: ``C(l) / max(B(l), eps)``; ``none``: unchanged.

    >>> depth_corrected({"fc1": 0.3, "fc2": 0.3}, {"fc1": 0.1, "fc2": 0.4})
    {'fc1': 0.19999999999999998, 'fc2': 0.0}
    >>> depth_corrected({"fc1": 0.3}, {"fc1": 0.5}, "ratio")
    {'fc1': 0.6}
    """
    if method not in DEPTH_CORRECTIONS:
        raise ValueError(f"depth correction must be one of {DEPTH_CORRECTIONS} (got {method!r})")
    if set(conflicts) != set(baseline):
        raise ValueError(f"conflicts and baseline name different slots ({list(conflicts)} vs {list(baseline)})")
    if method == "none":
        return dict(conflicts)
    if method == "subtract":
        return {s: max(0.0, float(c) - float(baseline[s])) for s, c in conflicts.items()}
    return {s: float(c) / max(float(baseline[s]), eps) for s, c in conflicts.items()}
