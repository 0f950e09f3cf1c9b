"""L2BG, "Learn to Bind and Grow Neural Structures" (anonymous draft; spec `specs/L2BG.md`).

Every task-net is the same backbone template, a chain of *slots* (spec §1). A new task `t`:

1. trains its **independent net** ``G_t^⊥`` in a scratch net and store
   (`jointnet.experiments.strategy.scratch_net`), never in the JointNet (spec §8 rewrite 1);
2. runs a sample of its validation inputs through the *live* task-net of every earlier task
   ``b'`` and through ``G_t^⊥``, captures every slot's output with the one execution API
   (`jointnet.execution.run`, eval mode, the task's inference context), and scores each slot
   with the RSA dissimilarity ``rho`` of the two activation sets (`rsa`, spec §2.2);
3. **binds** to ``b = argmin_b' ||C_{t,b'}||`` (`task_conflict`, `rsa_decision`, spec §2.3);
4. **grows** the *nucleus* of the normalised conflicts of ``b`` for its grow coefficient
   ``delta_t``: the smallest top-ranked prefix whose mass reaches ``delta_t`` (`normalise`,
   `nucleus`, spec §2.4); each grown slot is a `clone_node` of ``b``'s node for ``t``;
5. adds its head and trains: nodes only ``t`` uses at ``lr``, nodes it shares at
   ``shared_lr_scale * lr`` (spec §2.5); then records every learned task's validation accuracy
   (Algorithm 1 line 10).

Steps 3-4 are `bind_grow_step`, a composite of logged primitives (`add_task`, `bind`,
`add_head`, `clone_node`, `set_lr_scale` / `freeze`, `annotate`), so ``jointnet log`` shows each
of them. The decisions are pure functions tested with properties: `rdm`, `rsa`,
`task_conflict`, `normalise`, `nucleus`, `multitask_gain`, and the two decision rules
`rsa_decision` (L2BG) and `random_decision` (the ablation), each a function of a `Situation`
returning a `Choice`. `bind_grow_task` is the imperative shell both strategies' ``step`` call
with their rule.

Modules: `strategies.l2bg_rsa` (pure numeric functions), `strategies.l2bg_decide` (decision
rules and the controls' rules), `strategies.l2bg_graph` (slots, activations, the composite
rewrite, grow log, version counter), `strategies.l2bg_channels` (channel-level growth),
`strategies.l2bg_views` (``jointnet inspect``), `strategies.l2bg_search` (grow-sequence
search); this module holds the options, the independent net and the shell, and re-exports the
rest.

**Slots.** A slot is one weight layer (Conv2d or Linear) with what follows it up to the next
slot: its activation, pooling, flatten. With ``bn_slots=True`` every BatchNorm is a slot of its
own (spec §2.4: the MLT experiment grew separate BN layers); with False a BatchNorm belongs to
the slot of the weight layer before it and is grown with it. A slot's output is the output of
the last activation in it (``record="post"``, spec §2.2), or of its last parametric node
(``record="pre"``, spec §7.2). A slot is named after its *template node*, the node of the first
task-net it descends from through ``cloned_from`` (``fc2`` for ``fc2``, ``fc2.t3``, ...): that
name is the bijection between task-nets (spec §1). Per-task heads are never slots (spec §7.6);
a shared head (``head="shared"``) is the last slot, named ``head``, and can be grown.

**Provenance** (spec §8 node metadata) is data on the net, so ``jointnet inspect`` and
``jointnet log`` show why each layer was grown:

- task annotation ``l2bg``: ``bound_to``, ``argmin`` (the RSA choice, which a given sequence
  may override), ``delta``, ``conflicts`` (``{b': {"slots": {slot: rho}, "norm": CC}}``),
  ``slots`` (per slot of the bound route: ``slot``, ``node``, ``conflict``, ``prob``, ``rank``,
  ``in_nucleus``, ``grown``), ``nucleus`` and ``grown`` (slot names), ``independent``
  (``G_t^⊥``'s ``val_acc``, ``test_acc``, ``n_val``), ``first`` (``fresh`` / ``adopt``, first task only);
- task annotation ``l2bg.val_acc``: every learned task's validation accuracy after training `t`;
- node annotation ``l2bg`` on every grown node: ``task``, ``slot``, ``template``,
  ``bound_to``, ``cloned_from``, ``conflict``, ``prob``, ``rank``, ``delta``, ``in_nucleus``, ``init``;
- net annotation ``l2bg.grow_log``: the grow sequence, one ``{"task", "bind", "delta", "grow"}``
  per task (spec §2.7, §8 graph metadata); `grow_sequence` reads it, `replay_sequence` in
  `strategies.l2bg_search` rebuilds the net from it.

Options of `L2BG` (defaults first; the spec section of each open choice in brackets; every
option is validated when the strategy is made):

- ``backbone``: the template (default: `jointnet.experiments.strategy.default_backbone`).
- ``delta`` = 0.55: grow coefficient in [0, 1]; a float for every task or a list with one entry
  per bind-grow step (task 2, 3, ...; the last entry repeats). [§2.4; 0.55 is the paper's
  "balanced" Pareto solution, §5 — the paper fixes no default.]
- ``rdm`` = ``"pearson"`` | ``"euclidean"``; ``compare`` = ``"spearman"`` | ``"pearson"``:
  the RSA variant [§2.2, §7.2].
- ``rsa_samples`` = 200: validation inputs per RSA [§7.2: 100-500 on CPU]; None = every
  validation input (the benchmark's choice: an RSA on 40 images is noise, README).
- ``record`` = ``"post"`` | ``"pre"``: which output of a slot RSA compares [§2.2, §7.2].
- ``norm`` = ``"l2"`` | ``"l1"`` | ``"mean"``: the task-level conflict norm [§2.3].
- ``normalise`` = ``"plain"`` | ``"softmax"``, ``temperature`` = 1.0 [§2.4].
- ``tol`` = 1e-9: the nucleus takes mass ``>= delta - tol`` [§2.4]; ``delta >= 1 - tol``
  grows every slot, ``delta = 0`` none [§2.4 edge cases].
- ``init`` = ``"copy"`` | ``"fresh"`` | ``"from_independent"``: a grown slot starts from the
  bound task's tensors, a fresh initialisation, or ``G_t^⊥``'s tensors of that slot [§2.4, §7.4].
- ``head`` = ``"per_task"`` | ``"shared"``: a new head per task, or one softmax shared by all
  tasks (the paper's permuted-MNIST setting; every task must then have the same number of
  classes) [§1, §2.3, §7.6].
- ``shared_lr_scale`` = 0.1: learning-rate factor of the nodes the new task shares with earlier
  tasks; 0 freezes them (the frozen baseline; BatchNorm statistics freeze too), 1 is plain
  fine-tuning [§2.5, §6, §7.5].
- ``bn_slots`` = True: BatchNorm layers are slots of their own [§2.4, §7.2].
- ``first`` = ``"fresh"`` | ``"adopt"``: the first task gets a fresh task-net trained like any
  other, or adopts its trained ``G_1^⊥`` (no second training) [§2.3, §7.7].
- ``candidates`` = None: the bind candidates ``B`` (task names); None = every earlier task
  [§2.3]. A task with no learned candidate is an error [§7.7].
- ``sequence`` = None: a fixed grow sequence overriding the RSA argmin and ``delta``: a list of
  dicts with optional keys ``bind`` (task name), ``delta`` (float), ``grow`` (slot names, which
  then replace the nucleus) and ``conflicts`` (``{slot: value}``, used instead of the measured
  conflicts of the bound task for the nucleus; no depth correction is applied to them; the
  "conflicts shuffled across tasks" control) [ours]. Entries with a ``task`` key apply to that
  task; entries without one apply to the bind-grow steps in order (the second task first)
  [§2.7]. A task whose entry gives ``bind`` and ``conflicts`` or ``grow`` needs no RSA, so
  it trains no independent net unless ``reference`` asks.
- ``reference`` = True: train ``G_t^⊥`` even when no decision needs it (first task), so the
  multi-task gain has its reference [§2.7, §7.8].
- ``independent_config`` = None: `TrainConfig` fields overriding the run's for ``G_t^⊥``.
- ``cache_dir`` = None: a directory where trained independent nets are kept as snapshots, keyed
  by a digest of the task data, template, seed and config, so that search trials (and parallel
  workers) train each one once. ``G_t^⊥`` does not depend on the grow sequence [§7.9].
- ``old_heads`` = ``"drift"`` | ``"lwf"``: what protects earlier tasks' heads when shared
  layers move. ``drift`` is the spec (§2.5: no replay, no regularisation, no distillation):
  old heads stay as they were while the layers under them train at ``shared_lr_scale``.
  ``lwf`` [ours, a deviation]: while task t trains, every earlier task whose route shares a
  trained node with t has its outputs distilled from a frozen copy of the net taken before t
  (`strategies.lwf.LwFHooks`: KL at temperature ``lwf_T``, weight ``lwf_lam``), and its head
  trains on that loss. Why distillation and not refitting or freezing the old heads: refitting
  needs the old tasks' data (gone in the streaming regime, spec §1), and freezing them is what
  ``drift`` already does (the heads are not on t's route); the evidence (README: d=0 at 0.1x is
  below plain fine-tuning) is that stale heads over moving features are the loss, and LwF is the
  data-free way to keep old outputs while the features move. Off when ``shared_lr_scale`` is 0
  (nothing shared moves).
- ``lwf_lam`` = 1.0, ``lwf_T`` = 2.0: LwF's weight and temperature (its paper's values).

Options of `L2BG` only:

- ``grow_order`` = ``"conflict"`` (the spec: the nucleus, most conflicting first) |
  ``"reverse"`` | ``"top"`` | ``"bottom"``: with the nucleus size k for ``delta``, grow the k
  least conflicting slots, or the k deepest, or the k shallowest (`ordered_grow`) [ours: the
  controls "reverse-RSA order" and "depth prior", each at RSA's bind target and RSA's k].
- ``depth_correction`` = ``"none"`` (the spec) | ``"subtract"`` | ``"ratio"`` [ours, a
  deviation]: correct each slot's conflict for depth before the nucleus (binding still uses the
  raw conflicts, spec §2.3): the baseline ``B(l)`` is the RSA dissimilarity between an untrained
  net of the template (seeded by run seed and task index) and ``G_t^⊥`` on the same inputs;
  ``subtract`` grows by ``max(0, C(l) - B(l))``, ``ratio`` by ``C(l) / B(l)``
  (`depth_corrected`). Evidence: raw conflicts rise with depth even against an untrained net,
  so the nucleus always grows the top first (README).
- ``granularity`` = ``"layer"`` (the spec's unit of growth) | ``"channels"``, with
  ``channel_groups`` = 4: grow groups of output channels of a slot instead of whole layers
  (spec §2.4 "finer granularity", §8 rewrite 7; `strategies.l2bg_channels`): the units are
  ``channel_groups`` contiguous groups of each slot's channels, a unit's conflict is the RSA of
  its channels' activations, the nucleus runs over every unit, and a grown unit is a task-owned
  channel group (`widen`) copied from the channels it replaces, which are masked off for the
  task. Needs per-task heads; BatchNorm layers belong to the slot of the layer before them.

Options of `RandomGrowth` only: ``n_grow`` (below), ``match_params`` = None and
``param_tol`` = 0.02: with ``match_params`` (an int), the grow plan of the whole stream is
drawn by rejection sampling over bind targets and slot subsets until the grown parameters total
``match_params`` within ``param_tol`` (`random_plan`) [ours: the parameter-matched control;
`grown_params` of the guided run is the target].

Version counter: see `strategies.l2bg_graph` (node annotation ``l2bg.version``, spec §8).
Adding it (annotate rewrites after every training) changed the lineage, so every later fresh
initial value of an L2BG run differs from runs made before it; the numbers in README are from
after the change.

The multi-task gain (`multitask_gain`, `net_gain`) is the spec's corrected form [§2.7]:
``Delta = (100/|T|) sum_t (E_ind,t - E_t) / E_ind,t`` in percent, positive when the JointNet's
validation errors are lower than the independent nets'. ``E_ind,t`` is floored at ``1/|V_t|``
(the smallest error the validation set can measure) so a perfect independent net does not
divide by zero [ours]. Relative errors explode when an independent net is nearly perfect (easy
two-class tasks), so `net_gain` also offers ``metric="accuracy"``, the relative accuracy change
of Maninis et al. (the formula the paper adapts) [ours].

`l2bg-random` (`RandomGrowth`) is the paper's ablation (§5): the shared options and the same
shell with another decision rule, `random_decision`: a random bind target, a random number of
slots, random slots, seeded by (run seed, task index); ``n_grow`` fixes the number (an int, or a
list per bind-grow step). It trains no independent net unless ``reference`` (default False
here) or ``init="from_independent"`` or ``first="adopt"`` asks; with one, the RSA conflicts are
still measured and recorded as provenance (``in_nucleus`` is then None unless a sequence entry
gives a ``delta``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from jointnet import backbones
from jointnet.errors import JointNetError
from jointnet.execution.compile import compile_net
from jointnet.execution.optim import train_plan
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import (
    TaskRun, backbone_option, default_backbone, per_task, scratch_net, teacher_store,
)
from jointnet.experiments.trainer import Hooks
from jointnet.graph import annotate
from jointnet.graph.net import JointNet
from strategies.l2bg_decide import (
    Choice, Situation, choose, ordered_grow, random_decision, random_plan, rsa_argmin, rsa_decision,
    rsa_sample, seed_of, sequence_entry,
)
from strategies.l2bg_graph import (
    GROW_LOG, PROV, VAL_ACC, VERSION, Slot, bind_grow_step, bump_versions, grow_sequence, grown_params,
    log_entry, net_gain, node_versions, slot_conflicts, slot_outputs, slot_params, task_slots, template_of,
    tensor_state,
)
from strategies.l2bg_options import (
    _count, _count_or_none, _delta, _n_grow, _names_or_none, _number, _one_of, _rsa_samples, _sequence, _str_or_none,
    _train_fields,
)
from strategies.l2bg_rsa import (
    accuracy_gain, depth_corrected, multitask_gain, normalise, nucleus, ranking, rdm, rsa,
    task_conflict,
)

__all__ = [
    "PROV", "VAL_ACC", "GROW_LOG", "VERSION", "Slot", "Situation", "Choice", "IndependentNet", "BindGrowOptions",
    "L2BG", "RandomGrowth", "rdm", "rsa", "task_conflict", "normalise", "ranking", "nucleus", "depth_corrected",
    "rsa_argmin", "rsa_decision", "random_decision", "random_plan", "ordered_grow", "rsa_sample", "sequence_entry",
    "needs_independent", "independent_net", "template_of", "task_slots", "slot_outputs", "slot_params",
    "slot_conflicts", "bind_grow_step", "bind_grow_task", "grow_sequence", "grown_params", "net_gain",
    "multitask_gain", "accuracy_gain", "node_versions", "old_head_hooks",
]


def needs_independent(opts: "BindGrowOptions", index: int, *, rsa: bool, entry: Mapping | None = None) -> bool:
    """Whether the task at `index` trains ``G_t^⊥``: RSA needs it from the second task on (when
    the rule is RSA and the task's sequence `entry` does not fix both the bind target and the
    slots or conflicts), and ``reference``, ``first="adopt"`` and ``init="from_independent"``
    ask for it on every task."""
    entry = entry or {}
    fixed = bool(entry.get("bind")) and (entry.get("grow") is not None or entry.get("conflicts") is not None)
    return ((rsa and index > 0 and not fixed) or opts.reference or opts.first == "adopt"
            or opts.init == "from_independent")


# ---- the independent net ---------------------------------------------------------------------


def _tensor_digest(h, t: torch.Tensor) -> None:
    h.update(str(tuple(t.shape)).encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())


@attrs.frozen
class IndependentNet:
    """``G_t^⊥``: a scratch net and store (never part of the JointNet) and ``info``:
    ``{"val_acc", "test_acc", "n_val"}``."""

    net: JointNet
    store: ParamStore
    info: dict


def _layers(opts: "BindGrowOptions", task: Any) -> list:
    return list(opts.backbone or default_backbone(task.input_shape))


def independent_net(opts: "BindGrowOptions", run: TaskRun) -> IndependentNet:
    """Train (or load from ``opts.cache_dir``) ``G_t^⊥`` of `run`'s task in a scratch net and
    store, seeded by (run seed, task index), with the run's config under ``independent_config``."""
    task, index = run.task, run.index
    layers = _layers(opts, task)
    config = attrs.evolve(run.config, **(opts.independent_config or {}))
    seed = seed_of(run.seed, "l2bg-independent", index)
    net, store = scratch_net(layers, task, seed=seed, device=config.device)
    path = None
    if opts.cache_dir is not None:
        h = hashlib.blake2b(digest_size=16)
        cfg = attrs.asdict(config)
        cfg.pop("progress", None)
        h.update(repr((repr(layers), sorted(cfg.items()), seed, task.name, index, task.n_classes)).encode())
        for t in (*task.train, *task.val):
            _tensor_digest(h, t)
        path = Path(opts.cache_dir) / f"independent-{h.hexdigest()}.jn"
    cached = None
    if path is not None and path.exists():
        from jointnet.persistence import snapshot

        try:
            cached_net, cached = snapshot.load(path, device=config.device)
            if cached_net.structure() != net.structure():
                cached = None
        except JointNetError:
            cached = None
    # A run of the same task over the scratch store: `train` and `accuracy` work there.
    scratch = attrs.evolve(run, store=store if cached is None else cached, config=config, results=[])
    if cached is None:
        scratch.train(net, say="independent net")
        if path is not None:
            from jointnet.persistence import snapshot

            path.parent.mkdir(parents=True, exist_ok=True)
            snapshot.save(path, net, scratch.store)
    info = {
        "val_acc": scratch.accuracy(net, task, "val") if len(task.y_val) else 0.0,
        "test_acc": scratch.accuracy(net, task, "test") if len(task.y_test) else 0.0,
        "n_val": int(len(task.y_val)),
    }
    return IndependentNet(net, scratch.store, info)


