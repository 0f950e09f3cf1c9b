"""LASEM on CPU under the shared benchmark protocol (`benchmarks/protocol.py`): cost against
static configurations, accuracy and forgetting against static configurations, independent nets
and fine-tuning, and LASEM against brute force, on paired seeds.

    python benchmarks/lasem.py --seeds 0 1 2 --epochs 5 --per-class 100 --out runs/lasem-p

Every training run is a cell of `protocol.run_grid` (``OUT/STREAM/ARM/seed-S-DIGEST/``, the
final net's snapshot kept: ``snapshots="last"``): running the same command again reuses every
finished cell (after checking its recorded spec) and prints every table again without training;
a changed option trains the changed cells beside the old ones. Only the ``cost`` section's step
timing is measured anew on every run (it is not a grid of runs).

Every LASEM net is the spec's 4-conv template at CPU size: conv 16-16-32-32 (3x3, SAME, ReLU),
max-pool 2 after the first three, flatten, dropout 0.5, a task-specific FC 64 + ReLU and a head;
16 configurations. Training: RMSprop (lr 1e-3, momentum 0; LASEM's alpha 0.9 / eps 1e-10),
batch 32, ``--epochs`` per task, ``init="torch"`` (PyTorch's uniform: on
lowlevel-fmnist, seed 0, static All with HPS, the code's truncated-normal 0.05 / bias 0.2 gave AP
0.704 and peak 0.829 against 0.809 and 0.859). Static
configurations run the same code with one configuration; ``independent`` and ``finetune`` are the
core strategies over one column of the same layers (fine-tuning shares the FC layer too), with
the core trainer's RMSprop (PyTorch's alpha 0.99, eps 1e-8). Training runs a fixed number of
epochs: validation data never decides anything but LASEM's per-epoch validation accuracy record
and brute force's choice of configuration.

Streams (5 tasks each; per task, with ``--per-class`` P = 100: 500 training, 200 validation
images; every task keeps >= 200 validation images, `protocol.MIN_VAL`, also under ``--quick``):

- ``lowlevel-fmnist`` (the known-answer stream: the same 5 classes in every task, each task its
  own low-level transform; sharing the top convs and owning the bottom ones should win):
  ``n_train_per_class`` = P, ``n_val_per_class`` = 40, ``n_test_per_class`` = 100, i.e.
  5P training / 200 validation / 500 test images per task;
- ``split-fmnist`` (2 classes per task): ``n_train_per_task`` = 5P + 200 drawn (balanced over
  the 2 classes) and ``val_fraction`` = 200 / (5P + 200), ``n_test_per_task`` = 500, i.e. 5P
  training (as many as lowlevel-fmnist) / 200 validation / 500 test images per task;
- ``--synthetic`` (a machine without the Fashion-MNIST files): the ``synthetic`` stream in
  their place, same shapes (1 x 28 x 28), listed as ``synthetic:lowlevel-fmnist`` (5 classes
  per task, per class P training, 40 validation, 100 test: 5P / 200 / 500 per task) and
  ``synthetic:split-fmnist`` (2 classes, per class round(5P / 2) training, 100 validation, 100
  test: 5P / 200 / 200 per task).

Sections (``--sections``, default all three):

- ``cost``: (1) one training step, interleaved, on a batch of 32 of lowlevel-fmnist's first task
  (seed 0): static All, LASEM with the fused E-step (default), LASEM with a separate E-step call
  (its share of the step), the M-step alone, and LASEM with every configuration run as its own
  module (no shared prefixes); median milliseconds over ``--repeats`` interleaved repeats.
- ``accuracy``: on each stream (``--streams``), the arms LASEM on each base (the default Eq. 1
  prior and mean likelihood; the posterior-mean prior; the product likelihood; ``settle`` = 1
  and 5, ours: the EM stops once argmax prior has held that many mini-batches), the static All /
  Top-2 / Bottom-2 of each base, independent nets and fine-tuning. Tables:
  (a) per stream and base learner (`protocol.table`, control = the base's static All): AP (mean
  final test accuracy) with its paired difference from the base's All, peak (mean accuracy
  right after each task), BWT, forgetting ratio (mean over t < T of final / peak accuracy, spec
  §4 [I]), CPU seconds of the tasks' steps (training, per-epoch validation, commit; measured by
  the runner loop, `protocol.Run.cpu`, with the CPU time of worker processes it waited for);
  (b) the masks LASEM picked per seed (T shared, F own, conv1 first), the share rate of each
  conv and the tasks whose posterior argmax never moved after the first mini-batch (read from
  the final snapshot's posterior history);
  (c) cost per task end to end: per seed, the mean over tasks of LASEM's CPU seconds / its
  static All's (same data and epochs), for the default LASEM and each ``settle``; with
  ``--device cuda`` also in wall seconds;
  (d) ``settle`` against the default LASEM: that ratio for both, AP, AP's paired differences
  from the default LASEM and from static All, the batch the EM settled at, and how many tasks
  committed the default's mask;
  (e) a summary per stream: each LASEM variant's AP minus static All, minus the best static
  configuration (by mean AP), minus independent and minus finetune (paired), and its
  forgetting ratio.
- ``brute``: ``lasem-brute`` (HPS, one process) on the known-answer stream against LASEM-HPS
  (the accuracy section's cells, reused): AP with its paired difference from brute force,
  peak, forgetting ratio, CPU seconds and CPU / brute force's of the same seed; the masks per
  seed; then one brute-force run (the first seed) with two worker processes sharing an Optuna
  journal (kept under ``OUT/<stream>/two-workers/seed-S``): trials and busy seconds per worker,
  wall and CPU against the one-process run, and whether it chose the same masks and produced the
  same accuracy matrix.

Every "a ± b" is the mean ± sample standard deviation over the seeds; a paired difference is
``mean [95% CI]`` of the per-seed differences (Student t, `jointnet.experiments.stats.paired`),
``-`` with fewer than two common seeds. Failed cells (a diverged loss) are left out and counted
(`protocol.table`), and skipped in the other tables.

Options (defaults in brackets): ``--out`` (required: the cell directory), ``--seeds``
[`protocol.SEEDS`, 0-4], ``--epochs`` [5], ``--per-class`` [100], ``--streams``
[lowlevel-fmnist split-fmnist], ``--sections`` [cost accuracy brute], ``--only TEXT...``
[every arm: the accuracy section runs only the arms labelled TEXT, or whose label contains TEXT
when no label is TEXT], ``--repeats`` [7], ``--threads`` [1, `torch.set_num_threads`],
``--device`` [cpu; cuda runs the step timing and the runs on the GPU], ``--synthetic`` [off],
``--quick`` [off: a smoke run of every code path, first seed, 1 epoch, P = 10, 2 repeats; not a
measurement].
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import header  # noqa: E402
from benchmarks.protocol import (  # noqa: E402
    SEEDS, Arm, Metric, Run, by_seed, finished, fmt_ci, fmt_summary, run_cell, run_grid, table,
)
from jointnet.execution import Context, ParamStore, compile_net  # noqa: E402
from jointnet.execution.optim import train_plan  # noqa: E402
from jointnet.experiments.runner import RunSpec  # noqa: E402
from jointnet.experiments.stats import paired, summary  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402
from jointnet.graph.net import JointNet  # noqa: E402
from strategies import lasem_core as core  # noqa: E402
from strategies.lasem import merge_plans  # noqa: E402
from strategies.lasem_graph import Template, build_column, config_view, e_view, ensure_shared, share_slots  # noqa: E402

TEMPLATE = {"channels": [16, 16, 32, 32], "pools": [2, 2, 2, 1], "fc": [64], "init": "torch"}
BASES = ("hps", "tf", "dfcnn")
STATIC = ("all", "top2", "bottom2")
SETTLE = (1, 5)  # the ``settle`` values benchmarked (ours: the EM stops once argmax prior holds)
VARIANTS = ("", " (posterior-mean prior)", " (product likelihood)") + tuple(f" (settle={k})" for k in SETTLE)
STREAMS = ("lowlevel-fmnist", "split-fmnist")
N_VAL = 200  # validation images per task (>= protocol.MIN_VAL)
BRUTE = "brute force (HPS)"
SNAPSHOTS = "last"  # the final net of every cell: its posterior history ("argmax never moved")


def backbone() -> list:
    layers: list = [{"kind": "input", "shape": [1, 28, 28]}]
    for c, p in zip(TEMPLATE["channels"], TEMPLATE["pools"]):
        layers += [{"kind": "conv", "out_ch": c, "padding": 1}, {"kind": "relu"}]
        if p > 1:
            layers.append({"kind": "maxpool", "kernel": p})
    return layers + [{"kind": "flatten"}, {"kind": "dropout", "p": 0.5}, {"kind": "linear", "out_f": 64}, {"kind": "relu"}]


# ---- streams and arms ----------------------------------------------------------------------------


def stream_key(name: str, synthetic: bool) -> str:
    """The grid's key (and folder) of stream `name`: the name, or ``synthetic:NAME`` for its stand-in."""
    return f"synthetic:{name}" if synthetic else name


