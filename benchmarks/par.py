"""PAR against the baselines on the CTrL-style streams, under the shared benchmark protocol
(`benchmarks/protocol.py`: paired seeds, mean ± sd, paired 95% CIs), and the spec §9 checks.

    python benchmarks/par.py --seeds 0 1 2 --epochs 15 --streams ctrl-minus ctrl-out ctrl-in ctrl-pl ctrl-plus \\
        --strategies par par-fixed par-alloc independent finetune ewc lwf hat pnn --out runs/par-p
    python benchmarks/par.py --streams ctrl-minus ctrl-in --strategies par par-fixed par-slong \\
        --calib-seeds --out runs/par-p                                     # no calibration
    python benchmarks/par.py --calib-only --calib-option whiten=0          # the calibration without whitening
    python benchmarks/par.py --quick                                       # a smoke run, not a measurement

**What runs.** Every (stream, arm, seed) cell goes through `protocol.run_grid` (the core's runner
loop, each strategy's ``recommended_config`` under ``epochs = --epochs``) into
``--out/STREAM/ARM/seed-S-DIGEST/``. A finished cell whose recorded spec equals the one wanted is
reused, so rerunning a command with the same arguments prints every table again without
training; a run whose loss diverges is a failed cell, recorded, left out of every table and
counted. PAR arms keep the snapshot after their last task (``snapshots="last"``, read back with
`Run.load` for `par_summary`, the heat maps and the checks); the baselines keep none. Every arm
runs on the same seeds (default `protocol.SEEDS`, 0-4), so seed ``s`` of two arms sees the same
stream draw and differences are paired by seed.

**Arms** (``--strategies``, default ``par independent finetune ewc lwf hat pnn``): any
registered strategy under its own name with its default options, plus the PAR variants
``par-fixed`` (``search="fixed"``: the DARTS cell, no search; the paper's degraded mode, Table
5 #5), ``par-alloc`` (``alpha = beta = 0``: every task a new searched expert, no joins or cell
reuse; Table 5 #2, "FS" only) and ``par-slong`` (``slong_override=True``, spec §8.5).

**Streams** (``--streams``, default ``ctrl-minus ctrl-out ctrl-in ctrl-pl``; also
``ctrl-plus``), from Fashion-MNIST, 2 classes per task, per-class sizes (train, val)
``large = (400, 200)``, ``small = (40, 100)``, ``tiny = (5, 100)`` and ``--n-test-per-class``
(150) test images per class. Training sets are the streams' defaults; validation is raised from
the defaults (small 20, tiny 3 per class) so that every task has at least 200 validation images
(`protocol.MIN_VAL`; PAR's prototypes are class means of the validation features). Per task
(train / val / test images):

- ``ctrl-minus``, ``ctrl-out``: t1 800 / 400 / 300; t2..t6 80 / 200 / 300 (t6 repeats t1 with
  less data / with its labels permuted, tested on t1's test images);
- ``ctrl-in``: t1 800 / 400 / 300; t2..t5 80 / 200 / 300; t6 (t1 with inverted inputs)
  10 / 200 / 300;
- ``ctrl-pl``: t1..t4 80 / 200 / 300; t5 800 / 400 / 300;
- ``ctrl-plus``: t1..t5 80 / 200 / 300; t6 (t1's large repeat) 800 / 400 / 300.

**Printed**, after the command and the machine:

1. the calibration of PAR's relatedness (`stream_distances`, no training) on stream seeds the
   benchmark does not use (``--calib-seeds``, default 100..109; empty: skipped), on the five
   streams built with the grid's stream options: squashed distances of related pairs (the repeat
   of ctrl-minus / ctrl-plus, the relabelled task of ctrl-out), of unrelated pairs and of ctrl-in's
   perturbed t6, the related pairs at exactly 1.0 (stream and seed), and the midpoint of the
   largest related and the smallest unrelated distance that sets the default ``alpha`` (also
   without the related pairs at exactly 1.0, when there are any);
2. per stream, a markdown table (`protocol.table`), a row per arm: AP and AF (PAR's AF, divided
   by T) as mean ± sd over seeds, each with the mean paired difference against ``par`` (the
   first arm when ``par`` does not run) and its 95% CI; parameters of the final net; wall and
   CPU seconds of the run's task steps (summed); and for PAR arms the number of experts and of
   MDL searches of the final net (`par_summary`);
3. the spec §9 checks on the ``par`` arm: (i) the task-distance matrices of the first seed
   (SVG heat maps written to ``--out/heatmaps``); (ii) experts / searches as alpha rises, the
   decisions replayed on each run's recorded raw distances with `simulate_groups` (exact, as they
   depend on nothing else; checked by replaying at the runs' own alpha / beta); (iii) the
   forgetting of tasks in allocation-only groups (exact equality ``R[T-1][j] == R[j][j]``) and of
   tasks that joined a group; (v) PAR's AP and size against independent nets (paired by seed,
   `jointnet.experiments.stats.paired`).

Options: ``--seeds`` (0 1 2 3 4), ``--epochs`` (15), ``--n-test-per-class`` (150),
``--strategies``, ``--streams`` (above), ``--calib-seeds`` (100..109), ``--calib-option
KEY=VALUE`` (a PAR option for the calibration, JSON value; repeatable; none), ``--calib-only``
(off), ``--threads`` (1, `torch.set_num_threads`), ``--out`` (``runs/par-p``; with ``--quick``
a fresh temporary directory), ``--quick`` (off: seeds 0 1, 2 epochs, ctrl-minus and ctrl-in,
par / independent / finetune, 30 test images per class, calibration on stream seed 100; the
same validation sizes; a smoke run of every code path, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import header  # noqa: E402
from benchmarks.protocol import (  # noqa: E402
    METRICS, SEEDS, Arm, Metric, Run, by_seed, finished, run_grid, table,
)
from jointnet.errors import JointNetError  # noqa: E402
from jointnet.experiments.stats import paired  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402
from jointnet.experiments.strategy import get, strategy_names  # noqa: E402
from strategies.par import PAR, par_summary, stream_distances, write_heatmap  # noqa: E402
from strategies.par_cells import experts  # noqa: E402
from strategies.par_relatedness import simulate_groups  # noqa: E402

STRATEGIES = ("par", "independent", "finetune", "ewc", "lwf", "hat", "pnn")  # also: VARIANTS
STREAMS = ("ctrl-minus", "ctrl-out", "ctrl-in", "ctrl-pl")
CTRL = ("ctrl-minus", "ctrl-out", "ctrl-in", "ctrl-pl", "ctrl-plus")
# PAR variants: the fixed DARTS cell (no search; the paper's degraded mode) and the Slong override.
# "par-alloc": alpha = beta = 0, every task a new searched expert (no group joins, no cell reuse;
# the paper's Table 5 #2, "FS" only): PAR's own architecture as an independent-experts reference.
VARIANTS = {"par-fixed": ("par", {"search": "fixed"}), "par-slong": ("par", {"slong_override": True}),
            "par-alloc": ("par", {"alpha": 0.0, "beta": 0.0})}
ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
# Per-class (train, val) sizes: the streams' training sizes, validation raised to >= 200 per task.
SIZES = {"large": [400, 200], "small": [40, 100], "tiny": [5, 100]}


def stream_options(n_test_per_class: int) -> dict:
    """The options every CTrL stream of the benchmark (grid and calibration) is built with."""
    return {**SIZES, "n_test_per_class": n_test_per_class}


def make_arms(labels: list[str]) -> list[Arm]:
    """An `Arm` per label: a PAR variant of `VARIANTS`, or a registered strategy with its defaults."""
    out = []
    for label in labels:
        name, opts = VARIANTS.get(label, (label, {}))
        out.append(Arm(label, name, dict(opts)))
    return out


_NETS: dict[Path, object] = {}


def final_net(run: Run):
    """The final net of a PAR cell (its last snapshot), loaded once."""
    if run.dir not in _NETS:
        _NETS[run.dir] = run.load(-1)[0]
    return _NETS[run.dir]


def _par_count(what: str):
    def value(run: Run, _runs) -> float | None:
        if run.spec["strategy"] != "par":
            return None
        v = par_summary(final_net(run))
        return float(len(v["experts"]) if what == "experts" else v["searches"])
    return value


COLUMNS = [
    Metric("AP", lambda r, _: r.metrics["AP"], ".3f"),
    Metric("AF", lambda r, _: r.metrics["AF"], "+.3f"),
    METRICS["params"],
    Metric("wall (s)", lambda r, _: float(sum(r.result["wall_time"])), ".0f", paired=False),
    Metric("CPU (s)", lambda r, _: float(sum(r.cpu)), ".0f", paired=False),
    Metric("experts", _par_count("experts"), ".1f", paired=False),
    Metric("searches", _par_count("searches"), ".1f", paired=False),
]


def calibrate(seeds: list[int], options: dict | None = None, s_opts: dict | None = None) -> float:
    """Related vs unrelated squashed distances of PAR (default, or with relatedness `options`) on
    stream `seeds` built with stream options `s_opts`; returns the midpoint of the largest
    related and the smallest unrelated distance."""
    par = PAR(**(options or {}))
    related, unrelated, perturbed, at_one = [], [], [], []
    for seed in seeds:
        for name in CTRL:
            D = stream_distances(par, get_stream(name, seed=seed, **(s_opts or {})))["dist"]
            for i in range(1, len(D)):
                for j in range(i):
                    if name in ("ctrl-minus", "ctrl-plus", "ctrl-out") and i == 5:
                        (related if j == 0 else unrelated).append(D[i][j])
                        if j == 0 and D[i][j] == 1.0:
                            at_one.append(f"{name} seed {seed}")
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
    print(f"\nrelated pairs at exactly 1.0 (a clipped estimate of 0, made 1 by the zero-to-one rule): "
          f"{len(at_one)} of {len(related)}" + (f" ({', '.join(at_one)})" if at_one else ""))
    print(f"midpoint of max(related) and min(unrelated): {mid:.3f} (default alpha {PAR().alpha}; "
          f"paper 0.5, beta {PAR().beta})")
    rest = [v for v in related if v != 1.0]
    if at_one and rest:
        print(f"without the related pairs at exactly 1.0: max(related) {max(rest):.3f}, midpoint "
              f"{(max(rest) + u[0]) / 2:.3f}")
    print(flush=True)
    return mid


def _calib_options(items: list[str]) -> dict:
    """``KEY=VALUE`` items (JSON values, else strings), checked against PAR's options."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JointNetError(f"--calib-option {item!r}: expected KEY=VALUE")
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    get("par", **opts)  # a StrategyError names the bad option
    return opts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="paired seeds (default 0 1 2 3 4)")
    p.add_argument("--epochs", type=int, default=15, help="epochs per task, every arm (default 15)")
    p.add_argument("--n-test-per-class", type=int, default=150, help="test images per class (default 150)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                   help=f"arms: strategies or {', '.join(VARIANTS)} (default {' '.join(STRATEGIES)})")
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=CTRL,
                   help=f"default {' '.join(STREAMS)}")
    p.add_argument("--calib-seeds", type=int, nargs="*", default=list(range(100, 110)),
                   help="stream seeds of the calibration (default 100..109; none: skip it)")
    p.add_argument("--calib-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a PAR option for the calibration (e.g. whiten=0); JSON values; repeatable")
    p.add_argument("--calib-only", action="store_true", help="print the calibration and stop")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="directory of the run cells (default runs/par-p; "
                   "--quick: a fresh temporary directory)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: seeds 0 1, 2 epochs, ctrl-minus and ctrl-in, par independent finetune")
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.n_test_per_class = [0, 1], 2, 30
        args.streams, args.calib_seeds = ["ctrl-minus", "ctrl-in"], [100]
        args.strategies = ["par", "independent", "finetune"]
        if args.out is None:
            args.out = tempfile.mkdtemp(prefix="par-quick-")
    if args.out is None:
        args.out = "runs/par-p"
    known = set(strategy_names()) | set(VARIANTS)
    bad = [s for s in args.strategies if s not in known]
    if bad:
        p.error(f"--strategies: unknown {', '.join(map(repr, bad))}; known: {', '.join(sorted(known))}")
    if len(set(args.strategies)) != len(args.strategies):
        p.error(f"--strategies: repeated names in {args.strategies}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: repeated seeds in {args.seeds}")
    if args.epochs < 1 or args.n_test_per_class < 1 or args.threads < 1:
        p.error("--epochs, --n-test-per-class and --threads must be >= 1")
    try:
        calib_opts = _calib_options(args.calib_option)
    except JointNetError as e:
        p.error(str(e).splitlines()[0])
    torch.set_num_threads(args.threads)
    s_opts = stream_options(args.n_test_per_class)
    header(args.quick, f"{args.epochs} epochs, seeds {args.seeds}, out {args.out}, stream options {s_opts}")
    print()
    if args.calib_seeds:
        calibrate(args.calib_seeds, calib_opts, s_opts)
    if args.calib_only:
        return 0
    arms = make_arms(args.strategies)
    control = "par" if "par" in args.strategies else args.strategies[0]
    config = {"epochs": args.epochs}
    grid: dict = {}
    for stream in args.streams:
        # PAR arms keep their final snapshot (par_summary, heat maps); the baselines keep none.
        for group, snaps in (([a for a in arms if a.strategy == "par"], "last"),
                             ([a for a in arms if a.strategy != "par"], "none")):
            if group:
                grid.update(run_grid(group, {stream: s_opts}, out=args.out, seeds=args.seeds, config=config,
                                     snapshots=snaps, echo=lambda m: print(m, file=sys.stderr, flush=True)))
        n_tasks = len(next(r for (s, _, _), r in grid.items() if s == stream).result["tasks"])
        print(f"### {stream} ({n_tasks} tasks), mean ± sd over {len(args.seeds)} seed(s); "
              f"Δ: paired by seed against {control}\n")
        print(table(grid, stream, control=control, metrics=COLUMNS, labels=args.strategies))
        print(flush=True)
    if "par" in args.strategies:
        checks(args, grid)
    return 0