# ---- the imperative shell --------------------------------------------------------------------


def old_head_hooks(net: JointNet, store: ParamStore, task: str, *, lam: float = 1.0, T: float = 2.0) -> Hooks | None:
    """LwF hooks protecting the earlier tasks whose route shares a trained node with `task`
    (``old_heads="lwf"``): their outputs are distilled from a frozen copy of the net taken now,
    and their heads train on that loss (`strategies.lwf.LwFHooks`). None when no earlier task
    shares a trained node with `task`. Call after the rewrites of `task`, before training it.
    """
    from strategies.lwf import LwFHooks

    store.realize(net)
    shared = {n for n in net.route(task) if net.node(n).params and net.users(n) != frozenset({task})
              and not net.policy_for(task, n).frozen and net.policy_for(task, n).lr_scale > 0}
    old = [t for t in net.tasks if t != task and shared & set(net.route(t))]
    if not old:
        return None
    teacher = compile_net(net, teacher_store(net, store, old), old, cache=False)
    teacher.eval()
    student = compile_net(net, store, old + [task])
    return LwFHooks(student, teacher, task, old, lam=lam, T=T, t2_scale=True, train_old_heads=True)


def bind_grow_task(opts: "BindGrowOptions", net: JointNet, run: TaskRun, *,
                   decide: Callable[[Situation], Choice], rsa: bool) -> JointNet:
    """One task of L2BG or its ablation: the first task builds the template, a later one binds
    and grows as `decide` says; then train (with `old_head_hooks` when ``old_heads="lwf"``),
    bump the version of every node the training changed, and record every learned task's
    validation accuracy.

    `rsa` says whether `decide` needs the RSA conflicts (so the independent net from the second
    task on). Returns the new net; the tensors it adds go in ``run.store``.
    """
    task, index = run.task, run.index
    entry = sequence_entry(opts.sequence, task.name, index)
    ind = independent_net(opts, run) if needs_independent(opts, index, rsa=rsa, entry=entry) else None
    if not net.tasks:
        net = _first_task(opts, net, run, ind)
    elif getattr(opts, "granularity", "layer") == "channels":
        from strategies.l2bg_channels import bind_grow_channels

        net = bind_grow_channels(opts, net, run, ind, entry, decide)
    else:
        net = _bind_grow(opts, net, run, ind, entry, decide)
    prov = net.tasks[task.name].annotations.get(PROV) or {}
    if prov.get("first") != "adopt":  # an adopted G_1 is the trained independent net (spec §2.3)
        hooks = None
        if opts.old_heads == "lwf" and index > 0 and opts.shared_lr_scale > 0:
            hooks = old_head_hooks(net, run.store, task.name, lam=opts.lwf_lam, T=opts.lwf_T)
        run.store.realize(net)
        if hooks is None and not train_plan(net, run.store, task.name, run.config.lr).groups:
            # Everything the task uses is shared and frozen (delta 0, shared_lr_scale 0 and a
            # shared head): there is nothing to train, and no node changes.
            if run.echo is not None:
                run.echo(f"task {task.name}: every tensor it uses is frozen; nothing to train")
        else:
            before = tensor_state(net, run.store)
            run.train(net, hooks=hooks)
            net = bump_versions(net, run.store, before)
    else:  # the adopted G_1's training is this task-net's one training phase
        net = bump_versions(net, run.store, {}, nodes=[n for n in net.route(task.name) if net.node(n).params])
    # Algorithm 1 line 10: validation accuracy of every task learned so far.
    accs = {}
    for t in run.stream.tasks[: index + 1] if run.stream is not None else []:
        if t.name in net.tasks:
            accs[t.name] = run.accuracy(net, t, "val") if len(t.y_val) else 0.0
    return annotate(net, key=VAL_ACC, value=accs, task=task.name)


