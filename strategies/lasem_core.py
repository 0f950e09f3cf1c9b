"""LASEM's decisions as pure functions (spec `specs/LASEM.md`): configurations, prior, E-step.

**Configurations** (spec §1, §2.1, §2.6). The transferable layers are *slots* ``1..d`` (the conv
layers, lowest first). A configuration is a mask over the slots, written as a string of ``T``
(the slot uses the shared, transfer-based layer) and ``F`` (the task's own layer), lowest slot
first, as the authors' code lists them: Top-2 of four slots is ``FFTT``. With a partition of the
slots into consecutive *groups* (spec §2.6, ``groups=[2, 2]``) every slot of a group shares or
owns together, so there are ``2^|P|`` valid masks (`enumerate_masks`). Static configurations
have names (`static_mask`): ``all``, ``none``, ``topK``, ``bottomK`` (``botK``), ``alternating``
(``FTFT...``: the paper's Alternating ``{2, 4}``) and ``alternating2`` (``TFTF...``), or are
given as a mask string.

**E-step** (spec §2.3). The likelihood of configuration ``c`` on a mini-batch is the mean
probability of the true class (``mean``, the authors' code; default) or the product over the
batch (``product``, the exact likelihood), both computed from log-probabilities in log space
(`log_likelihood`); the posterior is ``prior * L`` normalised (`posterior`).

**Prior** (spec §2.2, §7.2). Eq. 1: ``pi(c) = count(c) / sum(count)`` where every count starts
at ``init`` (1: Laplace smoothing) and the posterior's argmax gains 1 per mini-batch
(`counts_prior`, `update_counts`; default); or the running mean of the posteriors of the task's
mini-batches so far, uniform before the first (`update_mean`, the code's default).

>>> enumerate_masks(4, [2, 2])
['FFFF', 'FFTT', 'TTFF', 'TTTT']
>>> static_mask("top2", 4), static_mask("alternating", 4)
('FFTT', 'FTFT')
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

import torch

__all__ = [
    "SHARE", "OWN", "check_groups", "enumerate_masks", "static_mask", "static_names", "expand_mask",
    "valid_mask", "log_likelihood", "posterior", "counts_prior", "update_counts", "update_mean",
    "share_probability", "orthogonality", "l2_half",
]

SHARE, OWN = "T", "F"


# ---- configurations --------------------------------------------------------------------------


def check_groups(d: int, groups: Sequence[int] | None) -> list[int]:
    """The group sizes (consecutive slots, lowest first); None: every slot its own group.

    Raises:
        ValueError: sizes that are not positive ints or do not add up to `d`.
    """
    if groups is None:
        return [1] * d
    if (not isinstance(groups, (list, tuple)) or not groups
            or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in groups)):
        raise ValueError(f"'groups' must be None or a list of positive ints (got {groups!r})")
    if sum(groups) != d:
        raise ValueError(f"'groups' {list(groups)} must add up to the {d} transferable layers")
    return list(groups)


def expand_mask(group_mask: str, groups: Sequence[int]) -> str:
    """A mask over groups as a mask over slots.

    >>> expand_mask("FT", [1, 3])
    'FTTT'
    """
    return "".join(b * g for b, g in zip(group_mask, groups))


def enumerate_masks(d: int, groups: Sequence[int] | None = None) -> list[str]:
    """Every valid configuration: ``2^|P|`` masks over the `d` slots, each constant within every
    group (all own first, all shared last; counting in binary with the lowest group as the most
    significant bit).

    >>> len(enumerate_masks(17, [5, 4, 4, 4]))
    16
    """
    g = check_groups(d, groups)
    return [expand_mask("".join(bits), g) for bits in itertools.product((OWN, SHARE), repeat=len(g))]


def valid_mask(mask: str, groups: Sequence[int]) -> bool:
    """Whether `mask` (over slots) is constant within every group."""
    i = 0
    for g in groups:
        if len(set(mask[i : i + g])) != 1:
            return False
        i += g
    return i == len(mask)


def static_names(d: int) -> list[str]:
    """The named static configurations for `d` slots (besides explicit masks)."""
    names = ["all", "none", "alternating", "alternating2"]
    for k in range(1, d):
        names += [f"top{k}", f"bottom{k}"]
    return names


_NAMED = re.compile(r"(top|bottom|bot)(\d+)")


def static_mask(name: str, d: int, groups: Sequence[int] | None = None) -> str:
    """The slot mask of a static configuration: a name of `static_names`, or a mask string over
    the slots (``TTFF``) or over the groups (with `groups`), ``T``/``F`` in any case.

    Raises:
        ValueError: an unknown name, a mask of the wrong length or not constant within a group.

    >>> static_mask("bottom1", 4), static_mask("tfft", 4), static_mask("FT", 4, [2, 2])
    ('TFFF', 'TFFT', 'FFTT')
    """
    g = check_groups(d, groups)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a configuration must be a name or a mask string (got {name!r})")
    low = name.lower()
    m = _NAMED.fullmatch(low)
    if low == "all":
        mask = SHARE * d
    elif low == "none":
        mask = OWN * d
    elif low in ("alternating", "alternating2"):
        first, second = (OWN, SHARE) if low == "alternating" else (SHARE, OWN)
        mask = "".join(second if i % 2 else first for i in range(d))
    elif m:
        k = int(m.group(2))
        if not 1 <= k <= d:
            raise ValueError(f"configuration {name!r}: k must be in 1..{d}")
        mask = OWN * (d - k) + SHARE * k if m.group(1) == "top" else SHARE * k + OWN * (d - k)
    elif set(name.upper()) <= {SHARE, OWN}:
        mask = name.upper()
        if len(mask) == len(g) and len(mask) != d:
            mask = expand_mask(mask, g)
        if len(mask) != d:
            raise ValueError(f"configuration {name!r} has {len(name)} letters; the net has {d} transferable "
                             f"layers" + (f" in {len(g)} groups" if len(g) != d else ""))
    else:
        raise ValueError(f"unknown configuration {name!r}; use a mask of T (shared) / F (own) per layer, "
                         f"lowest first, or one of {', '.join(static_names(d))}")
    if not valid_mask(mask, g):
        raise ValueError(f"configuration {name!r} = {mask} splits a layer group {g}")
    return mask


# ---- E-step ----------------------------------------------------------------------------------


def log_likelihood(log_p_true: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """``log P(y | X, c)`` per configuration from ``log_p_true[c, i] = log softmax(f_c(x_i))[y_i]``.

    kind ``mean``: ``log((1/B) sum_i p_ci)`` (the authors' code, spec §2.3); ``product``:
    ``sum_i log p_ci`` (the exact likelihood; it makes the posterior nearly one-hot).

    >>> lp = torch.log(torch.tensor([[0.5, 1.0], [0.25, 0.25]], dtype=torch.float64))
    >>> log_likelihood(lp).exp().tolist(), log_likelihood(lp, "product").exp().tolist()
    ([0.75, 0.25], [0.5, 0.0625])
    """
    lp = log_p_true.to(torch.float64)
    if kind == "mean":
        return torch.logsumexp(lp, dim=1) - math.log(lp.shape[1])
    if kind == "product":
        return lp.sum(dim=1)
    raise ValueError(f"likelihood must be 'mean' or 'product' (got {kind!r})")


def posterior(prior: torch.Tensor, log_lik: torch.Tensor) -> torch.Tensor:
    """``P(c | X, y) = prior(c) L(c) / sum_c' prior(c') L(c')``, in log space (float64).

    When every ``prior * L`` is 0 (all likelihoods underflow) the posterior is the prior [ours;
    the code's ``+1e-30`` would give all zeros].

    >>> posterior(torch.tensor([0.5, 0.5]), torch.log(torch.tensor([0.3, 0.1]))).round(decimals=6).tolist()
    [0.75, 0.25]
    """
    z = torch.log(prior.to(torch.float64)) + log_lik.to(torch.float64)
    if not bool(torch.isfinite(z).any()):
        return prior.to(torch.float64) / prior.sum()
    return torch.softmax(z, dim=0)


def counts_prior(counts: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``pi(c) = count(c) / sum(count)`` (counts start at the Laplace count).

    >>> counts_prior(torch.tensor([1.0, 3.0])).tolist()
    [0.25, 0.75]
    """
    return counts.to(torch.float64) / counts.sum()


def update_counts(counts: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """The counts after a mini-batch: the posterior's argmax (the first on a tie) gains 1.

    >>> update_counts(torch.tensor([1.0, 1.0]), torch.tensor([0.4, 0.6])).tolist()
    [1.0, 2.0]
    """
    out = counts.clone()
    out[int(torch.argmax(post))] += 1
    return out


def update_mean(mean: torch.Tensor, n: int, post: torch.Tensor) -> torch.Tensor:
    """The running mean of the posteriors after the `n`-th + 1 mini-batch (`mean` over the
    first `n`; any value when ``n == 0``).

    >>> update_mean(torch.tensor([0.5, 0.5]), 0, torch.tensor([1.0, 0.0])).tolist()
    [1.0, 0.0]
    """
    return (mean.to(torch.float64) * n + post.to(torch.float64)) / (n + 1)


def share_probability(post: torch.Tensor, masks: Sequence[str]) -> torch.Tensor:
    """Per slot, the posterior mass of the configurations that share it: the weight of the slot's
    regulariser in ``sum_c P(c) reg_c`` when ``reg_c`` sums the shared slots' terms.

    >>> share_probability(torch.tensor([0.25, 0.75]), ["FT", "TT"]).tolist()
    [0.75, 1.0]
    """
    m = torch.tensor([[b == SHARE for b in mask] for mask in masks], dtype=post.dtype)
    return post @ m


# ---- regularisers (spec §2.7) ----------------------------------------------------------------


def orthogonality(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """TF's auxiliary loss of one layer: ``sum_U ||U^T U - I||_F`` (Frobenius norm, not squared).

    >>> float(orthogonality([torch.eye(3), 2 * torch.eye(2)]))
    4.242640495300293
    """
    total = factors[0].new_zeros(())
    for u in factors:
        eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
        total = total + torch.linalg.matrix_norm(u.T @ u - eye)
    return total


def l2_half(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """TensorFlow's ``l2_regularizer`` without its scale: ``sum w^2 / 2``.

    >>> float(l2_half([torch.tensor([1.0, 2.0])]))
    2.5
    """
    total = tensors[0].new_zeros(())
    for t in tensors:
        total = total + t.pow(2).sum() / 2
    return total
