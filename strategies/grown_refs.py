"""GROWN's target accuracy (spec §2.6): the better of two reference runs on the full-size backbone,
*Scratch* (a fresh net trained on task t alone) and *Fine-tune* (task 1 from scratch, then the
trunk fine-tuned task after task, with a new head each time).

The references are a pure function of (stream, task, backbone, train config, seed), so they are
memoised: in this process (the fine-tune chain's latest trunk, so task t continues from task t-1)
and, with ``cache_dir``, in ``cache_dir/grown_refs.json`` (accuracies by a digest of everything
they depend on), which runs of several GROWN variants on one stream share. A cache never changes a
number, only whether it is computed again; without the chain state in memory (a resumed run) the
chain is recomputed from task 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import attrs
from jointnet.execution.compile import compile_net
from jointnet.experiments.options import json_safe
from jointnet.experiments.strategy import TaskRun, scratch_net
from jointnet.experiments.trainer import accuracy, train_task
from jointnet.graph.net import JointNet

__all__ = ["reference_key", "references", "CACHE_FILE"]

CACHE_FILE = "grown_refs.json"
_CHAIN: dict[str, dict] = {}  # fine-tune chain digest -> the trunk after that task (latest few)
_ACC: dict[str, float] = {}  # reference digest -> accuracy (this process)
_CONFIG_SKIP = ("progress", "device", "amp", "eval_batch_size")


def _fingerprint(task: Any) -> list:
    out = [task.name, task.n_classes]
    for x, y in (task.train, task.val):
        out += [list(x.shape), round(float(x.double().sum()), 6), int(y.sum())]
    return out


def reference_key(run: TaskRun, layers: list, kind: str, index: int, split: str) -> str:
    """The digest of what reference `kind` (``scratch`` / ``finetune``) of task `index` depends
    on: the stream's tasks up to it (names, shapes, data sums), the backbone, the train config
    (less progress/device fields), the seed and the split."""
    cfg = {k: v for k, v in attrs.asdict(run.config).items() if k not in _CONFIG_SKIP}
    first = index if kind == "scratch" else 0
    tasks = [_fingerprint(run.stream.tasks[i]) for i in range(first, index + 1)]
    blob = json.dumps([kind, run.stream.name, run.seed, tasks, json_safe(layers), cfg, split], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_cache(cache_dir: str | None) -> dict:
    if not cache_dir:
        return {}
    path = Path(cache_dir) / CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_dir: str | None, key: str, value: float) -> None:
    if not cache_dir:
        return
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = _read_cache(cache_dir)
    data[key] = value
    tmp = folder / f".{CACHE_FILE}.{secrets.token_hex(6)}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, folder / CACHE_FILE)


def _trunk_state(net: JointNet, store) -> dict:
    head = next(iter(net.tasks.values())).head
    return {(n, p.name, p.block): store[p.key].detach().clone()
            for n in net.nodes if n != head for p in net.node(n).params}


def _train_one(run: TaskRun, layers: list, index: int, seed: int, state: dict | None, split: str):
    task = run.stream.tasks[index]
    net, store = scratch_net(layers, task, seed=seed, device=run.config.device)
    if state is not None:
        head = net.tasks[task.name].head
        for n in net.nodes:
            if n == head:
                continue
            for p in net.node(n).params:
                store.update(p.key, state[(n, p.name, p.block)])
    train_task(net, store, task.name, task.train, task.val, run.config, task_index=index)
    m = compile_net(net, store, task.name)
    x, y = getattr(task, split)
    acc = accuracy(m, x, y, run.config.eval_batch_size, run.config.device)
    return acc, _trunk_state(net, store)


def _seed(run: TaskRun, index: int) -> int:
    return (run.seed * 7919 + index * 31 + 17) % (1 << 31)


def _remember(key: str, acc: float, state: dict | None = None) -> None:
    _ACC[key] = acc
    if state is not None:
        _CHAIN[key] = state
        while len(_CHAIN) > 4:  # the chain needs only its latest state; a few streams at once
            _CHAIN.pop(next(iter(_CHAIN)))


def _chain(run: TaskRun, layers: list, index: int, split: str) -> tuple[float, dict]:
    """The fine-tune chain at task `index`: (its accuracy, the trunk after it); task 1 is the
    scratch run (the same net and seed)."""
    key = reference_key(run, layers, "finetune", index, split)
    if key in _CHAIN:
        return _ACC[key], _CHAIN[key]
    prev = _chain(run, layers, index - 1, split)[1] if index > 0 else None
    acc, state = _train_one(run, layers, index, _seed(run, index), prev, split)
    _remember(key, acc, state)
    if index == 0:
        _remember(reference_key(run, layers, "scratch", 0, split), acc)
    return acc, state


def _lookup(key: str, cache_dir: str | None) -> float | None:
    if key in _ACC:
        return _ACC[key]
    value = _read_cache(cache_dir).get(key)
    if value is not None:
        _ACC[key] = float(value)
    return _ACC.get(key)


def references(run: TaskRun, layers: list, which: str, split: str = "val",
               cache_dir: str | None = None) -> dict[str, float | None]:
    """The reference accuracies of `run`'s task on `split` that target `which` needs
    (``max``: both, ``scratch``, ``finetune``) and the target, their maximum.

    Returns ``{"scratch": a | None, "finetune": b | None, "target": t}``.
    """
    index = run.index
    out: dict[str, float | None] = {"scratch": None, "finetune": None}
    for kind in ("scratch", "finetune"):
        if which not in ("max", kind):
            continue
        key = reference_key(run, layers, kind, index, split)
        acc = _lookup(key, cache_dir)
        if acc is None:
            if kind == "finetune" or index == 0:
                acc = _chain(run, layers, index, split)[0]
            else:
                acc, _ = _train_one(run, layers, index, _seed(run, index), None, split)
                _remember(key, acc)
            _write_cache(cache_dir, key, acc)
        out[kind] = float(acc)
    out["target"] = max(v for v in out.values() if v is not None)
    return out