def _first_task(opts: "BindGrowOptions", net: JointNet, run: TaskRun, ind: IndependentNet | None) -> JointNet:
    task = run.task
    net = backbones.build(_layers(opts, task), task=task.name, n_classes=task.n_classes, net=net)
    if opts.first == "adopt":
        if ind is None:  # pragma: no cover - needs_independent asks for it
            raise run.error("first='adopt' needs the independent net")
        if ind.net.structure() != net.structure():  # pragma: no cover - same template, same build
            raise run.error("the independent net differs from the first task-net")
        # Same template, same log: the task-net's tensors have G_1's keys; put copies of them.
        for key in sorted(run.store.keys_of(ind.net)):
            t = ind.store[key]
            run.store.put(key, t.detach().clone(), trainable=isinstance(t, nn.Parameter))
    slots = task_slots(net, task.name, bn_slots=opts.bn_slots, head_slot=opts.head == "shared")
    prov: dict[str, Any] = {"bound_to": None, "delta": None, "grown": [s.name for s in slots],
                            "nucleus": None, "first": opts.first}
    if ind is not None:
        prov["independent"] = ind.info
    net = annotate(net, key=PROV, value=prov, task=task.name)
    return log_entry(net, {"task": task.name, "bind": None, "delta": None, "grow": prov["grown"]})


