"""LASEM on CPU: cost against static configurations, accuracy and forgetting against static
configurations, independent nets and fine-tuning, and LASEM against brute force.

    python benchmarks/lasem.py --seeds 0 1 2 --epochs 5

Every LASEM net is the spec's 4-conv template at CPU size: conv 16-16-32-32 (3x3, SAME, ReLU),
max-pool 2 after the first three, flatten, dropout 0.5, a task-specific FC 64 + ReLU and a head;
16 configurations. Training: RMSprop (lr 1e-3, momentum 0; LASEM's alpha 0.9 / eps 1e-10),
batch 32, ``--epochs`` per task, ``init="torch"`` (PyTorch's uniform: on
lowlevel-fmnist, seed 0, static All with HPS, the code's truncated-normal 0.05 / bias 0.2 gave AP
0.704 and peak 0.829 against 0.809 and 0.859). Static
configurations run the same code with one configuration; ``independent`` and ``finetune`` are the
core strategies over one column of the same layers (fine-tuning shares the FC layer too), with
the core trainer's RMSprop (PyTorch's alpha 0.99, eps 1e-8).

Sections (``--sections``):

- ``cost``: (1) one training step, interleaved, on a batch of 32: static All, LASEM with the
  fused E-step (default), LASEM with a separate E-step call (its share of the step), the M-step
  alone, and LASEM with every configuration run as its own module (no shared prefixes);
  (2) per task, the CPU seconds of the accuracy runs' steps (training, per-epoch validation,
  commit), LASEM / static All (same data and epochs), for the default LASEM and for ``settle`` =
  1 and 5 (the EM stops once argmax prior has held that many mini-batches; ours), with the
  latter's AP against the default LASEM (paired) in a table of its own (``print_settle``; the
  accuracy section's ``(settle=K)`` rows, e.g. ``--only "settle="``).
- ``accuracy``: ``lowlevel-fmnist`` (the known-answer stream: same classes, each task its own
  low-level transform; sharing the top convs and owning the bottom ones should win) and
  ``split-fmnist``: AP (mean final test accuracy), peak (mean accuracy right after each task),
  BWT, forgetting ratio (mean over t < T of final / peak accuracy, spec §4 [I]), and the masks
  LASEM picks, for LASEM on each base (the default Eq. 1 prior and mean likelihood; the
  posterior-mean prior; the product likelihood; ``settle`` = 1 and 5), the static All / Top-2 /
  Bottom-2 of each base,
  independent nets and fine-tuning; then a summary of LASEM's paired differences from its
  references. Mean ± 95% CI (Student t, `jointnet.experiments.stats`) over seeds.
- ``brute``: ``lasem-brute`` (HPS) on the known-answer stream against LASEM-HPS: AP, time, the
  masks; then one brute-force run with two worker processes sharing an Optuna journal.

Tables print as markdown; ``--json`` saves the raw numbers (after every run), ``--report JSON``
prints the tables of a saved file again without training, and ``--only TEXT --merge JSON`` runs
only the accuracy rows labelled TEXT (or whose label contains TEXT, when no label is TEXT) and
adds them to a saved run (same seeds, epochs, images, threads and device, checked). Without the
Fashion-MNIST files (a GPU machine), ``--synthetic`` runs the synthetic stream in their place;
``--device cuda`` runs the step timing and the runs on the GPU (then the per-task ratio is also
given in wall seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import header  # noqa: E402
from jointnet.execution import Context, ParamStore, compile_net  # noqa: E402
from jointnet.execution.optim import train_plan  # noqa: E402
from jointnet.experiments.metrics import summarize  # noqa: E402
from jointnet.experiments.runner import run_tasks  # noqa: E402
from jointnet.experiments.stats import paired, summary  # noqa: E402
from jointnet.experiments.strategy import get  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402
from jointnet.experiments.trainer import TrainConfig  # noqa: E402
from jointnet.graph.net import JointNet  # noqa: E402
from strategies import lasem_core as core  # noqa: E402
from strategies.lasem import merge_plans  # noqa: E402
from strategies.lasem_graph import Template, build_column, config_view, e_view, ensure_shared, share_slots  # noqa: E402

TEMPLATE = {"channels": [16, 16, 32, 32], "pools": [2, 2, 2, 1], "fc": [64], "init": "torch"}
BASES = ("hps", "tf", "dfcnn")
STATIC = ("all", "top2", "bottom2")
SETTLE = (1, 5)  # the ``settle`` values benchmarked (ours: the EM stops once argmax prior holds)


def ci(values, spec=".3f") -> str:
    """``mean ± half-width of the Student-t 95% CI`` over seeds (`jointnet.experiments.stats`)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    s = summary(values)
    return f"{s.mean:{spec}}" if s.n < 2 else f"{s.mean:{spec}} ± {s.half_width:{spec.lstrip('+')}}"


