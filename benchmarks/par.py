"""PAR against the baselines on the CTrL-style streams, several seeds, and the spec §9 checks.

Every run goes through `jointnet.experiments.runner.run` (the code path of ``jointnet run``) into
``--out/STREAM/STRATEGY/seedS``; a complete run there is reused, so an interrupted benchmark
continues where it stopped. Printed: the command, the machine, then

1. the calibration of PAR's relatedness on stream seeds the benchmark does not use (``--calib-seeds``):
   squashed distances of related pairs (the repeat of ctrl-minus / ctrl-plus, the relabelled task
   of ctrl-out) and of unrelated pairs, and the midpoint that sets the default ``alpha``;
2. per stream, a markdown table: AP, AF, parameters, wall time (mean ± sd over seeds), and for
   PAR the number of experts and of MDL searches;
3. the spec §9 checks side by side: the heat map's structure (seed 0's matrices, SVGs written
   to ``--out/heatmaps``), experts as alpha rises (the decisions replayed on each run's recorded
   distances with `simulate_groups`, exact since they depend on nothing else), AF of the tasks in
   allocation-only groups, and PAR's AP and size against independent nets.

    python benchmarks/par.py --seeds 0 1 2 --epochs 15 --out runs/par-bench      # the issue's grid
    python benchmarks/par.py --seeds 0 1 2 --epochs 15 --streams ctrl-minus ctrl-out ctrl-in ctrl-pl ctrl-plus \\
        --strategies par par-fixed par-alloc independent finetune ewc lwf hat pnn --out runs/par-bench
    python benchmarks/par.py --streams ctrl-minus ctrl-in --strategies par par-fixed par-slong \\
        --calib-seeds --out runs/par-bench
    python benchmarks/par.py --calib-only --calib-option whiten=0     # the calibration without whitening
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, run_or_resume  # noqa: E402

from jointnet.experiments.runner import RunSpec  # noqa: E402
from jointnet.experiments.stats import paired, summary  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402
from jointnet.persistence import snapshot  # noqa: E402
from strategies.par import PAR, par_summary, stream_distances, write_heatmap  # noqa: E402
from strategies.par_cells import experts  # noqa: E402
from strategies.par_relatedness import simulate_groups  # noqa: E402

STRATEGIES = ("par", "independent", "finetune", "ewc", "lwf", "hat", "pnn")  # also: VARIANTS
STREAMS = ("ctrl-minus", "ctrl-out", "ctrl-in", "ctrl-pl")
# PAR variants: the fixed DARTS cell (no search; the paper's degraded mode) and the Slong override.
# "par-alloc": alpha = beta = 0, every task a new searched expert (no group joins, no cell reuse;
# the paper's Table 5 #2, "FS" only): PAR's own architecture as an independent-experts reference.
VARIANTS = {"par-fixed": ("par", {"search": "fixed"}), "par-slong": ("par", {"slong_override": True}),
            "par-alloc": ("par", {"alpha": 0.0, "beta": 0.0})}
ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def _one(strategy: str, stream: str, seed: int, args) -> dict:
    out = Path(args.out) / stream / strategy / f"seed{seed}"
    name, opts = VARIANTS.get(strategy, (strategy, {}))
    spec = RunSpec(name, stream, seed=seed, strategy_options=opts,
                   stream_options={"n_test_per_class": args.n_test_per_class}, config={"epochs": args.epochs})
    t0 = time.perf_counter()
    res = run_or_resume(out, spec)
    print(f"  {stream} {strategy} seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return res


def _final(stream: str, strategy: str, seed: int, args):
    out = Path(args.out) / stream / strategy / f"seed{seed}"
    res = json.loads((out / "results.json").read_text())
    net, store = snapshot.load(out / res["snapshots"][-1])
    return net, store, res


def _fmt(values: list[float], spec: str, sd_spec: str | None = None) -> str:
    s = summary(values)
    return f"{s.mean:{spec}} ± {s.sd:{sd_spec or spec}}"


def calibrate(seeds: list[int], options: dict | None = None) -> float:
    """Related vs unrelated squashed distances of PAR (default, or with relatedness `options`) on
    `seeds`; returns the midpoint of the largest related and the smallest unrelated distance."""
    par = PAR(**(options or {}))
    related, unrelated, perturbed = [], [], []
    for seed in seeds:
        for name in ("ctrl-minus", "ctrl-plus", "ctrl-out", "ctrl-in", "ctrl-pl"):
            D = stream_distances(par, get_stream(name, seed=seed))["dist"]
            for i in range(1, len(D)):
                for j in range(i):
                    if name in ("ctrl-minus", "ctrl-plus", "ctrl-out") and i == 5:
                        (related if j == 0 else unrelated).append(D[i][j])
                    elif name == "ctrl-in" and i == 5:
                        perturbed.append(D[i][j])
                    elif name in ("ctrl-minus", "ctrl-pl"):  # t1..t5 pairs, once per seed
                        unrelated.append(D[i][j])
    u = sorted(unrelated)
    mid = (max(related) + u[0]) / 2
    what = ", ".join(f"{k}={v}" for k, v in (options or {}).items()) or "default extractor"
    print(f"### Calibration of the relatedness ({what}), stream seeds {seeds[0]}..{seeds[-1]}\n")
    print("| pairs | n | min | 5% | median | max |\n|---|---|---|---|---|---|")
    for label, vals in (("related (repeat / relabelled t1)", related),
                        ("unrelated (distinct classes and inputs)", unrelated),
                        ("ctrl-in's perturbed t6 vs all", perturbed)):
        v = sorted(vals)
        print(f"| {label} | {len(v)} | {v[0]:.3f} | {v[len(v) // 20]:.3f} | {v[len(v) // 2]:.3f} | {v[-1]:.3f} |")
    ones = sum(v == 1.0 for v in related)
    print(f"\nrelated pairs at exactly 1.0 (a clipped estimate of 0, made 1 by the zero-to-one rule): "
          f"{ones} of {len(related)}")
    print(f"midpoint of max(related) and min(unrelated): {mid:.3f} (default alpha {PAR().alpha}; "
          f"paper 0.5, beta {PAR().beta})\n")
    return mid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--n-test-per-class", type=int, default=150)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--streams", nargs="+", default=list(STREAMS))
    p.add_argument("--calib-seeds", type=int, nargs="*", default=list(range(100, 110)))
    p.add_argument("--calib-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a PAR option for the calibration (e.g. whiten=0); JSON values")
    p.add_argument("--calib-only", action="store_true", help="print the calibration and stop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/par-bench")
    p.add_argument("--quick", action="store_true", help="one seed, 2 epochs, two streams, three strategies")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.n_test_per_class = [0], 2, 30
        args.streams, args.calib_seeds = ["ctrl-minus", "ctrl-in"], [100]
        args.strategies = ["par", "independent", "finetune"]
    torch.set_num_threads(args.threads)
    header(args.quick, f"{args.epochs} epochs, {args.n_test_per_class} test images per class, seeds {args.seeds}")
    print()
    if args.calib_seeds:
        opts = {}
        for item in args.calib_option:
            key, _, value = item.partition("=")
            try:
                opts[key] = json.loads(value)
            except ValueError:
                opts[key] = value
        calibrate(args.calib_seeds, opts)
    if args.calib_only:
        return 0
    results: dict = {}
    for stream in args.streams:
        header_done = False
        for strategy in args.strategies:
            runs = [_one(strategy, stream, s, args) for s in args.seeds]
            if not header_done:
                print(f"### {stream} ({len(runs[0]['tasks'])} tasks), mean ± sd over {len(args.seeds)} seed(s)\n")
                print("| strategy | AP | AF | parameters | wall (s) | experts | searches |")
                print("|---|---|---|---|---|---|---|", flush=True)
                header_done = True
            results[(stream, strategy)] = runs
            ap = [r["metrics"]["AP"] for r in runs]
            af = [r["metrics"]["AF"] for r in runs]
            params = [r["params"][-1]["total"] for r in runs]
            wall = [sum(r["wall_time"]) for r in runs]
            ex = se = "–"
            if strategy.startswith("par"):
                views = [par_summary(_final(stream, strategy, s, args)[0]) for s in args.seeds]
                ex = _fmt([len(v["experts"]) for v in views], ".1f")
                se = _fmt([v["searches"] for v in views], ".1f")
            print(f"| {strategy} | {_fmt(ap, '.3f')} | {_fmt(af, '+.3f', '.3f')} | {_fmt(params, '.0f')} | "
                  f"{_fmt(wall, '.0f')} | {ex} | {se} |", flush=True)
        print()
    if "par" in args.strategies:
        checks(args, results)
    return 0


def checks(args, results) -> None:
    """The spec §9 checks on the PAR runs."""
    heat = Path(args.out) / "heatmaps"
    heat.mkdir(parents=True, exist_ok=True)
    print("### Spec §9 checks\n")
    print("(i) task-distance heat maps, seed", args.seeds[0], "(rows: new task; squashed s; "
          "label (eK): the task's expert)\n")
    for stream in args.streams:
        net, _, _ = _final(stream, "par", args.seeds[0], args)
        path = write_heatmap(net, heat / f"{stream}-seed{args.seeds[0]}.svg",
                             title=f"PAR {stream} seed {args.seeds[0]}")
        v = par_summary(net)
        print(f"{stream} ({path}):\n```")
        for t, info in v["tasks"].items():
            cells = " ".join(f"{d:.3f}" for d in info["distances"])
            print(f"{t} {info['expert']:>3} {info['path']:<11} {cells}")
        print("```")
    print("\n(ii) experts and searches as alpha rises (beta = max(0.75, alpha)), replayed on every "
          "run's recorded distances, mean over seeds\n")
    print("| stream | " + " | ".join(f"alpha {a}" for a in ALPHAS) + " |")
    print("|---|" + "---|" * len(ALPHAS))
    for stream in args.streams:
        cells = []
        for a in ALPHAS:
            n_exp, n_search = [], []
            for s in args.seeds:
                net, _, _ = _final(stream, "par", s, args)
                raw = [list(r) for r in net.annotations["par"]["raw"]]
                kinds = [d.kind for d in simulate_groups(raw, a, max(0.75, a))]
                n_exp.append(sum(k != "regularize" for k in kinds))
                n_search.append(sum(k == "search" for k in kinds))
            cells.append(f"{statistics.fmean(n_exp):.1f} / {statistics.fmean(n_search):.1f}")
        print(f"| {stream} | " + " | ".join(cells) + " |")
    # The replay is exact: at the runs' own options it gives the decisions the runs recorded.
    same = total = 0
    for stream in args.streams:
        for s in args.seeds:
            net, _, res = _final(stream, "par", s, args)
            state = net.annotations["par"]
            opts = json.loads((Path(args.out) / stream / "par" / f"seed{s}" / "run.json").read_text())
            par = PAR(**opts.get("strategy_options", {}))
            replay = simulate_groups([list(r) for r in state["raw"]], par.alpha, par.beta, order=par.order,
                                     zero_to_one=par.zero_to_one)
            recorded = [net.tasks[t].annotations["par"]["decision"] for t in res["tasks"]]
            same += [d.kind for d in replay] == recorded
            total += 1
    print(f"\n(cells: experts / searches. Replayed at the runs' own alpha / beta, the decisions equal the "
          f"recorded ones in {same} of {total} runs.)\n")
    print("(iii) forgetting of tasks in allocation-only groups (exact equality R[T-1][j] == R[j][j])\n")
    print("| stream | tasks in allocation-only groups | exactly unchanged | tasks that joined a group (path) "
          "| AF of joined groups |")
    print("|---|---|---|---|---|")
    for stream in args.streams:
        alone = same = 0
        joined, af_joined = [], []
        for s in args.seeds:
            net, _, res = _final(stream, "par", s, args)
            R = res["matrix"]
            table = experts(net)
            for j, t in enumerate(res["tasks"]):
                info = net.tasks[t].annotations["par"]
                group = table[info["expert"]]["tasks"]
                if len(group) == 1:
                    alone += 1
                    same += R[-1][j] == R[j][j]
                else:
                    if info["decision"] == "regularize":
                        joined.append(info["path"])
                    af_joined.append(R[-1][j] - R[j][j])
        paths = ", ".join(f"{p} x{joined.count(p)}" for p in sorted(set(joined))) or "none"
        afj = f"{statistics.fmean(af_joined):+.4f}" if af_joined else "–"
        print(f"| {stream} | {alone} | {same} | {paths} | {afj} |")
    print("\n(v) PAR's AP and size against independent nets (mean over seeds; difference paired by seed, "
          "Student-t 95% CI)\n")
    print("| stream | PAR AP | independent AP | PAR - independent [95% CI] | PAR >= independent | PAR params "
          "| independent params | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for stream in args.streams:
        if (stream, "independent") not in results:
            continue
        pas = [r["metrics"]["AP"] for r in results[(stream, "par")]]
        ias = [r["metrics"]["AP"] for r in results[(stream, "independent")]]
        pa, ia, d = statistics.fmean(pas), statistics.fmean(ias), paired(pas, ias)
        pp = statistics.fmean(r["params"][-1]["total"] for r in results[(stream, "par")])
        ip = statistics.fmean(r["params"][-1]["total"] for r in results[(stream, "independent")])
        ok = "yes" if d.ci95[0] >= 0 else ("no" if d.ci95[1] < 0 else f"mean {'yes' if pa >= ia else 'no'}, CI spans 0")
        print(f"| {stream} | {pa:.3f} | {ia:.3f} | {d.mean:+.3f} [{d.ci95[0]:+.3f}, {d.ci95[1]:+.3f}] | {ok} "
              f"| {pp:.0f} | {ip:.0f} | {pp / ip:.3f} |")
    print()


if __name__ == "__main__":
    sys.exit(main())