@attrs.frozen
class Measured:
    """What the RSA step of a bind-grow measured: the candidates' per-slot conflicts ``{b: {slot:
    rho}}`` (None without an independent net) and the depth baseline ``{slot: rho}`` of an
    untrained net against ``G_t^⊥`` (None without ``depth_correction``)."""

    conflicts: dict | None
    baseline: dict | None


def measure(opts: "BindGrowOptions", net: JointNet, run: TaskRun, ind: IndependentNet | None,
            targets: list[str], slots: Mapping[str, list[Slot]]) -> Measured:
    """RSA of every target's live slots against ``G_t^⊥`` on the task's RSA sample (spec §2.2),
    and the depth baseline when ``depth_correction`` asks for it."""
    if ind is None:
        return Measured(None, None)
    task, index = run.task, run.index
    head_slot = opts.head == "shared"
    x = rsa_sample(task, seed=run.seed, index=index, n=opts.rsa_samples).to(run.config.device)
    t_slots = task_slots(ind.net, task.name, bn_slots=opts.bn_slots, head_slot=head_slot)
    acts_t = slot_outputs(ind.net, ind.store, task.name, x, t_slots, opts.record)
    conflicts = {b: slot_conflicts(slot_outputs(net, run.store, b, x, slots[b], opts.record), acts_t,
                                   rdm_kind=opts.rdm, compare=opts.compare) for b in targets}
    baseline = None
    if getattr(opts, "depth_correction", "none") != "none":
        rnd_net, rnd_store = scratch_net(_layers(opts, task), task, seed=seed_of(run.seed, "l2bg-random-net", index),
                                         device=run.config.device)
        acts_r = slot_outputs(rnd_net, rnd_store, task.name, x, t_slots, opts.record)
        baseline = slot_conflicts(acts_r, acts_t, rdm_kind=opts.rdm, compare=opts.compare)
    return Measured(conflicts, baseline)


