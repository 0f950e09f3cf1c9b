"""L2BG's decision rules: pure functions of a `Situation` (what a new task sees) returning a
`Choice` (bind target, grow coefficient, slots), and the controls' rules.

- `rsa_decision`: L2BG (spec §2.3-2.4): bind to the RSA argmin, grow the nucleus;
- `ordered_grow`: which slots a nucleus of size k grows under ``grow_order`` (``conflict``:
  the spec's; ``reverse``: the k *least* conflicting; ``top`` / ``bottom``: the k deepest /
  shallowest slots, the depth prior without RSA's choice) [ours: controls];
- `random_decision`: the paper's random-growth ablation (spec §5), optionally following a
  `random_plan` whose total grown parameters match a target within a tolerance (rejection
  sampling over bind targets and slot subsets) [ours: the parameter-matched control].
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from strategies.l2bg_rsa import ranking, task_conflict

__all__ = [
    "Situation", "Choice", "GROW_ORDERS", "rsa_argmin", "rsa_decision", "ordered_grow", "random_decision",
    "random_plan", "sequence_entry", "rsa_sample", "seed_of", "choose",
]

GROW_ORDERS = ("conflict", "reverse", "top", "bottom")


def seed_of(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


@attrs.frozen
class Situation:
    """What a bind-grow decision sees when task `task` (at `index`) arrives: plain data.

    Attributes:
        task: the new task's name; index: its position in the stream (0-based).
        seed: the run's seed (random decisions are seeded by it and `index`).
        candidates: the bind candidates ``B``, in task order.
        slots: the slot names of the route of every task the new one may bind to (the
            candidates and a `sequence` entry's ``bind``), in route order.
        conflicts: ``{b: {slot: rho}}`` (RSA, spec §2.2) for the same tasks, or None when no
            independent net was trained.
        entry: the task's `sequence` entry (``bind``, ``delta``, ``grow``; {} when none).
    """

    task: str
    index: int
    seed: int
    candidates: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]
    conflicts: Mapping[str, Mapping[str, float]] | None
    entry: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Choice:
    """A decision: the task to bind to, the grow coefficient (None: none) and the slots to grow
    (None: the nucleus of the bound task's conflicts for `delta`)."""

    bind: str
    delta: float | None
    grow: tuple[str, ...] | None


def choose(decide, run: Any, task: str, index: int, candidates: Sequence[str], slot_names: Mapping[str, Sequence[str]],
           conflicts: Mapping[str, Mapping[str, float]] | None, entry: Mapping) -> Choice:
    """`decide`'s `Choice` for the situation of `task` (the `index`-th of `run`'s stream): bind
    `candidates`, their slots by name, the measured `conflicts`, the sequence `entry`. A decision
    rule's ValueError becomes the run's one-line error."""
    situation = Situation(task, index, run.seed, tuple(candidates),
                          {b: tuple(names) for b, names in slot_names.items()}, conflicts, entry)
    try:
        return decide(situation)
    except ValueError as e:
        raise run.error(str(e)) from None


def rsa_argmin(candidates: Sequence[str], conflicts: Mapping[str, Mapping[str, float]], norm: str = "l2") -> str:
    """``argmin_b ||C_{t,b}||`` over `candidates` (spec §2.3); ties go to the earlier task.

    >>> rsa_argmin(["t1", "t2"], {"t1": {"fc1": 0.5}, "t2": {"fc1": 0.5}})
    't1'
    """
    scores = {b: task_conflict(list(conflicts[b].values()), norm) for b in candidates}
    return min(candidates, key=lambda b: (scores[b], list(candidates).index(b)))


def rsa_decision(s: Situation, *, delta: float, norm: str = "l2") -> Choice:
    """L2BG's rule: bind to the RSA argmin, grow the nucleus for `delta` (spec §2.3-2.4); a
    `sequence` entry's ``bind``, ``delta`` and ``grow`` override.

    Raises:
        ValueError: `s` has no conflicts (no independent net was trained) and no entry names
            the bind target.

    >>> s = Situation("t3", 2, 0, ("t1", "t2"), {}, {"t1": {"fc1": 0.9}, "t2": {"fc1": 0.2}})
    >>> rsa_decision(s, delta=0.5)
    Choice(bind='t2', delta=0.5, grow=None)
    """
    if s.conflicts is None and not s.entry.get("bind"):
        raise ValueError(f"task {s.task!r} needs its independent net for RSA")
    target = s.entry.get("bind") or rsa_argmin(s.candidates, s.conflicts, norm)
    d = s.entry.get("delta")
    grow = s.entry.get("grow")
    return Choice(target, float(delta) if d is None else float(d), tuple(grow) if grow is not None else None)


def random_decision(s: Situation, *, n_grow: int | None = None,
                    plan: tuple[str, Sequence[str]] | None = None) -> Choice:
    """The ablation's rule (spec §5): a random bind target, a random number of slots (``n_grow``
    when given, capped at the number of slots) and random slots, seeded by (seed, index). With a
    `plan` entry ``(bind, slots)`` (from `random_plan`), exactly that. A `sequence` entry's
    ``bind`` and ``grow`` override; its ``delta`` is passed on.

    >>> s = Situation("t2", 1, 0, ("t1",), {"t1": ("fc1", "fc2")}, None)
    >>> random_decision(s, n_grow=2)
    Choice(bind='t1', delta=None, grow=('fc1', 'fc2'))
    >>> random_decision(s) == random_decision(s)
    True
    """
    if plan is not None:
        grow = s.entry.get("grow")
        return Choice(s.entry.get("bind") or plan[0], s.entry.get("delta"),
                      tuple(plan[1] if grow is None else grow))
    rng = random.Random(seed_of(s.seed, "l2bg-random", s.index))
    target = s.entry.get("bind") or rng.choice(list(s.candidates))
    names = list(s.slots[target])
    k = rng.randint(0, len(names)) if n_grow is None else min(int(n_grow), len(names))
    grow = s.entry.get("grow")
    if grow is None:
        grow = sorted(rng.sample(names, k), key=names.index)
    return Choice(target, s.entry.get("delta"), tuple(grow))


def sequence_entry(sequence: Sequence[Mapping] | None, task: str, index: int) -> dict:
    """The entry of a grow `sequence` for task `task` at `index` ({} when none): the entry naming
    the task, or (entries without ``task``) the ``index - 1``-th, the first bind-grow step first.

    >>> sequence_entry([{"bind": "t1"}], "t2", 1), sequence_entry([{"bind": "t1"}], "t3", 2)
    ({'bind': 't1'}, {})
    """
    if not sequence:
        return {}
    if "task" in sequence[0]:
        hits = [dict(e) for e in sequence if e["task"] == task]
        return hits[0] if hits else {}
    i = index - 1
    return dict(sequence[i]) if 0 <= i < len(sequence) else {}


def rsa_sample(task: Any, *, seed: int, index: int, n: int | None) -> torch.Tensor:
    """The RSA inputs of stream task `task`: `n` validation inputs drawn by (seed, index), in
    data order (all of them when `n` is None; training inputs when the validation set has fewer
    than 3)."""
    x = task.x_val if len(task.x_val) >= 3 else task.x_train
    g = torch.Generator().manual_seed(seed_of(seed, "l2bg-rsa", index))
    idx = torch.randperm(len(x), generator=g)[:n].sort().values
    return x[idx]



def ordered_grow(names: Sequence[str], probs: Sequence[float], k: int, order: str = "conflict") -> list[str]:
    """The `k` slots to grow among `names` (route order) with conflict distribution `probs`.

    order: ``conflict`` (the k most conflicting: the nucleus, spec §2.4), ``reverse`` (the k
    least conflicting), ``top`` (the k deepest), ``bottom`` (the k shallowest). Returned in
    the order they were picked.

    >>> names, probs = ["fc1", "fc2", "fc3"], [0.2, 0.3, 0.5]
    >>> [ordered_grow(names, probs, 2, o) for o in ("conflict", "reverse", "top", "bottom")]
    [['fc3', 'fc2'], ['fc1', 'fc2'], ['fc3', 'fc2'], ['fc1', 'fc2']]
    """
    if order not in GROW_ORDERS:
        raise ValueError(f"grow_order must be one of {GROW_ORDERS} (got {order!r})")
    if not 0 <= k <= len(names):
        raise ValueError(f"cannot grow {k} of {len(names)} slots")
    if order == "conflict":
        idx = ranking(probs)[:k]
    elif order == "reverse":
        idx = ranking(probs)[::-1][:k]
    elif order == "top":
        idx = list(range(len(names)))[::-1][:k]
    else:
        idx = list(range(k))
    return [names[i] for i in idx]


def random_plan(
    tasks: Sequence[str], slot_sizes: Mapping[str, int], *, target: int, tol: float = 0.02, seed: int = 0,
    candidates: Sequence[str] | None = None, max_draws: int = 200_000,
) -> list[tuple[str, tuple[str, ...]]]:
    """A random grow plan whose grown parameters total `target` within `tol` (relative).

    One ``(bind target, slots)`` per bind-grow step (``tasks[1:]``): the target uniform over the
    earlier tasks (within `candidates` when given), the number of slots uniform in 0..|L|, the
    slots uniform among those of that size; whole plans are drawn (seeded by `seed`) until one
    grows ``|sum - target| <= tol * target`` parameters (rejection sampling, so every accepted
    plan is a draw of the unmatched random growth conditioned on its size). `slot_sizes`: the
    parameters of each slot (the same for every task-net: one template, spec §1).

    Raises:
        ValueError: no plan within `max_draws` (with the closest total seen).

    >>> p = random_plan(["t1", "t2", "t3"], {"a": 10, "b": 10, "c": 25}, target=20, seed=1)
    >>> sum(sum({"a": 10, "b": 10, "c": 25}[s] for s in grow) for _, grow in p)
    20
    """
    names = list(slot_sizes)
    if target < 0 or not 0 <= tol < 1:
        raise ValueError(f"target must be >= 0 and tol in [0, 1) (got {target!r}, {tol!r})")
    rng = random.Random(seed_of(seed, "l2bg-random-plan", tuple(tasks), target))
    best = None
    for _ in range(max_draws):
        plan, total = [], 0
        for i in range(1, len(tasks)):
            cands = [t for t in tasks[:i] if candidates is None or t in candidates] or list(tasks[:i])
            bind = rng.choice(cands)
            k = rng.randint(0, len(names))
            grow = tuple(sorted(rng.sample(names, k), key=names.index))
            total += sum(slot_sizes[s] for s in grow)
            plan.append((bind, grow))
        if abs(total - target) <= tol * target:
            return plan
        if best is None or abs(total - target) < abs(best - target):
            best = total
    raise ValueError(f"no random plan grows {target} parameters within {tol:.0%} in {max_draws} draws "
                     f"(closest: {best}); slot sizes {dict(slot_sizes)}")
