"""LASEM, "Sharing Less is More: Lifelong Learning in Deep Networks with Selective Layer Transfer"
(Lee, Behpour, Eaton, ICML 2021; spec `specs/LASEM.md`): per task, an EM over which conv layers
to share, on three base learners.

Strategies: ``lasem-hps`` (`LasemHPS`: hard parameter sharing), ``lasem-tf`` (`LasemTF`: tensor
factorization) and ``lasem-dfcnn`` (`LasemDFCNN`: the deconvolutional factorized CNN); with
``config=...`` each trains a *static* configuration instead (``-O config=top2``, ``-O
config=TTFF``); ``lasem-brute`` (`strategies.lasem_brute`) trains every configuration and keeps
the best by validation. The graph side (columns, alternatives, views, commit) is
`strategies.lasem_graph`; the pure decisions (masks, prior, posterior, regularisers)
`strategies.lasem_core`.

**Per task** (`Lasem.step`, spec §2.5):

1. `build_column`: the task's own column and head; `ensure_shared` / `share_slots`: the shared
   node of every slot (made when missing) and the task routed through all of them, so its
   generator tensors exist; its own convs wait beside them. New plain conv / FC tensors get the
   code's initialisation (``init="paper"``). The shared tensors are checkpointed (`ParamStore.checkpoint`).
2. `em_train`: per mini-batch, ONE multi-route call of every configuration (`RouteView`s,
   `config_view`), where each configuration appears twice: its E-step view without dropout
   (`e_view`) and its M-step view with its own dropout mask (``independent_dropout``). The conv
   stack has no dropout, so both share every conv prefix, computed once per batch for all
   configurations (a trie: layer ``l`` runs ``2^l`` times, not ``d 2^d``). E-step: ``L_c`` from
   the E views (``likelihood``), ``post = prior L`` normalised. M-step: one optimizer step on
   ``sum_c post_c (CE_c + reg_c)`` with the posterior held constant (``m_steps`` more with the
   same posterior). Prior: Eq. 1 counts (default) or the running mean of the posteriors.
3. Commit: ``c* = argmax prior``; the shared tensors of slots ``c*`` owns are restored from the
   checkpoint (``rollback``: bit-identical to before the task); the task is rerouted to its own
   conv there, and the nodes no task uses are pruned (``delete_unused``); the task's own tensors
   are frozen (`freeze_task`). The task annotation ``lasem`` records ``how`` (``em`` /
   ``static`` / ``brute``), ``mask``, ``configs``, ``prior``, ``counts``, ``posterior_epochs``
   (mean posterior per epoch), ``posterior`` (a `TensorRef` to the per-batch posteriors,
   ``[batches, configs]``) and ``val_acc``; ``jointnet inspect`` shows each task's mask.

Static configurations train the committed route with the same loop (one configuration, no
E-step), so LASEM and its static counterparts differ only in the EM.

**Options** (all strategies; defaults first, the spec section in brackets):

- ``config`` = None: None runs the EM; a name (``all``, ``none``, ``topK``, ``bottomK``,
  ``alternating`` = FTFT..., ``alternating2`` = TFTF...) or a mask (``TTFF``, T = shared, F =
  own, lowest conv first; over groups when ``groups`` is set) trains that static configuration
  [§2.1].
- ``groups`` = None: consecutive group sizes of the conv layers (``[2, 2]``); every layer of a
  group shares or owns together, ``2^|groups|`` configurations [§2.6].
- ``channels`` = (32, 32, 64, 64): the conv layers' widths, lowest first, one slot each (the
  CIFAR-100 net of §2.7).
- ``kernel`` = 3: the conv layers' square kernel (odd: SAME padding) [§2.7].
- ``pools`` = (1, 2, 1, 2): max-pool size after each conv layer (1: none) [§2.7].
- ``fc`` = (64,): the task-specific hidden FC layers' widths (ReLU) [§2.7].
- ``dropout`` = 0.5: drop probability on the flattened conv features [§2.7].
- ``likelihood`` = ``mean``: the E-step's likelihood, the mean probability of the true class
  (the code), or ``product`` (the exact likelihood) [§2.3, §7.1].
- ``prior`` = ``counts``: Eq. 1's counts of posterior argmaxes, or ``posterior_mean`` (the
  running mean of the posteriors, the code's default) [§2.2, §7.2].
- ``prior_count`` = 1.0: Eq. 1's initial (Laplace) count per configuration.
- ``m_steps`` = 1: M-steps per E-step (numMSteps), all with the E-step's posterior [§2.4, §7.3].
- ``e_step`` = ``fused``: the E-step's forward shares the M-step's call (exact: the E views
  skip only the dropout), or ``separate``: its own no-grad call first, as the authors' code
  does (same posteriors, more compute) [ours].
- ``settle`` = None: None runs the EM on every mini-batch of the task (the spec); an int ``K >= 1``
  stops it once ``argmax prior`` has been the same configuration after ``K`` consecutive
  mini-batches: the prior stays, and the rest of the task trains that configuration alone with
  the static configuration's step (one route, no E-step; same optimizer and state), so the
  commit is that configuration. The annotation then also records ``settle`` and ``settled``
  (the 1-based batch of the task after which the EM stopped; None if it never did), and the
  posterior history holds the EM's batches only (``posterior_epochs``: the mean over an
  epoch's EM batches; the prior for an epoch without any). EM only (refused with ``config``)
  [ours: a deviation, motivated by the paper's attributing its 1.3-1.7x cost to "EM converging faster";
  with the default Eq. 1 prior the argmax never moved after the first mini-batch in 90 of 90
  benchmark tasks; the spec's default, None, is kept]. The annotation is part of the net's
  lineage, so with ``settle`` set later tasks' fresh tensors differ from a run without it.
- ``rollback`` = True: at the end of a task, restore the shared tensors of the slots it owns to
  their values before the task [§2.5, §7.4].
- ``delete_unused`` = True: at the end of a task, remove its own convs at the slots it shares
  (and shared nodes no task uses) [§2.5, §7.4].
- ``own_init`` = ``fresh``: a task's own conv starts at random (spec), or ``copy``: as the
  filter its shared alternative computes for it [§7.7].
- ``init`` = ``paper``: plain conv / FC weights ~ truncated normal (std 0.05), biases 0.2, as
  the code, or ``torch``: PyTorch's default uniform; TF / DF-CNN tensors are Glorot-uniform
  either way (see `jointnet.graph.layers.factorized`) [§2.7].
- ``rms_alpha`` = 0.9: RMSprop's decay (TensorFlow's; with the trainer's ``optimizer="rmsprop"``) [§3].
- ``rms_eps`` = 1e-10: RMSprop's epsilon (TensorFlow's) [§3].
- ``lr_decay`` = 0.0: the learning rate is ``lr / (1 + e * lr_decay)`` with ``e`` the epoch
  counted over the whole stream [§3].
- ``aux_weight`` = None: TF only, lambda_aux of the orthogonality loss (None: 0.1) [§2.7].
- ``l2`` = None: DF-CNN only, the L2 scale on the knowledge base and the generator tensors
  (None: 1e-7) [§2.7].
- ``kb_channels`` = None: DF-CNN only, the knowledge base's channels per slot (None: ``c // 2``
  of the slot's width ``c``) [§2.7].
- ``ts_channels`` = None: DF-CNN only, the generator's channels per slot (None: the slot's
  width) [§2.7].
- ``ts_kernel`` = 3: DF-CNN only, the deconvolution filter's side (odd) [§2.7].

Fixed choices [§7]: the optimizer state is rebuilt for every task (§7.8); during training the
per-epoch validation accuracy is that of the current ``argmax prior`` (§7.5); revisiting a task
is not supported (a stream's tasks are distinct).

>>> LasemHPS(config="top2").mask_list(4)
['FFTT']
>>> len(LasemTF().mask_list(4)), LasemDFCNN(groups=[1, 3]).mask_list(4)
(16, ['FFFF', 'FTTT', 'TFFF', 'TTTT'])
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import attrs
import torch
from attrs import validators as v
from torch import nn

from jointnet.experiments.strategy import TaskRun, store_key
from jointnet.graph import annotate
from jointnet.graph.layers.factorized import df_weight, tf_weight
from jointnet.graph.net import JointNet, TensorRef
from strategies import lasem_core as core
from strategies.lasem_graph import (
    TASK_KEY, Template, build_column, commit, ensure_shared, freeze_task, own_node, share_slots, template_of,
)
from strategies.lasem_train import EMOutcome, em_train, merge_plans

__all__ = ["Lasem", "LasemHPS", "LasemTF", "LasemDFCNN", "EMOutcome", "em_train", "merge_plans", "RECOMMENDED_CONFIG"]

#: The spec's training settings (§3, CIFAR-100) with §7's CPU epoch budget; a run's config wins.
RECOMMENDED_CONFIG: dict[str, Any] = {
    "optimizer": "rmsprop", "lr": 1e-4, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 10, "epochs": 50,
}


def _positive(_inst, a, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"'{a.name}' must be a number > 0 (got {value!r})")


def _nonneg(_inst, a, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"'{a.name}' must be a number >= 0 (got {value!r})")


def _choice(*allowed):
    def check(_inst, a, value) -> None:
        if value not in allowed:
            raise ValueError(f"'{a.name}' must be one of {', '.join(map(repr, allowed))} (got {value!r})")
    return check


def _count(_inst, a, value) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"'{a.name}' must be None or an int >= 1 (got {value!r})")


def _flag(_inst, a, value) -> None:
    if type(value) is not bool:
        raise ValueError(f"'{a.name}' must be True or False (got {value!r})")


def _opt(check):
    def run(inst, a, value) -> None:
        if value is not None:
            check(inst, a, value)
    return run


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class Lasem:
    """LASEM over a base learner (`BASE`); see the module docstring for every option."""

    BASE: ClassVar[str] = "hps"
    recommended_config: ClassVar[dict] = RECOMMENDED_CONFIG

    config: str | None = attrs.field(default=None, validator=_opt(v.instance_of(str)))
    groups: tuple | None = attrs.field(default=None, converter=_as_tuple)
    channels: tuple = attrs.field(default=(32, 32, 64, 64), converter=_as_tuple)
    kernel: int = 3
    pools: tuple | None = attrs.field(default=(1, 2, 1, 2), converter=_as_tuple)
    fc: tuple = attrs.field(default=(64,), converter=_as_tuple)
    dropout: float = 0.5
    likelihood: str = attrs.field(default="mean", validator=_choice("mean", "product"))
    prior: str = attrs.field(default="counts", validator=_choice("counts", "posterior_mean"))
    prior_count: float = attrs.field(default=1.0, validator=_positive)
    m_steps: int = attrs.field(default=1, validator=[v.instance_of(int), v.ge(1)])
    e_step: str = attrs.field(default="fused", validator=_choice("fused", "separate"))
    settle: int | None = attrs.field(default=None, validator=_opt(_count))
    rollback: bool = attrs.field(default=True, validator=_flag)
    delete_unused: bool = attrs.field(default=True, validator=_flag)
    own_init: str = attrs.field(default="fresh", validator=_choice("fresh", "copy"))
    init: str = attrs.field(default="paper", validator=_choice("paper", "torch"))
    rms_alpha: float = attrs.field(default=0.9, validator=_positive)
    rms_eps: float = attrs.field(default=1e-10, validator=_positive)
    lr_decay: float = attrs.field(default=0.0, validator=_nonneg)
    aux_weight: float | None = attrs.field(default=None, validator=_opt(_nonneg))
    l2: float | None = attrs.field(default=None, validator=_opt(_nonneg))
    kb_channels: tuple | None = attrs.field(default=None, converter=_as_tuple)
    ts_channels: tuple | None = attrs.field(default=None, converter=_as_tuple)
    ts_kernel: int = 3

    def __attrs_post_init__(self) -> None:
        base = self.base_learner()
        if self.aux_weight is not None and base != "tf":
            raise ValueError(f"'aux_weight' applies to lasem-tf only (base learner {base!r})")
        dfcnn_only = ("l2", "kb_channels", "ts_channels")
        for name in dfcnn_only:
            if getattr(self, name) is not None and base != "dfcnn":
                raise ValueError(f"'{name}' applies to lasem-dfcnn only (base learner {base!r})")
        if self.ts_kernel != 3 and base != "dfcnn":
            raise ValueError(f"'ts_kernel' applies to lasem-dfcnn only (base learner {base!r})")
        if self.settle is not None and self.config is not None:
            raise ValueError(f"'settle' applies to the EM only; config={self.config!r} trains one configuration")
        if self.rms_alpha >= 1:
            raise ValueError(f"'rms_alpha' must be in (0, 1) (got {self.rms_alpha!r})")
        t = self.template()  # validates the sizes
        core.check_groups(t.d, self.groups)
        if self.config is not None:
            core.static_mask(self.config, t.d, self.groups)

    # ---- derived values ---------------------------------------------------------------------

    def base_learner(self) -> str:
        return self.BASE

    def template(self) -> Template:
        return Template(base=self.base_learner(), channels=self.channels, kernel=self.kernel, pools=self.pools,
                        fc=self.fc, dropout=self.dropout, kb_channels=self.kb_channels,
                        ts_channels=self.ts_channels, ts_kernel=self.ts_kernel)

    def mask_list(self, d: int) -> list[str]:
        """The configurations a task trains: the static one, or every valid one for the EM."""
        if self.config is not None:
            return [core.static_mask(self.config, d, self.groups)]
        return core.enumerate_masks(d, self.groups)

    def reg_weight(self) -> float:
        base = self.base_learner()
        if base == "tf":
            return 0.1 if self.aux_weight is None else float(self.aux_weight)
        if base == "dfcnn":
            return 1e-7 if self.l2 is None else float(self.l2)
        return 0.0

    # ---- one task -----------------------------------------------------------------------------

    def check(self, net: JointNet, run: TaskRun, t: Template) -> None:
        """Refuse a net LASEM did not build with this template, inputs that are not images, and a
        task the net already has (one-line errors naming strategy and task)."""
        have = template_of(net)
        if net.tasks and have is None:
            raise run.error("the net was not built by a LASEM strategy (it has no 'lasem' annotation)")
        if have is not None and have != t:
            raise run.error(f"the net's LASEM template {have.plain()} differs from these options' {t.plain()}")
        if len(run.task.input_shape) != 3:
            raise run.error(f"LASEM's conv template needs (C, H, W) inputs; task inputs are {run.task.input_shape}")
        if run.task.name in net.tasks:
            raise run.error("revisiting a task is not supported; the stream must name its tasks apart")

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        task = run.task
        t = self.template()
        name = task.name
        self.check(net, run, t)
        masks = self.mask_list(t.d)
        try:
            own, feeds = build_column(net, t, name, task.n_classes, task.input_shape)
            shared = t.slots if self.config is None else [s for s, b in zip(t.slots, masks[0]) if b == core.SHARE]
            net_em = share_slots(ensure_shared(own, t, name, feeds, shared), name, shared)
            if self.config is not None:  # static: commit before training (spec §8.10)
                net_em = own = commit(net_em, t, name, masks[0], delete=True)
        except ValueError as e:
            raise run.error(str(e)) from None
        self.initialise(net_em, run.store, name, t)
        keys = shared_keys(net_em, t)
        checkpoint = run.store.checkpoint([k for ks in keys.values() for k in ks]) if self.config is None and self.rollback else None
        out = em_train(self, net_em, own, run, t, masks)
        run.results.append(out.result)
        mask = masks[int(torch.argmax(out.prior))]
        if self.config is None:
            if checkpoint is not None:
                run.store.restore(_restricted(checkpoint, [k for s, b in zip(t.slots, mask) if b == core.OWN
                                                          for k in keys.get(s, [])]))
            net = commit(net_em, t, name, mask, delete=self.delete_unused)
        else:
            net = net_em
        net = freeze_task(net, t, name)
        return annotate(net, key=TASK_KEY, task=name, value=self.record(net, run, name, masks, mask, out))

    def record(self, net: JointNet, run: TaskRun, task: str, masks: list[str], mask: str, out: "EMOutcome") -> dict:
        """The task annotation: how the mask was chosen, the prior, the posterior history."""
        rec: dict[str, Any] = {"how": "em" if self.config is None else "static", "mask": mask}
        if self.config is not None:
            rec["static"] = self.config
        else:
            key = store_key(net, None, "lasem.posterior", task)
            run.store.put(key, out.history.to(torch.float32))
            rec.update({
                "configs": masks, "prior": [float(p) for p in out.prior],
                "counts": None if out.counts is None else [float(c) for c in out.counts],
                "posterior_epochs": [[round(float(p), 6) for p in e] for e in out.epoch_posteriors],
                "posterior": TensorRef(key),
            })
            if self.settle is not None:  # only then: without the option the annotation is as before
                rec.update({"settle": self.settle, "settled": out.settled})
        rec["val_acc"] = out.val_acc
        return rec

    def initialise(self, net: JointNet, store, task: str, t: Template) -> None:
        """Realize `net` and give the tensors just made their initial values: the code's
        truncated normal / 0.2 for plain convs and FC layers (``init="paper"``), and the task's
        own convs as copies of their shared filters (``own_init="copy"``)."""
        before = set(store)
        store.realize(net)
        new = set(store) - before
        if self.init == "paper":
            for n in net.nodes:
                node = net.node(n)
                if node.kind not in ("Conv2d", "Linear", "Head"):
                    continue
                for p in node.params:
                    if p.key in new and not p.buffer:
                        store.update(p.key, _paper_value(p.name, p.shape, p.key, store.seed))
        if self.own_init == "copy":
            for slot in t.slots:
                own = own_node(slot, task)
                if own in net and slot in net and task in net.users(slot):
                    w, b = generated_filter(net, store, task, slot)
                    store.update(net.node(own).param("weight").key, w)
                    store.update(net.node(own).param("bias").key, b)


def _paper_value(name: str, shape: tuple, key: str, seed: int) -> torch.Tensor:
    """The authors' code's initial value: weights ~ N(0, 0.05) truncated at 2 std, biases 0.2."""
    if name == "bias":
        return torch.full(shape, 0.2)
    g = torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(f"paper:{key}".encode())) % (1 << 63))
    return nn.init.trunc_normal_(torch.empty(shape), std=0.05, a=-0.1, b=0.1, generator=g)


def generated_filter(net: JointNet, store, task: str, slot: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The filter and bias the shared node `slot` computes for `task` (its own generator tensors)."""
    node = net.node(slot)
    p = {name: store[rows[0][0].key].detach() for name, rows in net.params_for(task, slot).items()}
    if node.kind == "TFConv2d":
        return tf_weight(p["core"], p["u1"], p["u2"], p["u3"], p["u4"]), p["bias"]
    if node.kind == "DFConv2d":
        pad = (node.spec.ts_kernel - 1) // 2
        return df_weight(p["kb"], p["deconv"], p["deconv_bias"], p["contract"], pad), p["bias"]
    return p["weight"], p["bias"]


def shared_keys(net: JointNet, t: Template) -> dict[str, list[str]]:
    """Per slot, the store keys of the shared node's shared (non-per-task) trainable tensors."""
    return {s: [p.key for p in net.node(s).params if p.task is None and not p.buffer] for s in t.slots if s in net}


def _restricted(checkpoint, keys):
    return attrs.evolve(checkpoint, values={k: checkpoint.values[k] for k in keys})


@attrs.frozen
class LasemHPS(Lasem):
    """LASEM with hard parameter sharing: a shared slot is one conv every sharing task uses."""

    BASE: ClassVar[str] = "hps"


@attrs.frozen
class LasemTF(Lasem):
    """LASEM with tensor factorization: a shared slot is a `TFConv2d` (shared core, own factors)."""

    BASE: ClassVar[str] = "tf"


@attrs.frozen
class LasemDFCNN(Lasem):
    """LASEM with DF-CNN: a shared slot is a `DFConv2d` (shared knowledge base, own generators)."""

    BASE: ClassVar[str] = "dfcnn"