def _bind_grow(opts: "BindGrowOptions", net: JointNet, run: TaskRun, ind: IndependentNet | None, entry: dict,
               decide: Callable[[Situation], Choice]) -> JointNet:
    task, index = run.task, run.index
    learned = list(net.tasks)
    candidates = [b for b in learned if opts.candidates is None or b in opts.candidates]
    if not candidates:
        raise run.error(f"no bind candidate: candidates={opts.candidates!r}, learned tasks are {learned} "
                        "(spec §7.7)")
    if entry.get("bind") is not None and entry["bind"] not in learned:
        raise run.error(f"cannot bind to {entry['bind']!r}; learned tasks are {learned}")
    head_slot = opts.head == "shared"
    targets = list(dict.fromkeys(candidates + ([entry["bind"]] if entry.get("bind") else [])))
    slots = {b: task_slots(net, b, bn_slots=opts.bn_slots, head_slot=head_slot) for b in targets}
    measured = measure(opts, net, run, ind, targets, slots)
    conflicts = measured.conflicts
    choice = choose(decide, run, task.name, index, candidates,
                    {b: [s.name for s in slots[b]] for b in targets}, conflicts, entry)
    target, delta = choice.bind, choice.delta
    names = [s.name for s in slots[target]]
    # The per-slot values the nucleus runs on: a sequence entry's, else the measured conflicts of
    # the bound task, corrected for depth when asked (binding used the raw ones, spec §2.3).
    used = None
    if entry.get("conflicts") is not None:
        used = {s: float(entry["conflicts"][s]) for s in names if s in entry["conflicts"]}
        if len(used) != len(names):
            raise run.error(f"sequence entry conflicts name slots {sorted(entry['conflicts'])}; slots are {names}")
    elif conflicts is not None:
        used = dict(conflicts[target])
        if measured.baseline is not None:
            used = depth_corrected(used, measured.baseline, opts.depth_correction)
    probs = ranks = nuc = None
    if used is not None:
        probs = normalise([used[s] for s in names], opts.normalise, opts.temperature)
        ranks = {names[i]: r for r, i in enumerate(ranking(probs))}
        nuc = [names[i] for i in nucleus(probs, delta, opts.tol)] if delta is not None else None
    grow = choice.grow
    order = getattr(opts, "grow_order", "conflict")
    if grow is None:
        if nuc is None:
            raise run.error("neither a grow list nor a nucleus")
        grow = ordered_grow(names, probs, len(nuc), order)
    unknown = [g for g in grow if g not in names]
    if unknown:
        raise run.error(f"no slot(s) {unknown}; slots are {names}")
    # Grown slots are listed in ranking order (slot order without conflicts).
    grow = sorted(grow, key=lambda s: ranks[s]) if ranks else sorted(grow, key=names.index)
    prov: dict[str, Any] = {"bound_to": target, "delta": delta, "grown": list(grow), "nucleus": nuc}
    if order != "conflict":
        prov["grow_order"] = order
    node_prov: dict[str, dict] = {}
    if used is not None:
        in_nuc = {s: None if nuc is None else s in nuc for s in names}
        by_slot = {s.name: s for s in slots[target]}
        raw = conflicts[target] if conflicts is not None else used
        if conflicts is not None:
            prov["argmin"] = rsa_argmin(candidates, conflicts, opts.norm)
            prov["conflicts"] = {b: {"slots": dict(c), "norm": task_conflict(list(c.values()), opts.norm)}
                                 for b, c in conflicts.items()}
        if measured.baseline is not None:
            prov["depth_baseline"] = dict(measured.baseline)
        if used is not raw:
            prov["used_conflicts"] = dict(used)
        prov["slots"] = [
            {"slot": s, "node": by_slot[s].nodes[0], "conflict": raw[s], "prob": p,
             "rank": ranks[s], "in_nucleus": in_nuc[s], "grown": s in grow}
            for s, p in zip(names, probs)
        ]
        for s, p in zip(names, probs):
            node_prov[s] = {"conflict": raw[s], "prob": p, "rank": ranks[s], "in_nucleus": in_nuc[s]}
    if ind is not None:
        prov["independent"] = ind.info
    net = bind_grow_step(
        net, task=task.name, to=target, grow=grow, n_classes=task.n_classes, init=opts.init,
        head=opts.head, shared_lr_scale=opts.shared_lr_scale, bn_slots=opts.bn_slots,
        provenance=prov, node_provenance=node_prov, delta=delta,
    )
    if opts.init == "from_independent":
        if ind is None:  # pragma: no cover - needs_independent asks for it
            raise run.error("init='from_independent' needs the independent net")
        _copy_from_independent(opts, net, run.store, task.name, ind)
    return net