def ci_paired(a, b, spec="+.3f") -> str:
    """The paired difference ``a - b`` over the same seeds: mean ± 95% CI half-width."""
    s = paired(a, b)
    return f"{s.mean:{spec}}" if s.n < 2 else f"{s.mean:{spec}} ± {s.half_width:{spec.lstrip('+')}}"


def save(args, results: dict) -> None:
    """Write the raw numbers so far to ``--json`` (after every run: a long run that stops keeps them)."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


def backbone() -> list:
    layers: list = [{"kind": "input", "shape": [1, 28, 28]}]
    for c, p in zip(TEMPLATE["channels"], TEMPLATE["pools"]):
        layers += [{"kind": "conv", "out_ch": c, "padding": 1}, {"kind": "relu"}]
        if p > 1:
            layers.append({"kind": "maxpool", "kernel": p})
    return layers + [{"kind": "flatten"}, {"kind": "dropout", "p": 0.5}, {"kind": "linear", "out_f": 64}, {"kind": "relu"}]


def stream_of(name: str, seed: int, args):
    if args.synthetic:  # no data files: Gaussian class prototypes of the same shape and sizes
        k = 5 if name == "lowlevel-fmnist" else 2
        return get_stream("synthetic", seed=seed, n_tasks=5, classes_per_task=k, input_shape=(1, 28, 28),
                          n_train_per_class=round(args.per_class * 5 / k), n_val_per_class=20, n_test_per_class=100)
    if name == "lowlevel-fmnist":
        return get_stream(name, seed=seed, n_train_per_class=args.per_class, n_val_per_class=20, n_test_per_class=100)
    # as many training images per task as lowlevel-fmnist's 5 classes (after the 10% validation split)
    return get_stream(name, seed=seed, n_train_per_task=round(args.per_class * 5 / 0.9), n_test_per_task=500,
                      val_fraction=0.1)


def train_config(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=32, lr=1e-3, optimizer="rmsprop", momentum=0.0,
                       device=args.device)


class Timed:
    """A strategy whose `step` also records the CPU seconds of this process (and of the worker
    processes it waited for) per task: wall time on a CPU shared with other jobs follows their
    load, CPU time much less."""

    def __init__(self, strategy):
        self.strategy, self.name, self.cpu, self.wall = strategy, getattr(strategy, "name", "?"), [], []

    def step(self, net, run):
        t0, w0 = time.process_time() + _children(), time.perf_counter()
        out = self.strategy.step(net, run)
        _sync()
        self.cpu.append(time.process_time() + _children() - t0)
        self.wall.append(time.perf_counter() - w0)
        return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _children() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(name: str, options: dict, stream, config, seed: int) -> dict:
    strategy = Timed(get(name, **options))
    matrix, wall, net, store = [], [], None, None
    for o in run_tasks(strategy, stream, config, seed=seed, echo=None):
        matrix.append(o.row)
        wall.append(o.wall)
        net, store = o.net, o.store
    R = [row + [None] * (len(matrix) - len(row)) for row in matrix]
    m = summarize(R)
    T = len(matrix)
    peak = [matrix[t][t] for t in range(T)]
    ratio = statistics.fmean(matrix[-1][t] / peak[t] for t in range(T - 1)) if T > 1 else None
    anns = [net.tasks[t].annotations["lasem"] for t in net.tasks if "lasem" in net.tasks[t].annotations]
    masks = [a["mask"] for a in anns]
    # Did the posterior's argmax ever move after the first mini-batch? (EM tasks only)
    locked = []
    for a in anns:
        if a.get("posterior") is not None:
            am = store[a["posterior"].key].argmax(1)
            locked.append(bool((am == am[0]).all()))
    settled = [a.get("settled") for a in anns]
    return {"AP": m["AP"], "BWT": m.get("BWT"), "peak": statistics.fmean(peak), "ratio": ratio, "wall": wall,
            "cpu": strategy.cpu, "step_wall": strategy.wall, "masks": masks, "locked": locked, "matrix": matrix,
            "settled": settled}


# ---- accuracy --------------------------------------------------------------------------------------


def methods() -> list[tuple[str, str, dict]]:
    rows = [(f"LASEM-{b.upper()}", f"lasem-{b}", dict(TEMPLATE)) for b in BASES]
    rows += [(f"LASEM-{b.upper()} (posterior-mean prior)", f"lasem-{b}", {**TEMPLATE, "prior": "posterior_mean"})
             for b in BASES]
    rows += [(f"LASEM-{b.upper()} (product likelihood)", f"lasem-{b}", {**TEMPLATE, "likelihood": "product"})
             for b in BASES]
    rows += [(f"LASEM-{b.upper()} (settle={k})", f"lasem-{b}", {**TEMPLATE, "settle": k})
             for k in SETTLE for b in BASES]
    for b in BASES:
        rows += [(f"{b.upper()} {s}", f"lasem-{b}", {**TEMPLATE, "config": s}) for s in STATIC]
    rows += [("independent", "independent", {"backbone": backbone()}), ("finetune", "finetune", {"backbone": backbone()})]
    return rows


def _selected(label: str, only) -> bool:
    """``--only``: a TEXT equal to a method's label selects that method alone, any other TEXT
    every method whose label contains it."""
    labels = {m[0] for m in methods()}
    return any(label == o or (o not in labels and o in label) for o in only)


def bench_accuracy(args, results: dict) -> None:
    config = train_config(args)
    for sname in args.streams:
        res = results.setdefault("accuracy", {}).setdefault(sname, {})
        for seed in args.seeds:
            stream = stream_of(sname, seed, args)
            for label, name, opts in methods():
                if args.only and not _selected(label, args.only):
                    continue
                r = run_one(name, opts, stream, config, seed)
                res.setdefault(label, []).append(r)
                save(args, results)
                print(f"  {sname} seed {seed} {label}: AP {r['AP']:.3f} {' '.join(r['masks'])} "
                      f"({sum(r['wall']):.0f}s)", file=sys.stderr, flush=True)
        print_accuracy(sname, res)


def _in_order(res: dict) -> dict:
    """`res` with its rows in `methods` order (a merged run adds rows at the end)."""
    order = [m[0] for m in methods()]
    return dict(sorted(res.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def print_accuracy(sname: str, res: dict) -> None:
    res = _in_order(res)
    print(f"\n### {sname}: accuracy and forgetting ({len(next(iter(res.values())))} seeds)\n")
    print("| method | AP (final) | AP - All of its base (paired) | peak (after own task) | BWT | forgetting ratio "
          "| CPU s (training) |")
    print("|---|---|---|---|---|---|---|")
    for label, rs in res.items():
        base = next((b for b in BASES if label.startswith((f"LASEM-{b.upper()}", f"{b.upper()} "))), None)
        ref = res.get(f"{base.upper()} all") if base else None
        diff = ci_paired([r["AP"] for r in rs], [a["AP"] for a in ref]) if ref and not label.endswith(" all") else "-"
        print(f"| {label} | {ci([r['AP'] for r in rs])} | {diff} | {ci([r['peak'] for r in rs])} | "
              f"{ci([r['BWT'] for r in rs], '+.3f')} | {ci([r['ratio'] for r in rs])} | "
              f"{ci([sum(r['cpu']) for r in rs], '.1f')} |")
    print(f"\nMasks LASEM picked on {sname} (T shared, F own, conv1 first; one line per seed, tasks in order):\n")
    print("| LASEM | masks per seed | share rate conv1..conv4 | tasks whose argmax never moved after batch 1 |")
    print("|---|---|---|---|")
    for label, rs in res.items():
        if not label.startswith("LASEM"):
            continue
        masks = [m for r in rs for m in r["masks"]]
        locked = [x for r in rs for x in r.get("locked", [])]
        rate = " / ".join(f"{sum(m[i] == 'T' for m in masks) / len(masks):.2f}" for i in range(4)) if masks else "-"
        print(f"| {label[6:]} | {'<br>'.join(' '.join(r['masks']) for r in rs)} | {rate} | "
              f"{sum(locked)} of {len(locked)} |")


# ---- cost ------------------------------------------------------------------------------------------


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


def bench_cost(args, results: dict) -> None:
    stream = stream_of("lowlevel-fmnist", 0, args)
    x, y = stream.tasks[0].x_train[:32].to(args.device), stream.tasks[0].y_train[:32].to(args.device)
    rows = results.setdefault("cost", {})
    for base in BASES:
        fns = step_fns(base, x, y)
        timing = fns.pop("_timing")
        for f in fns.values():
            f()
        times = {k: [] for k in fns}
        e_total = 0.0
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
                    e_total = timing["e"] / n * 1e3
                    times.setdefault("_e", []).append(e_total)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[base] = med
    print_cost(rows)


def print_cost(rows: dict) -> None:
    print("\n### Cost of one training step (batch 32, 16 configurations; median ms, interleaved)\n")
    print("| base | static All | LASEM fused E-step | ratio | LASEM separate E-step | E-step share | "
          "M-step only | per path (no shared prefixes) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for base, med in rows.items():
        s = med["static All"]
        print(f"| {base} | {s:.1f} | {med['LASEM (fused E-step)']:.1f} | {med['LASEM (fused E-step)'] / s:.2f}x | "
              f"{med['LASEM (separate E-step)']:.1f} | {med['_e'] / med['LASEM (separate E-step)']:.0%} | "
              f"{med['M-step only']:.1f} | {med['LASEM per path (no shared prefixes)']:.1f} | "
              f"{med['LASEM per path (no shared prefixes)'] / s:.2f}x |")


def _task_ratio(lasem: list, static: list, key: str) -> list:
    """Per seed, the mean over tasks of LASEM's seconds / static All's (same data and epochs)."""
    return [statistics.fmean(a / s for a, s in zip(r1[key], r2[key])) for r1, r2 in zip(lasem, static)]


def print_wall_ratio(results: dict, key: str = "cpu") -> None:
    acc = results.get("accuracy", {})
    what = "CPU seconds" if key == "cpu" else "wall seconds"
    print(f"\n### Cost per task, end to end (LASEM / static All, {what} of the task's step: training with "
          "its per-epoch validation; same data and epochs)\n")
    print("| stream | HPS | TF | DF-CNN |")
    print("|---|---|---|---|")
    for sname, res in acc.items():
        for variant in ("",) + tuple(f" (settle={k})" for k in SETTLE):
            cells = []
            for b in BASES:
                ratios = _task_ratio(res.get(f"LASEM-{b.upper()}{variant}", []), res.get(f"{b.upper()} all", []), key)
                cells.append(ci(ratios, ".2f") + "x" if ratios else "-")
            if variant and cells.count("-") == len(cells):
                continue
            print(f"| {sname}{variant} | " + " | ".join(cells) + " |")
    print_settle(results, key)


def print_settle(results: dict, key: str = "cpu") -> None:
    """``settle`` against the default LASEM (the EM on every mini-batch): cost per task relative
    to static All, AP and its paired difference from the default, the batch the EM settled at,
    and how many tasks committed the default's mask."""
    rows = []
    for sname, res in results.get("accuracy", {}).items():
        for b in BASES:
            full, static = res.get(f"LASEM-{b.upper()}", []), res.get(f"{b.upper()} all", [])
            for k in SETTLE:
                rs = res.get(f"LASEM-{b.upper()} (settle={k})")
                if not rs:
                    continue
                n, m = min(len(rs), len(full)), min(len(rs), len(static))
                same = [m == f for r, d in zip(rs[:n], full[:n]) for m, f in zip(r["masks"], d["masks"])]
                settled = [s for r in rs for s in r.get("settled", [])]
                done = [s for s in settled if s is not None]
                rows.append(
                    f"| {sname} | {b.upper()} | {k} | {ci(_task_ratio(rs, static, key), '.2f')}x | "
                    f"{ci(_task_ratio(full, static, key), '.2f')}x | {ci([r['AP'] for r in rs])} | "
                    f"{ci_paired([r['AP'] for r in rs[:n]], [d['AP'] for d in full[:n]]) if n else '-'} | "
                    f"{ci_paired([r['AP'] for r in rs[:m]], [s['AP'] for s in static[:m]]) if m else '-'} | "
                    f"{len(done)} of {len(settled)}, batch {min(done) if done else '-'}-{max(done) if done else '-'} | "
                    f"{sum(same)} of {len(same)} |")
    if not rows:
        return
    what = "CPU seconds" if key == "cpu" else "wall seconds"
    print(f"\n### settle: the EM stops once argmax prior has held K mini-batches ({what} per task / static All)\n")
    print("| stream | base | K | per task / static All | default LASEM / static All | AP | AP - default LASEM "
          "(paired) | AP - static All (paired) | tasks settled, at batch | tasks committing the default's mask |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


# ---- brute force ---------------------------------------------------------------------------------


def bench_brute(args, results: dict) -> None:
    config = train_config(args)
    res = results.setdefault("brute", {"LASEM-HPS": [], "brute force (HPS)": []})
    for seed in args.seeds:
        stream = stream_of("lowlevel-fmnist", seed, args)
        prior = results.get("accuracy", {}).get("lowlevel-fmnist", {}).get("LASEM-HPS", [])
        lasem = prior[args.seeds.index(seed)] if len(prior) == len(args.seeds) else run_one(
            "lasem-hps", dict(TEMPLATE), stream, config, seed)
        brute = run_one("lasem-brute", dict(TEMPLATE), stream, config, seed)
        res["LASEM-HPS"].append(lasem)
        res["brute force (HPS)"].append(brute)
        save(args, results)
        print(f"  brute seed {seed}: AP {brute['AP']:.3f} {' '.join(brute['masks'])} ({sum(brute['wall']):.0f}s)",
              file=sys.stderr, flush=True)
    print_brute(res, args.seeds)
    two_workers(args, results)


def print_brute(res: dict, seeds) -> None:
    print(f"\n### LASEM-HPS against brute force on lowlevel-fmnist ({len(seeds)} seeds)\n")
    print("| method | AP (final) | AP - brute force (paired) | peak | forgetting ratio | CPU s | CPU / brute force |")
    print("|---|---|---|---|---|---|---|")
    brute = res["brute force (HPS)"]
    brute_t = [sum(r["cpu"]) for r in brute]
    for label, rs in res.items():
        ts = [sum(r["cpu"]) for r in rs]
        diff = ci_paired([r["AP"] for r in rs], [b["AP"] for b in brute]) if rs is not brute else "-"
        print(f"| {label} | {ci([r['AP'] for r in rs])} | {diff} | {ci([r['peak'] for r in rs])} | "
              f"{ci([r['ratio'] for r in rs])} | {ci(ts, '.0f')} | {ci([a / b for a, b in zip(ts, brute_t)], '.2f')} |")
    print("\n| seed | LASEM-HPS masks | brute-force masks |")
    print("|---|---|---|")
    for seed, a, b in zip(seeds, res["LASEM-HPS"], res["brute force (HPS)"]):
        print(f"| {seed} | {' '.join(a['masks'])} | {' '.join(b['masks'])} |")


def two_workers(args, results: dict) -> None:
    """One brute-force run with two worker processes sharing an Optuna journal (seed 0's stream)."""
    config = train_config(args)
    res = results["brute"]
    folder = Path(tempfile.mkdtemp(prefix="lasem-brute-bench-"))
    seed = args.seeds[0]
    stream = stream_of("lowlevel-fmnist", seed, args)
    two = run_one("lasem-brute", {**TEMPLATE, "workers": 2, "storage": str(folder)}, stream, config, seed)
    same = two["masks"] == res["brute force (HPS)"][0]["masks"] and two["matrix"] == res["brute force (HPS)"][0]["matrix"]
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
    shutil.rmtree(folder)
    print(f"\nTwo worker processes sharing one Optuna journal, seed {seed}: trials per worker "
          f"{dict(per_worker)}, seconds of trials per worker {{{', '.join(f'{k}: {v:.0f}' for k, v in busy.items())}}}, "
          f"wall {sum(two['wall']):.0f}s against {sum(res['brute force (HPS)'][0]['wall']):.0f}s with one process "
          f"(CPU {sum(two['cpu']):.0f}s of parent and workers against {sum(res['brute force (HPS)'][0]['cpu']):.0f}s); "
          f"same masks and accuracy matrix as the one-process run: {same}.")
    results["brute_two_workers"] = {"per_worker": dict(per_worker), "busy": dict(busy), "wall": two["wall"],
                                    "cpu": two["cpu"], "same": same}
    save(args, results)


def print_summary(results: dict) -> None:
    """Per stream and base learner: LASEM's AP against its static All, its best static
    configuration, the independent nets and fine-tuning (paired differences over the seeds)."""
    for sname, res in results.get("accuracy", {}).items():
        print(f"\n### Summary on {sname}: LASEM minus each reference, AP (final), paired over seeds\n")
        print("| LASEM | AP | - static All | - best static (which) | - independent | - finetune | forgetting ratio |")
        print("|---|---|---|---|---|---|---|")
        variants = ("", " (posterior-mean prior)", " (product likelihood)") + tuple(f" (settle={k})" for k in SETTLE)
        for variant in variants:
            for b in BASES:
                _summary_row(res, b, variant)


def _summary_row(res: dict, b: str, variant: str) -> None:
    """One row of `print_summary`: LASEM-`b` with the options `variant` names."""
    rs = res.get(f"LASEM-{b.upper()}{variant}")
    if not rs:
        return
    ap = [r["AP"] for r in rs]
    statics = {s: res[f"{b.upper()} {s}"] for s in STATIC if f"{b.upper()} {s}" in res}
    best = max(statics, key=lambda k: statistics.fmean(r["AP"] for r in statics[k])) if statics else None
    cells = [ci_paired(ap, [r["AP"] for r in statics["all"]]) if "all" in statics else "-",
             f"{ci_paired(ap, [r['AP'] for r in statics[best]])} ({best})" if best else "-"]
    for ref in ("independent", "finetune"):
        cells.append(ci_paired(ap, [r["AP"] for r in res[ref]]) if ref in res else "-")
    print(f"| {b.upper()}{variant} | {ci(ap)} | " + " | ".join(cells) + f" | {ci([r['ratio'] for r in rs])} |")


def report(path: str) -> None:
    """Print every table again from a ``--json`` file (no training)."""
    results = json.loads(Path(path).read_text())
    if "cost" in results:
        print_cost(results["cost"])
    for sname, res in results.get("accuracy", {}).items():
        print_accuracy(sname, res)
    if "accuracy" in results:
        print_wall_ratio(results)
        print_summary(results)
    if "brute" in results:
        print_brute(results["brute"], results["args"]["seeds"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--per-class", type=int, default=100, help="training images per class and task")
    p.add_argument("--streams", nargs="+", default=["lowlevel-fmnist", "split-fmnist"])
    p.add_argument("--sections", nargs="+", default=["cost", "accuracy", "brute"], choices=["cost", "accuracy", "brute"])
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats of the step timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the cost section and the runs)")
    p.add_argument("--synthetic", action="store_true",
                   help="the synthetic stream in place of the Fashion-MNIST ones (a machine without the data)")
    p.add_argument("--json", default=None, help="write the raw numbers here")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 1 epoch, few images")
    p.add_argument("--report", default=None, metavar="JSON", help="print the tables of a --json file and stop")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="accuracy section: run only these methods (a label, or text that labels contain)")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="start from this --json file's results (same settings) and add this run's to them")
    args = p.parse_args(argv)
    if args.report:
        report(args.report)
        return 0
    if args.quick:
        args.seeds, args.epochs, args.per_class, args.repeats = args.seeds[:1], 1, 10, 2
    torch.set_num_threads(args.threads)
    header(args.quick, f"seeds {args.seeds}, {args.epochs} epochs, {args.per_class} training images per class and task")
    results: dict = {"args": vars(args)}
    if args.merge:
        results = json.loads(Path(args.merge).read_text())
        before = results["args"]
        for key, default in (("seeds", None), ("epochs", None), ("per_class", None), ("threads", None),
                             ("device", "cpu"), ("synthetic", False)):
            if before.get(key, default) != getattr(args, key):
                p.error(f"--merge {args.merge}: it ran with {key}={before.get(key, default)!r}, this run with "
                        f"{getattr(args, key)!r}")
        results.setdefault("merged", []).append(vars(args))
    t0 = time.perf_counter()
    if "cost" in args.sections:
        bench_cost(args, results)
    if "accuracy" in args.sections:
        bench_accuracy(args, results)
        print_wall_ratio(results)
        if args.device != "cpu":
            print_wall_ratio(results, "step_wall")
        print_summary(results)
    if "brute" in args.sections:
        bench_brute(args, results)
    print(f"\n(total {time.perf_counter() - t0:.0f}s)")
    save(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