def stream_spec(name: str, per_class: int, synthetic: bool) -> tuple[str, dict]:
    """``(registered stream, options)`` of `name` (``lowlevel-fmnist`` or ``split-fmnist``):
    5 * `per_class` training and `N_VAL` validation images per task (module docstring)."""
    n_train = 5 * per_class
    if synthetic:  # no data files: Gaussian class prototypes of the same shape and sizes
        k = 5 if name == "lowlevel-fmnist" else 2
        return "synthetic", {"n_tasks": 5, "classes_per_task": k, "input_shape": [1, 28, 28],
                             "n_train_per_class": round(n_train / k), "n_val_per_class": N_VAL // k,
                             "n_test_per_class": 100}
    if name == "lowlevel-fmnist":
        return name, {"n_train_per_class": per_class, "n_val_per_class": N_VAL // 5, "n_test_per_class": 100}
    # the validation images come out of the drawn total: draw them on top of the training images
    return name, {"n_train_per_task": n_train + N_VAL, "n_test_per_task": 500, "val_fraction": N_VAL / (n_train + N_VAL)}


def config(args) -> dict:
    return {"epochs": args.epochs, "batch_size": 32, "lr": 1e-3, "optimizer": "rmsprop", "momentum": 0.0,
            "device": args.device}


def accuracy_arms() -> list[Arm]:
    out = [Arm(f"LASEM-{b.upper()}", f"lasem-{b}", dict(TEMPLATE)) for b in BASES]
    out += [Arm(f"LASEM-{b.upper()} (posterior-mean prior)", f"lasem-{b}", {**TEMPLATE, "prior": "posterior_mean"})
            for b in BASES]
    out += [Arm(f"LASEM-{b.upper()} (product likelihood)", f"lasem-{b}", {**TEMPLATE, "likelihood": "product"})
            for b in BASES]
    out += [Arm(f"LASEM-{b.upper()} (settle={k})", f"lasem-{b}", {**TEMPLATE, "settle": k})
            for k in SETTLE for b in BASES]
    for b in BASES:
        out += [Arm(f"{b.upper()} {s}", f"lasem-{b}", {**TEMPLATE, "config": s}) for s in STATIC]
    out += [Arm("independent", "independent", {"backbone": backbone()}),
            Arm("finetune", "finetune", {"backbone": backbone()})]
    return out


def selected(label: str, only, labels) -> bool:
    """``--only``: a TEXT equal to an arm's label selects that arm alone, any other TEXT every
    arm whose label contains it; no ``--only``: every arm."""
    return not only or any(label == o or (o not in labels and o in label) for o in only)


# ---- what the tables read from a run -------------------------------------------------------------


def peak(run: Run) -> float:
    """Mean accuracy on each task right after training it."""
    return statistics.fmean(run.matrix[t][t] for t in range(len(run.matrix)))


def forgetting_ratio(run: Run) -> float | None:
    """Mean over t < T of final / peak accuracy (spec §4 [I]); None for one task or a zero peak."""
    R, T = run.matrix, len(run.matrix)
    if T < 2 or any(R[t][t] == 0 for t in range(T - 1)):
        return None
    return statistics.fmean(R[-1][t] / R[t][t] for t in range(T - 1))


def records(run: Run) -> list[dict]:
    """The ``lasem`` task annotations of the final net, tasks in order."""
    tasks = run.annotations["tasks"]
    return [tasks[t]["lasem"] for t in run.result["tasks"] if "lasem" in tasks.get(t, {})]


def masks(run: Run) -> list[str]:
    return [a["mask"] for a in records(run)]


@functools.lru_cache(maxsize=None)
def _locked(path: str) -> tuple[bool, ...]:
    from jointnet.persistence import snapshot

    net, store = snapshot.load(Path(path))
    out = []
    for t in net.tasks:
        a = net.tasks[t].annotations.get("lasem")
        if a is not None and a.get("posterior") is not None:
            am = store[a["posterior"].key].argmax(1)
            out.append(bool((am == am[0]).all()))
    return tuple(out)


def locked(run: Run) -> list[bool]:
    """Per EM task: did the posterior's argmax stay where the first mini-batch put it? (From the
    final snapshot's posterior history.)"""
    n = len(run.matrix)
    return list(_locked(str(run.dir / f"snapshot-{n - 1}.jn")))


def task_ratio(a: Run, s: Run, what: str = "cpu") -> float:
    """Mean over tasks of `a`'s seconds / `s`'s (``cpu``: CPU seconds, ``wall``: wall seconds)."""
    xa, xs = (a.cpu, s.cpu) if what == "cpu" else (a.result["wall_time"], s.result["wall_time"])
    return statistics.fmean(u / v for u, v in zip(xa, xs))


def fmt(values, spec: str = ".3f") -> str:
    """``mean ± sd`` of `values`, ``-`` when there are none."""
    values = [v for v in values if v is not None]
    return fmt_summary(summary(values), spec) if values else "-"


def fmt_paired(a: dict[int, float], b: dict[int, float], spec: str = "+.3f") -> str:
    """The paired difference ``a - b`` over their common seeds, ``mean [95% CI]``; ``-`` below 2 seeds."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return "-"
    return fmt_ci(paired([a[s] for s in common], [b[s] for s in common]), spec)


def ap_of(runs: dict[int, Run]) -> dict[int, float]:
    return {s: r.metrics["AP"] for s, r in runs.items()}


PEAK = Metric("peak (after own task)", lambda r, _: peak(r), ".3f", paired=False)
RATIO = Metric("forgetting ratio", lambda r, _: forgetting_ratio(r), ".3f", paired=False)
CPU = Metric("CPU s (training)", lambda r, _: float(sum(r.cpu)), ".1f", paired=False)


# ---- accuracy tables -----------------------------------------------------------------------------


def print_accuracy(grid: dict, key: str, labels: list[str]) -> None:
    n = len(by_seed(grid, key))
    metrics = [Metric("AP (final)", lambda r, _: r.metrics["AP"], ".3f"), PEAK,
               Metric("BWT", lambda r, _: r.metrics["BWT"], "+.3f", paired=False), RATIO, CPU]
    for b in BASES:
        control = f"{b.upper()} all"
        rows = [lb for lb in labels if lb.startswith((f"LASEM-{b.upper()}", f"{b.upper()} "))]
        rows += [lb for lb in ("independent", "finetune") if lb in labels]
        if not any(lb.startswith(("LASEM", f"{b.upper()} ")) for lb in rows):
            continue
        print(f"\n### {key}: accuracy and forgetting, base {b.upper()} ({n} seeds; Δ against {control}, paired)\n")
        print(table(grid, key, control=control, metrics=metrics, labels=rows))
    print(f"\nMasks LASEM picked on {key} (T shared, F own, conv1 first; one line per seed, tasks in order):\n")
    print("| LASEM | masks per seed | share rate conv1..conv4 | tasks whose argmax never moved after batch 1 |")
    print("|---|---|---|---|")
    for label in labels:
        if not label.startswith("LASEM"):
            continue
        runs = finished(by_seed(grid, key), label)
        per_seed = [masks(r) for r in runs.values()]
        ms = [m for seed in per_seed for m in seed]
        still = [x for r in runs.values() for x in locked(r)]
        rate = " / ".join(f"{sum(m[i] == 'T' for m in ms) / len(ms):.2f}" for i in range(4)) if ms else "-"
        print(f"| {label[6:]} | {'<br>'.join(' '.join(m) for m in per_seed) or '-'} | {rate} | "
              f"{sum(still)} of {len(still)} |")


def print_task_cost(grid: dict, keys: list[str], what: str = "cpu") -> None:
    """Per task, LASEM's seconds / its static All's (same data and epochs), mean ± sd over seeds."""
    unit = "CPU seconds" if what == "cpu" else "wall seconds"
    lines = []
    for key in keys:
        for variant in ("",) + tuple(f" (settle={k})" for k in SETTLE):
            cells = []
            for b in BASES:
                lasem, static = finished(by_seed(grid, key), f"LASEM-{b.upper()}{variant}"), finished(by_seed(grid, key), f"{b.upper()} all")
                ratios = [task_ratio(lasem[s], static[s], what) for s in sorted(set(lasem) & set(static))]
                cells.append(fmt(ratios, ".2f") + "x" if ratios else "-")
            if variant and cells.count("-") == len(cells):
                continue
            lines.append(f"| {key}{variant} | " + " | ".join(cells) + " |")
    if not lines:
        return
    print(f"\n### Cost per task, end to end (LASEM / static All, {unit} of the task's step: training with "
          "its per-epoch validation, and the commit; same data and epochs)\n")
    print("| stream | HPS | TF | DF-CNN |")
    print("|---|---|---|---|")
    print("\n".join(lines))


def print_settle(grid: dict, keys: list[str], what: str = "cpu") -> None:
    """``settle`` against the default LASEM (the EM on every mini-batch): cost per task relative
    to static All, AP and its paired differences from the default and from static All, the batch
    the EM settled at, and how many tasks committed the default's mask."""
    rows = []
    for key in keys:
        for b in BASES:
            full, static = finished(by_seed(grid, key), f"LASEM-{b.upper()}"), finished(by_seed(grid, key), f"{b.upper()} all")
            for k in SETTLE:
                rs = finished(by_seed(grid, key), f"LASEM-{b.upper()} (settle={k})")
                if not rs:
                    continue
                same = [m == f for s in sorted(set(rs) & set(full)) for m, f in zip(masks(rs[s]), masks(full[s]))]
                settled = [a.get("settled") for r in rs.values() for a in records(r)]
                done = [s for s in settled if s is not None]
                ratio = [task_ratio(rs[s], static[s], what) for s in sorted(set(rs) & set(static))]
                ratio_full = [task_ratio(full[s], static[s], what) for s in sorted(set(full) & set(static))]
                at = f"batch {min(done)}-{max(done)}" if done else "batch -"
                rows.append(
                    f"| {key} | {b.upper()} | {k} | {fmt(ratio, '.2f')}x | {fmt(ratio_full, '.2f')}x | "
                    f"{fmt(ap_of(rs).values())} | {fmt_paired(ap_of(rs), ap_of(full))} | "
                    f"{fmt_paired(ap_of(rs), ap_of(static))} | {len(done)} of {len(settled)}, {at} | "
                    f"{sum(same)} of {len(same)} |")
    if not rows:
        return
    unit = "CPU seconds" if what == "cpu" else "wall seconds"
    print(f"\n### settle: the EM stops once argmax prior has held K mini-batches ({unit} per task / static All)\n")
    print("| stream | base | K | per task / static All | default LASEM / static All | AP | Δ AP vs default LASEM "
          "[95% CI] | Δ AP vs static All [95% CI] | tasks settled, at batch | tasks committing the default's mask |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def print_summary(grid: dict, keys: list[str]) -> None:
    """Per stream and base learner: LASEM's AP against its static All, its best static
    configuration, the independent nets and fine-tuning (paired differences over the seeds)."""
    for key in keys:
        lines = []
        for variant in VARIANTS:
            for b in BASES:
                rs = finished(by_seed(grid, key), f"LASEM-{b.upper()}{variant}")
                if not rs:
                    continue
                ap = ap_of(rs)
                statics = {s: ap_of(finished(by_seed(grid, key), f"{b.upper()} {s}")) for s in STATIC}
                statics = {s: v for s, v in statics.items() if v}
                best = max(statics, key=lambda s: statistics.fmean(statics[s].values())) if statics else None
                cells = [fmt_paired(ap, statics["all"]) if "all" in statics else "-",
                         f"{fmt_paired(ap, statics[best])} ({best})" if best else "-"]
                cells += [fmt_paired(ap, ap_of(finished(by_seed(grid, key), ref))) for ref in ("independent", "finetune")]
                lines.append(f"| {b.upper()}{variant} | {fmt(ap.values())} | " + " | ".join(cells)
                             + f" | {fmt(forgetting_ratio(r) for r in rs.values())} |")
        if not lines:
            continue
        print(f"\n### Summary on {key}: LASEM minus each reference, AP (final), paired over seeds [95% CI]\n")
        print("| LASEM | AP | - static All | - best static (which) | - independent | - finetune | forgetting ratio |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))


def bench_accuracy(args, out: Path) -> dict:
    arms = accuracy_arms()
    labels = {a.label for a in arms}
    arms = [a for a in arms if selected(a.label, args.only, labels)]
    if not arms:
        raise SystemExit(f"--only {' '.join(args.only)}: no arm matches; arms are {', '.join(sorted(labels))}")
    grid: dict = {}
    keys = []
    for name in args.streams:
        key = stream_key(name, args.synthetic)
        registered, opts = stream_spec(name, args.per_class, args.synthetic)
        g = run_grid(arms, {key: opts}, out=out, seeds=args.seeds, config=config(args), snapshots=SNAPSHOTS,
                     stream_names={key: registered}, echo=lambda m: print(m, file=sys.stderr, flush=True))
        grid.update(g)
        keys.append(key)
        print_accuracy(grid, key, [a.label for a in arms])
        sys.stdout.flush()
    print_task_cost(grid, keys)
    if args.device != "cpu":
        print_task_cost(grid, keys, "wall")
    print_settle(grid, keys)
    print_summary(grid, keys)
    return grid


# ---- cost ------------------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_fns(base: str, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One training step each way on the same net, batch and optimizer settings."""
    t = Template(base=base, channels=TEMPLATE["channels"], pools=TEMPLATE["pools"], fc=TEMPLATE["fc"])
    own, feeds = build_column(JointNet.empty(), t, "t1", int(y.max()) + 1, tuple(x.shape[1:]))
    net = share_slots(ensure_shared(own, t, "t1", feeds, t.slots), "t1", t.slots)
    store = ParamStore(seed=0, device=str(x.device)).realize(net)
    masks = core.enumerate_masks(t.d)
    views = [config_view(net, t, "t1", m) for m in masks]
    e_views = [e_view(net, v, f"e:{m}") for v, m in zip(views, masks)]
    tp = merge_plans(train_plan(net, store, "t1", 1e-3), train_plan(own, store, "t1", 1e-3))
    params = [p for g in tp.groups for p in g["params"]]
    opt = torch.optim.RMSprop(params, lr=1e-6, alpha=0.9, eps=1e-10)  # tiny lr: the net barely moves
    ctx = Context(training=True)
    fused = compile_net(net, store, e_views + views, independent_dropout=True)
    m_only = compile_net(net, store, views, independent_dropout=True)
    e_only = compile_net(net, store, e_views)
    static = compile_net(net, store, [views[-1]])  # All
    singles = [compile_net(net, store, [v]) for v in views]
    prior = torch.full((len(masks),), 1 / len(masks), dtype=torch.float64)
    timing = {"e": 0.0}

    def post_of(out):
        with torch.no_grad():
            lp = torch.stack([F.log_softmax(out[e.name], 1).gather(1, y[:, None])[:, 0] for e in e_views])
            return core.posterior(prior, core.log_likelihood(lp.cpu())).float().to(x.device)

    def finish(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def weighted(out, w):
        return (w * torch.stack([F.cross_entropy(out[v.name], y) for v in views])).sum()

    def s_static():
        finish(F.cross_entropy(static(x, ctx)[views[-1].name], y))

    def s_fused():
        out = fused(x, ctx)
        finish(weighted(out, post_of(out)))

    def s_separate():
        t0 = time.perf_counter()
        with torch.no_grad():
            w = post_of(e_only(x, ctx))
        _sync()
        timing["e"] += time.perf_counter() - t0
        finish(weighted(m_only(x, ctx), w))

    def s_m_only():
        finish(weighted(m_only(x, ctx), torch.full((len(masks),), 1 / len(masks), device=x.device)))

    def s_per_path():
        outs = {}
        with torch.no_grad():
            lp = torch.stack([F.log_softmax(m(x, Context(training=True, dropout=False))[v.name], 1)
                              .gather(1, y[:, None])[:, 0] for m, v in zip(singles, views)])
            w = core.posterior(prior, core.log_likelihood(lp.cpu())).float().to(x.device)
        for m, v in zip(singles, views):
            outs[v.name] = m(x, ctx)[v.name]
        finish(weighted(outs, w))

    return {"static All": s_static, "LASEM (fused E-step)": s_fused, "LASEM (separate E-step)": s_separate,
            "M-step only": s_m_only, "LASEM per path (no shared prefixes)": s_per_path, "_timing": timing}


def bench_cost(args) -> None:
    registered, opts = stream_spec("lowlevel-fmnist", args.per_class, args.synthetic)
    stream = get_stream(registered, seed=0, **opts)
    x, y = stream.tasks[0].x_train[:32].to(args.device), stream.tasks[0].y_train[:32].to(args.device)
    rows = {}
    for base in BASES:
        fns = step_fns(base, x, y)
        timing = fns.pop("_timing")
        for f in fns.values():
            f()
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():  # interleaved: drift hits every variant alike
                n = 2 if "per path" in k or "LASEM" in k or "M-step" in k else 8
                timing["e"] = 0.0
                _sync()
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                _sync()
                times[k].append((time.perf_counter() - t0) / n * 1e3)
                if "separate" in k:
                    times.setdefault("_e", []).append(timing["e"] / n * 1e3)
        rows[base] = {k: statistics.median(v) for k, v in times.items()}
    print_cost(rows, stream_key("lowlevel-fmnist", args.synthetic))


def print_cost(rows: dict, key: str) -> None:
    print(f"\n### Cost of one training step (batch 32 of {key}, 16 configurations; median ms, interleaved)\n")
    print("| base | static All | LASEM fused E-step | ratio | LASEM separate E-step | E-step share | "
          "M-step only | per path (no shared prefixes) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for base, med in rows.items():
        s = med["static All"]
        print(f"| {base} | {s:.1f} | {med['LASEM (fused E-step)']:.1f} | {med['LASEM (fused E-step)'] / s:.2f}x | "
              f"{med['LASEM (separate E-step)']:.1f} | {med['_e'] / med['LASEM (separate E-step)']:.0%} | "
              f"{med['M-step only']:.1f} | {med['LASEM per path (no shared prefixes)']:.1f} | "
              f"{med['LASEM per path (no shared prefixes)'] / s:.2f}x |")


# ---- brute force ---------------------------------------------------------------------------------


def brute_arms() -> list[Arm]:
    """LASEM-HPS (the accuracy section's arm: its cells are reused) and brute force over HPS."""
    return [Arm("LASEM-HPS", "lasem-hps", dict(TEMPLATE)), Arm(BRUTE, "lasem-brute", dict(TEMPLATE))]


def bench_brute(args, out: Path) -> None:
    key = stream_key("lowlevel-fmnist", args.synthetic)
    registered, opts = stream_spec("lowlevel-fmnist", args.per_class, args.synthetic)
    grid = run_grid(brute_arms(), {key: opts}, out=out, seeds=args.seeds, config=config(args), snapshots=SNAPSHOTS,
                    stream_names={key: registered}, echo=lambda m: print(m, file=sys.stderr, flush=True))
    brute = finished(by_seed(grid, key), BRUTE)

    def per_brute(r: Run, _runs) -> float | None:
        b = brute.get(r.seed)
        return sum(r.cpu) / sum(b.cpu) if b is not None else None

    metrics = [Metric("AP (final)", lambda r, _: r.metrics["AP"], ".3f"), PEAK, RATIO,
               Metric("CPU s", lambda r, _: float(sum(r.cpu)), ".0f", paired=False),
               Metric("CPU / brute force", per_brute, ".2f", paired=False)]
    print(f"\n### LASEM-HPS against brute force on {key} ({len(by_seed(grid, key))} seeds; Δ against brute force, "
          "paired)\n")
    print(table(grid, key, control=BRUTE, metrics=metrics, labels=["LASEM-HPS", BRUTE]))
    lasem = finished(by_seed(grid, key), "LASEM-HPS")
    print("\n| seed | LASEM-HPS masks | brute-force masks |")
    print("|---|---|---|")
    for seed in args.seeds:
        cells = [" ".join(masks(runs[seed])) if seed in runs else "(failed)" for runs in (lasem, brute)]
        print(f"| {seed} | {cells[0]} | {cells[1]} |")
    two_workers(args, out, key, registered, opts, brute)


def two_workers(args, out: Path, key: str, registered: str, opts: dict, brute: dict[int, Run]) -> None:
    """One brute-force run with two worker processes sharing an Optuna journal (the first seed),
    against the one-process run of the same seed."""
    seed = args.seeds[0]
    if seed not in brute:
        print(f"\n(two workers: skipped, the one-process brute-force run of seed {seed} failed)")
        return
    folder = (out / key.replace(":", "_") / "two-workers" / f"seed-{seed}").resolve()
    spec = RunSpec("lasem-brute", registered, seed, strategy_options={**TEMPLATE, "workers": 2, "storage": str(folder)},
                   stream_options=dict(opts), config=config(args))
    t0 = time.perf_counter()
    two = run_cell(spec, out, label=f"{BRUTE}, 2 workers", snapshots=SNAPSHOTS, folder=key)
    print(f"  {key} seed {seed} {BRUTE}, 2 workers: " + (f"FAILED ({two.failed})" if two.failed else
          f"AP {two.metrics['AP']:.4f}") + f"  ({'reused' if two.reused else f'{time.perf_counter() - t0:.1f}s'})",
          file=sys.stderr, flush=True)
    if two.failed:
        print(f"\n(two workers, seed {seed}: FAILED, {two.failed})")
        return
    one = brute[seed]
    same = masks(two) == masks(one) and two.matrix == one.matrix
    import optuna

    from strategies.trials import journal_storage

    storage = journal_storage(folder / "journal.log")
    per_worker: Counter = Counter()
    busy: Counter = Counter()
    for name in optuna.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).trials:
            if t.state.name == "COMPLETE":
                per_worker[t.user_attrs["worker"]] += 1
                busy[t.user_attrs["worker"]] += t.user_attrs["seconds"]
    print(f"\nTwo worker processes sharing one Optuna journal, seed {seed}: trials per worker "
          f"{dict(per_worker)}, seconds of trials per worker {{{', '.join(f'{k}: {v:.0f}' for k, v in busy.items())}}}, "
          f"wall {sum(two.result['wall_time']):.0f}s against {sum(one.result['wall_time']):.0f}s with one process "
          f"(CPU {sum(two.cpu):.0f}s of parent and workers against {sum(one.cpu):.0f}s); "
          f"same masks and accuracy matrix as the one-process run: {same}.")


# ---- main ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory of the run cells (a finished cell is reused when its "
                                                "recorded spec matches)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="paired seeds (default 0-4)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per task (default 5)")
    p.add_argument("--per-class", type=int, default=100,
                   help="training images per class and task of lowlevel-fmnist; 5x as many per task on every stream "
                        "(default 100)")
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS,
                   help="the accuracy section's streams (default both)")
    p.add_argument("--sections", nargs="+", default=["cost", "accuracy", "brute"], choices=["cost", "accuracy", "brute"],
                   help="default all three")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="accuracy section: run only these arms (a label, or text that labels contain; default all)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats of the step timing (default 7)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="the step timing and the runs (default cpu)")
    p.add_argument("--synthetic", action="store_true",
                   help="the synthetic stream in place of the Fashion-MNIST ones (a machine without the data)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of every code path: first seed, 1 epoch, 10 images per class, 2 repeats")
    args = p.parse_args(argv)
    for name in ("epochs", "per_class", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must be distinct ints >= 0 (got {args.seeds})")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.quick:
        args.seeds, args.epochs, args.per_class, args.repeats = args.seeds[:1], 1, 10, 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    header(args.quick, f"seeds {args.seeds}, {args.epochs} epochs, {5 * args.per_class} training and {N_VAL} "
                       f"validation images per task, cells in {out}")
    t0 = time.perf_counter()
    if "cost" in args.sections:
        bench_cost(args)
    if "accuracy" in args.sections:
        bench_accuracy(args, out)
    if "brute" in args.sections:
        bench_brute(args, out)
    print(f"\n(total {time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
