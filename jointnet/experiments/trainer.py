"""The trainer: one task of a net, trained from the net's train policy and a strategy's hooks.

- What trains, at which rate and under which gradient rules comes from the net's train policy
  (`jointnet.execution.optim.train_plan`): frozen tensors are left out and carry no gradient,
  the rest train at ``lr * lr_scale``; multiplier and freeze rules apply around every step.
- A strategy plugs in through `Hooks`: the batch's `Context` (HAT's annealed gate scale), an
  extra loss term (EWC, LwF, HAT), a gradient transform after the policy's rules (HAT's
  embedding compensation and clipping), a step callback, and optionally its own training
  forward plus extra optimizer groups for tensors off the task's route (LwF: old heads trained
  through a multi-task forward).
- Optimizers: SGD, Adam, RMSprop. A loss that is not finite stops training with an error naming
  task, epoch and batch (``allow_nonfinite`` lets it go on).
- Early stopping on validation accuracy keeps the best weights of the tensors being trained (and
  the BatchNorm running statistics of that epoch); LR schedules: none, cosine, step, or plateau
  (divide by `lr_factor` after `lr_patience` epochs without improvement, stop below `min_lr`, as
  HAT's and PackNet's code do).
- CPU runs are deterministic for a fixed seed and thread count: shuffling uses a generator
  seeded from (seed, task), never the global RNG. The thread count matters: parallel reductions
  (convolutions, large sums) round differently with 1 and 2 threads, so the same seed gives the
  same bits only with the same ``threads``. CUDA runs use AMP (bf16 autocast) unless disabled.
- Progress: a `TrainProgress` observer sees every batch and epoch. `train_task` reports to the
  one passed as ``progress=``, else to the one installed by `observe` (the runner's per-task bar
  counts the batches of every training call a strategy makes for a task), else, with
  ``config.progress``, to a tqdm bar of its own (batches of this call).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError, NonFiniteLoss
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.execution.optim import train_plan
from jointnet.execution.program import Context, task_context

__all__ = ["TrainConfig", "Hooks", "TrainResult", "TrainProgress", "NonFiniteLoss", "train_task", "observe",
           "torch_threads", "accuracy", "predict"]


@attrs.frozen
class TrainConfig:
    """Hyper-parameters of one task's training (``-T key=value`` on ``jointnet run``).

    Options (defaults first; ``jointnet options trainer`` lists them with their types):

    - ``epochs`` (5): epochs per training call, >= 0 (0 trains nothing).
    - ``batch_size`` (64): training batch size, > 0.
    - ``lr`` (0.05): learning rate, > 0 (times each node's ``lr_scale`` from the train policy).
    - ``optimizer`` ("sgd"): ``"sgd"``, ``"adam"`` or ``"rmsprop"``.
    - ``momentum`` (0.9): momentum of SGD and RMSprop, >= 0.
    - ``weight_decay`` (0.0): L2 weight decay of the optimizer, >= 0.
    - ``schedule`` ("none"): learning-rate schedule: ``"none"``, ``"cosine"``, ``"step"`` or ``"plateau"``.
    - ``step_size`` (10): epochs between the x0.1 steps of the ``"step"`` schedule, > 0.
    - ``lr_factor`` (3.0): the ``"plateau"`` schedule divides the learning rate by it, > 0.
    - ``lr_patience`` (5): epochs without validation improvement before a ``"plateau"`` step, >= 1.
    - ``min_lr`` (0.0001): the ``"plateau"`` schedule stops training below it, >= 0.
    - ``patience`` (None): early stopping after that many epochs without validation improvement
      (keeps the best weights); None: off.
    - ``clip_grad`` (None): clip the total gradient norm at it, > 0; None: off.
    - ``device`` ("cpu"): ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    - ``amp`` (True): bf16 autocast on CUDA (ignored on CPU).
    - ``progress`` (False): a tqdm bar of batches when no `TrainProgress` observer is installed.
    - ``eval_batch_size`` (1024): batch size of evaluation passes, > 0.
    - ``seed`` (0): seeds the shuffling of batches (with the task index); the runner sets it
      from the run's seed.
    - ``allow_nonfinite`` (False): go on when the loss is NaN or infinite; False stops training
      with a `NonFiniteLoss` naming task, epoch and batch.
    - ``threads`` (None): torch's intra-op CPU threads while training (`torch_threads`); None
      leaves the process's setting (torch's default is one thread per core). ``jointnet run``
      defaults to 1: on a 2-core machine shared with other work a run took about half the time
      with 1 thread as with 2 (README, "Threads"). The same seed gives the same numbers only with
      the same count.
    """

    epochs: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    batch_size: int = attrs.field(default=64, validator=attrs.validators.gt(0))
    lr: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    optimizer: str = attrs.field(default="sgd", validator=attrs.validators.in_(("sgd", "adam", "rmsprop")))
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = attrs.field(default="none", validator=attrs.validators.in_(("none", "cosine", "step", "plateau")))
    step_size: int = 10
    lr_factor: float = 3.0
    lr_patience: int = 5
    min_lr: float = 1e-4
    patience: int | None = None  # early stopping on validation accuracy (None: off)
    clip_grad: float | None = None
    device: str = "cpu"
    amp: bool = True  # only on CUDA
    progress: bool = False
    eval_batch_size: int = 1024
    seed: int = 0
    allow_nonfinite: bool = False  # go on when the loss is NaN or infinite (default: stop with an error)
    threads: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.and_(
        attrs.validators.instance_of(int), attrs.validators.ge(1))))  # None: the process's setting


class TrainProgress:
    """What a progress display sees of training; every method is optional (defaults do nothing).

    `train_task` calls `begin` once per call (before the first batch), `batch` after every
    optimizer step, `epoch` after every epoch (with the history entry: loss, train_acc, val_acc,
    lr) and `end` when the call returns or fails.
    """

    def begin(self, task: str, epochs: int, n_batches: int) -> None:
        """A training call of `task` starts: at most ``epochs * n_batches`` batches follow."""

    def batch(self) -> None:
        """One optimizer step is done."""

    def epoch(self, task: str, epoch: int, epochs: int, entry: dict) -> None:
        """Epoch `epoch` (1-based) of `epochs` is done; `entry` is its history record."""

    def end(self) -> None:
        """The training call is over (finished, stopped early, or failed)."""


_OBSERVER: contextvars.ContextVar[TrainProgress | None] = contextvars.ContextVar("jointnet_train_progress",
                                                                                  default=None)


@contextlib.contextmanager
def observe(progress: TrainProgress | None) -> Iterator[None]:
    """Report every `train_task` call made inside the block (however deep in a strategy) to
    `progress`, unless a call passes its own ``progress=``; None installs no observer."""
    token = _OBSERVER.set(progress)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count after;
    None changes nothing."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Bar(TrainProgress):
    """A tqdm bar of one training call's batches (``config.progress`` without an observer)."""

    def __init__(self) -> None:
        self.bar = None

    def begin(self, task: str, epochs: int, n_batches: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=epochs * n_batches, desc=f"task {task}", unit="batch", leave=False,
                        file=sys.stderr, dynamic_ncols=True)

    def batch(self) -> None:
        self.bar.update(1)

    def epoch(self, task: str, epoch: int, epochs: int, entry: dict) -> None:
        self.bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{entry['loss']:.3f}",
                             acc=f"{entry['train_acc']:.3f}", val=f"{entry.get('val_acc', float('nan')):.3f}")

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Hooks:
    """What a strategy may add to training; every method is optional (defaults do nothing).

    ``info`` is a dict describing the batch: ``training``, ``batch``, ``n_batches``, ``epoch``,
    ``task``; a hook may stash values in it for later hooks of the same batch.
    """

    def context(self, info: dict) -> Context | None:
        """The `Context` of this batch's forward pass (HAT's annealed gate scale), or None for
        the task's own (`task_context`) in train or eval mode."""
        return None

    def forward(self, module, x, info: dict, ctx: Context) -> torch.Tensor:
        """The training forward pass of one batch; returns the trained task's logits.

        Default ``module(x, ctx)``. A strategy may run another module that shares the store's
        tensors (LwF: one multi-task forward computing the shared trunk once) and stash the
        other outputs in `info` for `extra_loss`.
        """
        return module(x, ctx)

    def extra_loss(self, module, x, y, logits, info: dict) -> torch.Tensor | None:
        return None

    def transform_grads(self, module, info: dict) -> None:
        """After backward and the policy's gradient rules, before the optimizer step."""
        return None

    def after_step(self, module, info: dict) -> None:
        """After the optimizer step and the policy's update rules."""
        return None

    def extra_param_groups(self, net, store, task: str, lr: float) -> list[dict]:
        """Optimizer groups (``{"params", "lr", "name"}``) for tensors off `task`'s route that the
        loss also trains (LwF's old heads); they must not repeat the task's own tensors."""
        return []