@torch.no_grad()
def _copy_from_independent(opts: "BindGrowOptions", net: JointNet, store: ParamStore, task: str,
                           ind: IndependentNet) -> None:
    """Write ``G_t^⊥``'s tensors of every slot `task` grew into the grown nodes (which
    `bind_grow_step` made fresh), through `store.update`."""
    store.realize(net)
    ind_nodes: dict[str, str] = {}
    for s in task_slots(ind.net, task, bn_slots=opts.bn_slots, head_slot=opts.head == "shared"):
        for n in s.nodes:
            ind_nodes["head" if s.name == "head" else template_of(ind.net, n)] = n
    for n in net.route(task):
        prov = net.node(n).annotations.get(PROV)
        if prov is None or prov.get("task") != task:
            continue
        src = ind.net.node(ind_nodes[prov["template"]])
        for p in net.node(n).params:
            store.update(p.key, ind.store[src.param(p.name, p.block).key])


# ---- the strategies --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BindGrowOptions:
    """The options `L2BG` and `RandomGrowth` share (the bind-grow shell's, `bind_grow_task`):
    data only, no behaviour. Each is described, with its spec section, in the module docstring."""

    backbone: list | None = attrs.field(default=None, validator=backbone_option)
    delta: float | list = attrs.field(default=0.55, validator=_delta)
    rdm: str = attrs.field(default="pearson", validator=_one_of)
    compare: str = attrs.field(default="spearman", validator=_one_of)
    rsa_samples: int | None = attrs.field(default=200, validator=_rsa_samples)
    record: str = attrs.field(default="post", validator=_one_of)
    norm: str = attrs.field(default="l2", validator=_one_of)
    normalise: str = attrs.field(default="plain", validator=_one_of)
    temperature: float = attrs.field(default=1.0, validator=_number(0.0, strict=True))
    tol: float = attrs.field(default=1e-9, validator=_number(0.0, strict=False))
    init: str = attrs.field(default="copy", validator=_one_of)
    head: str = attrs.field(default="per_task", validator=_one_of)
    shared_lr_scale: float = attrs.field(default=0.1, validator=_number(0.0, strict=False))
    bn_slots: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    first: str = attrs.field(default="fresh", validator=_one_of)
    candidates: list | None = attrs.field(default=None, validator=_names_or_none)
    sequence: list | None = attrs.field(default=None, validator=_sequence)
    reference: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    independent_config: dict | None = attrs.field(default=None, validator=_train_fields)
    cache_dir: str | None = attrs.field(default=None, validator=_str_or_none)
    old_heads: str = attrs.field(default="drift", validator=_one_of)
    lwf_lam: float = attrs.field(default=1.0, validator=_number(0.0, strict=False))
    lwf_T: float = attrs.field(default=2.0, validator=_number(0.0, strict=True))