def _par_runs(grid: dict, stream: str, seeds: list[int], label: str = "par") -> tuple[list[Run], int]:
    """The finished runs of arm `label` on `stream` among `seeds`, in seed order, and how many failed."""
    ran = [s for s in seeds if (stream, label, s) in grid]
    done = [r for s, r in finished(by_seed(grid, stream), label).items() if s in ran]
    return done, len(ran) - len(done)


def replay_counts(raw: list[list[float]], alpha: float, beta: float) -> tuple[int, int]:
    """Experts and MDL searches PAR makes on raw estimates `raw` at `alpha` / `beta`."""
    kinds = [d.kind for d in simulate_groups(raw, alpha, beta)]
    return sum(k != "regularize" for k in kinds), sum(k == "search" for k in kinds)


def checks(args, grid: dict) -> None:
    """The spec §9 checks on the ``par`` runs."""
    heat = Path(args.out) / "heatmaps"
    heat.mkdir(parents=True, exist_ok=True)
    print("### Spec §9 checks\n")
    failed = {stream: _par_runs(grid, stream, args.seeds)[1] for stream in args.streams}
    if any(failed.values()):
        print("failed par runs, left out below: " + ", ".join(f"{s} {n}" for s, n in failed.items() if n) + "\n")
    print("(i) task-distance heat maps, seed", args.seeds[0], "(rows: new task; squashed s; "
          "label (eK): the task's expert)\n")
    for stream in args.streams:
        r = grid.get((stream, "par", args.seeds[0]))
        if r is None or r.failed:
            print(f"{stream}: the par run of seed {args.seeds[0]} failed ({r.failed if r else 'missing'})")
            continue
        net = final_net(r)
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
        runs, _ = _par_runs(grid, stream, args.seeds)
        if not runs:
            print(f"| {stream} | " + " | ".join("-" for _ in ALPHAS) + " |")
            continue
        cells = []
        for a in ALPHAS:
            counts = [replay_counts([list(x) for x in final_net(r).annotations["par"]["raw"]], a, max(0.75, a))
                      for r in runs]
            cells.append(f"{statistics.fmean(c[0] for c in counts):.1f} / "
                         f"{statistics.fmean(c[1] for c in counts):.1f}")
        print(f"| {stream} | " + " | ".join(cells) + " |")
    # The replay is exact: at the runs' own options it gives the decisions the runs recorded.
    same = total = 0
    for stream in args.streams:
        for r in _par_runs(grid, stream, args.seeds)[0]:
            net = final_net(r)
            par = PAR(**r.spec["strategy_options"])
            replay = simulate_groups([list(x) for x in net.annotations["par"]["raw"]], par.alpha, par.beta,
                                     order=par.order, zero_to_one=par.zero_to_one)
            recorded = [net.tasks[t].annotations["par"]["decision"] for t in r.result["tasks"]]
            same += [d.kind for d in replay] == recorded
            total += 1
    print(f"\n(cells: experts / searches. Replayed at the runs' own alpha / beta, the decisions equal the "
          f"recorded ones in {same} of {total} runs.)\n")
    print("(iii) forgetting of tasks in allocation-only groups (exact equality R[T-1][j] == R[j][j])\n")
    print("| stream | tasks in allocation-only groups | exactly unchanged | tasks that joined a group (path) "
          "| AF of joined groups |")
    print("|---|---|---|---|---|")
    for stream in args.streams:
        alone = unchanged = 0
        joined, af_joined = [], []
        for r in _par_runs(grid, stream, args.seeds)[0]:
            net = final_net(r)
            R = r.matrix
            registry = experts(net)
            for j, t in enumerate(r.result["tasks"]):
                info = net.tasks[t].annotations["par"]
                group = registry[info["expert"]]["tasks"]
                if len(group) == 1:
                    alone += 1
                    unchanged += R[-1][j] == R[j][j]
                else:
                    if info["decision"] == "regularize":
                        joined.append(info["path"])
                    af_joined.append(R[-1][j] - R[j][j])
        paths = ", ".join(f"{p} x{joined.count(p)}" for p in sorted(set(joined))) or "none"
        afj = f"{statistics.fmean(af_joined):+.4f}" if af_joined else "–"
        print(f"| {stream} | {alone} | {unchanged} | {paths} | {afj} |")
    if not any(label == "independent" for _, label, _ in grid):  # nothing to compare with
        return
    print("\n(v) PAR's AP and size against independent nets (mean over the seeds both finished; difference "
          "paired by seed, Student-t 95% CI)\n")
    print("| stream | n | PAR AP | independent AP | PAR - independent [95% CI] | PAR >= independent | PAR params "
          "| independent params | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stream in args.streams:
        seeds = by_seed(grid, stream)
        common = [s for s in args.seeds if s in seeds and all(
            lb in seeds[s] and not seeds[s][lb].failed for lb in ("par", "independent"))]
        if not common:
            continue
        par_runs = [seeds[s]["par"] for s in common]
        ind_runs = [seeds[s]["independent"] for s in common]
        pas = [r.metrics["AP"] for r in par_runs]
        ias = [r.metrics["AP"] for r in ind_runs]
        pa, ia, d = statistics.fmean(pas), statistics.fmean(ias), paired(pas, ias)
        pp = statistics.fmean(r.params for r in par_runs)
        ip = statistics.fmean(r.params for r in ind_runs)
        if len(common) < 2:
            ok = f"mean {'yes' if pa >= ia else 'no'}, one seed: no CI"
        else:
            ok = "yes" if d.ci95[0] >= 0 else ("no" if d.ci95[1] < 0 else f"mean {'yes' if pa >= ia else 'no'}, "
                                                                        "CI spans 0")
        print(f"| {stream} | {len(common)} | {pa:.3f} | {ia:.3f} | {d.mean:+.3f} [{d.ci95[0]:+.3f}, "
              f"{d.ci95[1]:+.3f}] | {ok} | {pp:.0f} | {ip:.0f} | {pp / ip:.3f} |")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