@attrs.define
class TrainResult:
    epochs_run: int = 0
    best_val: float | None = None
    history: list = attrs.field(factory=list)  # one dict per epoch: loss, train_acc, val_acc, lr


def _batches(n: int, size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


@torch.no_grad()
def predict(module, x: torch.Tensor, batch_size: int = 1024, device: str = "cpu",
            context: Context | None = None) -> torch.Tensor:
    """Logits of `module` on `x`, batched, in eval mode (`context`: the call's `Context`;
    default the module's own, i.e. its task's recorded inference context)."""
    was = module.training
    module.eval()
    ctx = context.with_training(False) if context is not None else None
    outs = []
    for i in range(0, len(x), batch_size):
        outs.append(module(x[i : i + batch_size].to(device), ctx).float().cpu())
    module.train(was)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(module, x, y, batch_size=1024, device="cpu", context: Context | None = None) -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(module, x, batch_size, device, context).argmax(1) == y).float().mean())


def _optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    # LASEM's code trains with RMSprop (LASEM spec §3).
    return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_task(
    net: JointNet,
    store: ParamStore,
    task: str,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: TrainConfig = TrainConfig(),
    hooks: Hooks | None = None,
    *,
    task_index: int = 0,
    echo: Callable[[str], Any] | None = None,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Train `task` of `net` on `train` = (x, y) under its train policy; returns the history.

    The policy gives the optimizer groups, the gradient rules and which tensors carry no gradient
    (`jointnet.execution.optim.train_plan`); `hooks` add what the method needs on top. `echo`
    gets one line per epoch; `progress` sees every batch (default: the observer installed by
    `observe`, else a tqdm bar when ``config.progress``). ``config.threads`` sets torch's CPU
    threads for the call (restored after).

    Raises:
        JointNetError: unknown task, or every tensor of the task frozen while epochs > 0.
        NonFiniteLoss: a loss that is not finite (unless ``config.allow_nonfinite``), naming
            task, epoch and batch.
    """
    if progress is None:
        progress = _OBSERVER.get()
    if progress is None and config.progress:
        progress = _Bar()
    with torch_threads(config.threads):
        return _train(net, store, task, train, val, config, hooks, task_index, echo, progress or TrainProgress())


def _train(net, store, task, train, val, config: TrainConfig, hooks: Hooks | None, task_index: int,
           echo, progress: TrainProgress) -> TrainResult:
    hooks = hooks or Hooks()
    device = config.device
    module = compile_net(net, store, task)
    tp = train_plan(net, store, task, config.lr)
    groups = tp.groups + list(hooks.extra_param_groups(net, store, task, config.lr))
    result = TrainResult()
    if config.epochs == 0:
        return result
    if not groups:
        raise JointNetError(f"train_task: every node of task {task!r} is frozen; nothing to train")
    params = [p for g in groups for p in g["params"]]
    # the best epoch is its weights and the BatchNorm statistics that went with them
    buffers = _route_buffers(net, store, task)
    opt = _optimizer(config, groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + task_index)
    x, y = train
    amp = config.amp and str(device).startswith("cuda")
    train_ctx = task_context(net, task, training=True)
    best_val, best_state, bad_epochs, plateau_bad = -1.0, None, 0, 0
    lr_mult = 1.0
    progress.begin(task, config.epochs, len(range(0, len(x), config.batch_size)))
    with contextlib.ExitStack() as stack:
        stack.callback(progress.end)
        stack.enter_context(tp.training())
        for epoch in range(config.epochs):
            if config.schedule == "cosine":
                lr_mult = 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
            elif config.schedule == "step":
                lr_mult = 0.1 ** (epoch // config.step_size)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * lr_mult
            module.train()
            batches = _batches(len(x), config.batch_size, gen)
            total_loss, correct, seen = 0.0, 0, 0
            for b, idx in enumerate(batches):
                xb, yb = x[idx].to(device), y[idx].to(device)
                info = {"training": True, "batch": b, "n_batches": len(batches), "epoch": epoch, "task": task}
                ctx = hooks.context(info) or train_ctx
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    logits = hooks.forward(module, xb, info, ctx)
                    loss = F.cross_entropy(logits.float(), yb)
                    extra = hooks.extra_loss(module, xb, yb, logits, info)
                    if extra is not None:
                        loss = loss + extra
                if not config.allow_nonfinite and not bool(torch.isfinite(loss.detach())):
                    raise NonFiniteLoss(
                        f"task {task!r}: the loss is {float(loss.detach()):.4g} at epoch {epoch + 1}, batch {b + 1}; "
                        "lower the learning rate (or a strategy's loss weight), or set allow_nonfinite "
                        "(-T allow_nonfinite=true) to go on",
                        task=task, epoch=epoch + 1, batch=b + 1)
                loss.backward()
                tp.before_step()
                hooks.transform_grads(module, info)
                if config.clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
                opt.step()
                tp.after_step()
                hooks.after_step(module, info)
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(idx)
                progress.batch()
            entry = {"epoch": epoch, "loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
                     "lr": opt.param_groups[-1]["lr"]}
            if val is not None and len(val[0]):
                entry["val_acc"] = accuracy(module, val[0], val[1], config.eval_batch_size, device,
                                            hooks.context({"training": False, "task": task}))
            result.history.append(entry)
            result.epochs_run = epoch + 1
            progress.epoch(task, epoch + 1, config.epochs, entry)
            if echo is not None:
                echo(f"task {task} epoch {epoch + 1}/{config.epochs} loss {entry['loss']:.4f} "
                     f"acc {entry['train_acc']:.4f} val {entry.get('val_acc', float('nan')):.4f}")
            v = entry.get("val_acc")
            if v is not None:
                if v > best_val:
                    best_val, bad_epochs, plateau_bad = v, 0, 0
                    if config.patience is not None or config.schedule == "plateau":
                        best_state = [p.detach().clone() for p in params + buffers]
                else:
                    bad_epochs += 1
                    plateau_bad += 1
                if config.schedule == "plateau" and plateau_bad >= config.lr_patience:
                    lr_mult /= config.lr_factor
                    plateau_bad = 0
                    if best_state is not None:
                        _restore(params + buffers, best_state)
                    if config.lr * lr_mult < config.min_lr:
                        break
                if config.patience is not None and bad_epochs >= config.patience:
                    break
    if best_state is not None:
        _restore(params + buffers, best_state)
    result.best_val = best_val if best_val >= 0 else None
    return result


def _route_buffers(net, store, task) -> list[torch.Tensor]:
    """The buffers (BatchNorm running statistics) `task`'s route uses, each once: training in
    train mode updates them, so restoring the best epoch restores them too."""
    keys = [p.key for n in net.route(task) for rows in net.params_for(task, n).values() for row in rows
            for p in row if p.buffer and p.key in store]
    return [store[k] for k in dict.fromkeys(keys)]


@torch.no_grad()
def _restore(params, state) -> None:
    for p, s in zip(params, state):
        p.copy_(s)