@attrs.frozen(kw_only=True)
class L2BG(BindGrowOptions):
    """L2BG: bind to the least conflicting task (RSA), grow the nucleus of conflicting slots.

    Options and their defaults: see the module docstring (each open choice cites the spec; the
    deviations ``old_heads``, ``depth_correction``, ``grow_order`` and ``granularity`` keep the
    spec's behaviour by default).

    >>> L2BG(delta=[0.3, 0.8]).delta
    [0.3, 0.8]
    """

    name: ClassVar[str] = "l2bg"  # also when made directly, not through `get`: errors name it
    grow_order: str = attrs.field(default="conflict", validator=_one_of)
    depth_correction: str = attrs.field(default="none", validator=_one_of)
    granularity: str = attrs.field(default="layer", validator=_one_of)
    channel_groups: int = attrs.field(default=4, validator=_count(1))

    def __attrs_post_init__(self) -> None:
        if self.granularity == "channels" and self.head != "per_task":
            raise ValueError("granularity='channels' needs head='per_task' (a shared head is a slot that "
                             "cannot be grown by channels)")
        if self.granularity == "channels" and self.init == "from_independent":
            raise ValueError("granularity='channels' grows channel groups with init 'copy' or 'fresh', "
                             "not 'from_independent'")

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Bind and grow `run`'s task (`rsa_decision`), train it, record the validation accuracies."""
        delta = float(per_task(self.delta, run.index, offset=1))
        decide = functools.partial(rsa_decision, delta=delta, norm=self.norm)
        return bind_grow_task(self, net, run, decide=decide, rsa=True)


