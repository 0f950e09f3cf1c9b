"""LASEM's training loop (spec §2.3-§2.5): the E-step and M-step over all configurations per
mini-batch, from one multi-route call that computes every shared conv prefix once.

`em_train` is what `strategies.lasem.Lasem.step` runs between building a task's alternatives and
committing its configuration; with one configuration it is plain training of the task's route
(the static configurations). The optimizer groups, frozen tensors and gradient rules come from
the core's `train_plan` of the task's route through every shared node and of its own column
(`merge_plans`): every tensor some configuration uses, under the net's train policy. One
optimizer step per mini-batch (``m_steps`` with the same posterior); the batch order is the
core trainer's (a generator seeded from ``(seed, task index)``).

With the strategy's ``settle = K`` (ours; None: the EM runs on every mini-batch): once
``argmax prior`` has been the same configuration after K consecutive mini-batches, the EM
stops for the rest of the task: the prior (and counts) stay as they are, and every later
mini-batch is the static configuration's step for that configuration (one route compiled
alone, no E-step, loss ``CE + reg`` of its shared slots), with the same optimizer and its state.
The posterior history then holds the EM's batches only.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from jointnet.execution.compile import compile_net
from jointnet.execution.optim import TrainPlan, train_plan
from jointnet.execution.program import task_context
from jointnet.experiments.strategy import TaskRun
from jointnet.experiments.trainer import TrainConfig, TrainResult, accuracy, torch_threads
from jointnet.graph.net import JointNet
from strategies import lasem_core as core
from strategies.lasem_graph import Template, config_view, e_view

__all__ = ["EMOutcome", "em_train", "merge_plans"]


@attrs.define
class EMOutcome:
    """What `em_train` leaves: the final prior (and Eq. 1 counts), the posterior of every
    mini-batch, the mean posterior per epoch, the last validation accuracy, time spent in
    separate E-step calls and in whole steps, the trainer-style `TrainResult`, and the batch
    (1-based, counted over the task) after which the EM settled (``settle``; None: it never did)."""

    prior: torch.Tensor
    counts: torch.Tensor | None
    history: torch.Tensor
    epoch_posteriors: list
    val_acc: float | None
    result: TrainResult
    e_seconds: float = 0.0
    step_seconds: float = 0.0
    settled: int | None = None


def merge_plans(a: TrainPlan, b: TrainPlan) -> TrainPlan:
    """One `TrainPlan` training what either trains (each tensor once, in the group of its first
    plan), with both plans' gradient rules; a tensor is untrained only if neither trains it."""
    groups: dict[str, dict] = {}
    seen: set[int] = set()
    for g in a.groups + b.groups:
        out = groups.setdefault(g["name"], {"params": [], "lr": g["lr"], "name": g["name"]})
        for p in g["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                out["params"].append(p)
    untrained = {id(t): t for t in a.untrained + b.untrained if id(t) not in seen}

    def unique(items):
        out, ids = [], set()
        for item in items:
            if id(item[0]) not in ids:
                ids.add(id(item[0]))
                out.append(item)
        return out

    return TrainPlan([g for g in groups.values() if g["params"]], list(untrained.values()),
                     unique(a.grad_mults + b.grad_mults), unique(a.update_mults + b.update_mults),
                     unique(a.freezes + b.freezes))


def _optimizer(strategy: Any, config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(groups, lr=config.lr, alpha=strategy.rms_alpha, eps=strategy.rms_eps,
                               momentum=config.momentum, weight_decay=config.weight_decay)


def _reg_tensors(net: JointNet, store, task: str, t: Template) -> list[tuple[int, list[torch.Tensor]]]:
    """Per shared slot on `task`'s route: the tensors its base learner regularises (TF: the
    task's four factors; DF-CNN: the knowledge base and the generator tensors but the conv bias)."""
    out = []
    route = set(net.route(task))
    for i, slot in enumerate(t.slots):
        if slot not in route:
            continue
        grid = net.params_for(task, slot)
        names = {"tf": ("u1", "u2", "u3", "u4"), "dfcnn": ("kb", "deconv", "deconv_bias", "contract")}.get(t.base, ())
        if names:
            out.append((i, [store[grid[n][0][0].key] for n in names]))
    return out


def em_train(strategy: Any, net: JointNet, own: JointNet, run: TaskRun, t: Template, masks: list[str]) -> EMOutcome:
    """Train `run.task` over configurations `masks` of `net` (whose route for the task shares
    every slot that any mask shares; `own`: the same task routed through its own convs). One
    mask is plain training of the task's route. See the module docstring for the algorithm.

    Raises:
        StrategyError: a loss that is not finite (unless ``config.allow_nonfinite``), naming the
            task, epoch and batch.
    """
    task, config, store = run.task.name, run.config, run.store
    device = config.device
    single = len(masks) == 1
    views = [config_view(net, t, task, m, name=f"m:{m}") for m in masks]
    e_views = [] if single else [e_view(net, view, f"e:{m}") for view, m in zip(views, masks)]
    m_labels = [view.name for view in views]
    fused = single or strategy.e_step == "fused"
    module = compile_net(net, store, e_views + views if fused else views, independent_dropout=True)
    e_module = None if fused else compile_net(net, store, e_views)
    # The M-steps after the first reuse the E-step's posterior: the M views alone.
    m_module = compile_net(net, store, views, independent_dropout=True) if strategy.m_steps > 1 else None
    tp = merge_plans(train_plan(net, store, task, config.lr), train_plan(own, store, task, config.lr))
    if not tp.groups:
        raise run.error("every tensor of the task is frozen; nothing to train")
    params = [p for g in tp.groups for p in g["params"]]
    opt = _optimizer(strategy, config, tp.groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + run.index)  # the trainer's batch order
    ctx = task_context(net, task, training=True)
    reg = _reg_tensors(net, store, task, t)
    weight = strategy.reg_weight()
    n_conf = len(masks)
    prior = torch.full((n_conf,), 1.0 / n_conf, dtype=torch.float64)
    counts = torch.full((n_conf,), float(strategy.prior_count), dtype=torch.float64) if strategy.prior == "counts" else None
    seen_batches = 0
    # ``settle`` (ours): once argmax prior has held `settle` batches, train that configuration alone.
    settle = None if single else getattr(strategy, "settle", None)
    settled, held, last = None, 0, None
    step_masks = masks
    history, epoch_posts, result = [], [], TrainResult()
    x, y = run.task.train
    e_seconds = step_seconds = 0.0
    val_acc = None
    with tp.training(), torch_threads(config.threads):
        for epoch in range(config.epochs):
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base / (1.0 + (run.index * config.epochs + epoch) * strategy.lr_decay)
            order = torch.randperm(len(x), generator=gen)
            batches = [order[i : i + config.batch_size] for i in range(0, len(x), config.batch_size)]
            total, seen, posts = 0.0, 0, []
            for b, idx in enumerate(batches):
                t0 = time.perf_counter()
                xb, yb = x[idx].to(device), y[idx].to(device)
                if not fused:
                    with torch.no_grad():
                        e_out = e_module(xb, ctx)
                    e_seconds += time.perf_counter() - t0
                out = module(xb, ctx)
                if fused and not single:
                    e_out = {e.name: out[e.name] for e in e_views}
                if single:
                    post = torch.ones(1, dtype=torch.float64)
                else:
                    with torch.no_grad():  # E-step: dropout off, current weights (spec §2.3)
                        lp = torch.stack([F.log_softmax(e_out[e.name].float(), 1).gather(1, yb[:, None])[:, 0]
                                          for e in e_views]).cpu()  # the prior lives on the CPU (float64)
                        post = core.posterior(prior, core.log_likelihood(lp, strategy.likelihood))
                loss = _m_step(out, m_labels, yb, post, step_masks, reg, weight, t.base)
                for extra in range(strategy.m_steps):
                    if extra:
                        out = m_module(xb, ctx)
                        loss = _m_step(out, m_labels, yb, post, step_masks, reg, weight, t.base)
                    if not config.allow_nonfinite and not bool(torch.isfinite(loss.detach())):
                        raise run.error(f"the loss is {float(loss.detach()):.4g} at epoch {epoch + 1}, batch {b + 1}; "
                                        "lower the learning rate, or set allow_nonfinite")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    tp.before_step()
                    if config.clip_grad:
                        torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
                    opt.step()
                    tp.after_step()
                seen_batches += 1
                if settled is None:
                    # The prior after the batch (spec §2.5): Eq. 1 counts or the running mean.
                    if counts is not None:
                        counts = core.update_counts(counts, post)
                        prior = core.counts_prior(counts)
                    elif not single:
                        prior = core.update_mean(prior, seen_batches - 1, post)
                    posts.append(post)
                    if settle is not None:
                        best_now = int(torch.argmax(prior))
                        held = held + 1 if best_now == last else 1
                        last = best_now
                        if held >= settle:  # from the next batch on: the static configuration's step
                            settled = seen_batches
                            single = fused = True
                            step_masks = [masks[best_now]]
                            m_labels = [views[best_now].name]
                            module = compile_net(net, store, [views[best_now]], independent_dropout=True)
                            m_module = module if strategy.m_steps > 1 else None
                            reg = [(i, ts) for i, ts in reg if step_masks[0][i] == core.SHARE]
                step_seconds += time.perf_counter() - t0
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            history += posts
            mean_post = torch.stack(posts).mean(0) if posts else prior
            epoch_posts.append(mean_post.tolist())
            best = masks[int(torch.argmax(prior))]
            val_acc = _val_accuracy(net, store, t, task, best, run)
            entry = {"epoch": epoch, "loss": total / max(seen, 1), "val_acc": val_acc, "mask": best,
                     "prior_max": float(prior.max()), "lr": opt.param_groups[-1]["lr"]}
            result.history.append(entry)
            result.epochs_run = epoch + 1
            if run.echo is not None:
                run.echo(f"task {task} epoch {epoch + 1}/{config.epochs} loss {entry['loss']:.4f} "
                         f"val {val_acc if val_acc is not None else float('nan'):.4f} "
                         f"argmax {best} prior {entry['prior_max']:.3f}")
    result.best_val = val_acc
    hist = torch.stack(history) if history else torch.empty(0, n_conf, dtype=torch.float64)
    return EMOutcome(prior, counts, hist, epoch_posts, val_acc, result, e_seconds, step_seconds, settled)


def _m_step(out: dict, labels: list[str], yb: torch.Tensor, post: torch.Tensor, masks: list[str],
            reg: list, weight: float, base: str) -> torch.Tensor:
    """``sum_c post_c (CE_c + reg_c)`` with the posterior constant; ``reg_c`` sums the
    regularisers of the slots `c` shares, so its weighted sum weighs slot l by P(c_l = T)."""
    w = post.to(torch.float32).to(yb.device)
    ce = torch.stack([F.cross_entropy(out[label].float(), yb) for label in labels])
    loss = (w * ce).sum()
    if reg and weight:
        share = core.share_probability(post, masks).to(torch.float32)
        fn = core.orthogonality if base == "tf" else core.l2_half
        loss = loss + weight * sum(share[i] * fn(ts) for i, ts in reg)
    return loss


def _val_accuracy(net: JointNet, store, t: Template, task: str, mask: str, run: TaskRun) -> float | None:
    """Validation accuracy of configuration `mask` (eval mode, the task's inference context)."""
    xv, yv = run.task.val
    if not len(xv):
        return None
    module = compile_net(net, store, config_view(net, t, task, mask, name=f"v:{mask}"))
    return accuracy(module, xv, yv, run.config.eval_batch_size, run.config.device, task_context(net, task))