@attrs.frozen(kw_only=True)
class RandomGrowth(BindGrowOptions):
    """Random growth, the paper's ablation (spec §5): random bind target, number and choice of
    slots, seeded by (run seed, task index) (`random_decision`). ``n_grow`` (int, list per
    bind-grow step, or None for a uniform draw in 0..|L|) fixes how many slots grow;
    ``match_params`` (with ``param_tol``) draws the whole stream's plan so that the grown
    parameters match (`random_plan`). A `sequence` still overrides. No independent nets unless
    ``reference`` (default False) asks."""

    name: ClassVar[str] = "l2bg-random"
    n_grow: int | list | None = attrs.field(default=None, validator=_n_grow)
    reference: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    match_params: int | None = attrs.field(default=None, validator=_count_or_none(0))
    param_tol: float = attrs.field(default=0.02, validator=_number(0.0, strict=False, hi=1.0))

    def __attrs_post_init__(self) -> None:
        if self.match_params is not None and self.n_grow is not None:
            raise ValueError("give 'n_grow' or 'match_params', not both")

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Bind and grow `run`'s task at random (`random_decision`), train it, record accuracies."""
        n = None if self.n_grow is None else per_task(self.n_grow, run.index, offset=1)
        plan = None
        if self.match_params is not None and run.index > 0:
            first = next(iter(net.tasks))
            sizes = slot_params(net, first, task_slots(net, first, bn_slots=self.bn_slots,
                                                       head_slot=self.head == "shared"))
            names = [t.name for t in run.stream.tasks] if run.stream is not None else []
            if run.index >= len(names):
                raise run.error("match_params needs the run's stream (the plan covers every task)")
            try:
                plan = random_plan(names, sizes, target=self.match_params, tol=self.param_tol, seed=run.seed,
                                   candidates=self.candidates)[run.index - 1]
            except ValueError as e:
                raise run.error(str(e)) from None
        decide = functools.partial(random_decision, n_grow=n, plan=plan)
        return bind_grow_task(self, net, run, decide=decide, rsa=False)
