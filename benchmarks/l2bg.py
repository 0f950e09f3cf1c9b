"""L2BG under the shared benchmark protocol (`benchmarks/protocol.py`): paired seeds, controls
matched on parameters, the RSA noise floor, and streams whose right answer is known.

    python benchmarks/l2bg.py --backbone mlp --out /tmp/l2bg-bench          # the full MLP grid
    python benchmarks/l2bg.py --backbone conv --out /tmp/l2bg-bench --arms core --seeds 0 1 2

Every arm uses the same template and training on the same seeds (paired): Adam, lr 1e-3, batch
32, 2 epochs per task (L2BG spec §7's CPU reproduction; the paper states none), L2BG's RSA on
*every* validation input of the new task (>= 200 per task, `protocol.MIN_VAL`).

Backbones (``--backbone``):

- ``mlp``: the spec's MLP, flatten + 3 x (Linear 256, ReLU) (spec §3/§7); slots fc1 (200,960
  parameters), fc2 and fc3 (65,792 each): unequal, so equal slot counts are not equal sizes.
- ``conv``: a small conv net whose four slots have comparable sizes: conv 11x11 1->16 (1,952),
  conv 3x3 16->16 (2,320), conv 3x3 16->16 (2,320), each with ReLU and 2x2 max-pool, then
  flatten and Linear 144->16 (2,320), ReLU.

Streams (5 tasks, or 6 for CTrL): ``split-fmnist`` and ``permuted-fmnist`` (1,000 training,
250 validation, 1,000 test images per task; permuted uses one softmax shared by all tasks for
L2BG, the paper's PMNIST setting, spec §1), and three CTrL streams with known answers for their
last task t6 (t1 large: 800 training images; t2-t5 small distractors: 100; 200 validation and
1,000 test images per task): ``ctrl-minus`` (t6 = t1 with less data: bind t1, grow ~nothing),
``ctrl-out`` (t6 = t1 with permuted labels: bind t1, grow the top), ``ctrl-in`` (t6 = t1 with
inverted inputs, 10 training images: bind t1, grow the bottom).

Arms (``guided`` = L2BG at delta 0.55, RSA binding, copy init, shared layers at 0.1x: the
control every other arm is compared with, seed by seed):

- ``independent``, ``finetune``: one net per task; one trunk with a head per task;
- ``random (params matched)``: random bind targets and slots, the whole stream's plan drawn by
  rejection sampling until its grown parameters equal the guided run's of the same seed within
  2% (`strategies.l2bg.random_plan`);
- ``top-k (depth prior)`` / ``bottom-k``: RSA's bind target and nucleus size k, but the k
  deepest / shallowest slots (``grow_order``); ``reverse-RSA``: the k least conflicting;
- ``shuffled conflicts``: the guided run's bind targets, the nucleus computed on the conflict
  profile the guided run measured for *another* task (a seeded cyclic shift of t2..tT);
- ``depth-corrected``: conflicts minus an untrained net's RSA per slot (``depth_correction``);
- ``guided 1.0x`` / ``guided frozen``: shared layers at the full rate / frozen;
  ``guided + LwF heads``: earlier tasks' outputs distilled while shared layers move;
- ``d=0 0.1x`` / ``d=0 1.0x`` / ``d=0 frozen`` / ``d=0 0.1x + LwF heads``: full sharing (the
  spec's §7 check "BWT with 0.1x at least as good as with 1.0x" and the old-head drift).

``--arms core`` runs independent, finetune, guided, random (params matched), top-k, bottom-k,
reverse-RSA, shuffled conflicts and depth-corrected only; ``--arms depth`` only independent,
finetune, guided, random (params matched), top-k and bottom-k.

Columns: AP and BWT from the test accuracy matrix; params: distinct parameters of the final
net; with ``--gain``, the multi-task gain against the ``independent`` arm of the same seed on
test accuracies, accuracy-relative ``(100/T) sum_t (A_t - A_ind,t) / A_ind,t`` (bounded; the
spec's error-relative form explodes when an independent net is nearly perfect). Each paired
column gives the mean difference against ``guided`` and its 95% CI over the seeds.

The RSA noise floor (per slot, over every task after the first and every seed, on all validation
inputs): RSA between two independent nets of the same task trained from different seeds, and
between an untrained net and an independent net, beside the conflicts the guided run measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import Arm, Metric, Run, run_grid, table  # noqa: E402
from jointnet.experiments.stats import summary  # noqa: E402
from jointnet.experiments.streams import get_stream  # noqa: E402
from jointnet.experiments.strategy import TaskRun  # noqa: E402
from jointnet.experiments.trainer import TrainConfig  # noqa: E402
from strategies.l2bg import (  # noqa: E402
    PROV, accuracy_gain, independent_net, slot_conflicts, slot_outputs, task_slots,
)
from strategies.l2bg_decide import seed_of  # noqa: E402
from jointnet.experiments.strategy import scratch_net  # noqa: E402


STREAMS = ("ctrl-minus", "ctrl-out", "ctrl-in", "split-fmnist", "permuted-fmnist")
CONTROL = "guided"
DELTA = 0.55  # the guided arm's delta (the spec's default)
CONFIG = {"epochs": 2, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"}


def mlp() -> list:
    layers: list = [{"kind": "input", "shape": [1, 28, 28]}, {"kind": "flatten"}]
    for _ in range(3):
        layers += [{"kind": "linear", "out_f": 256}, {"kind": "relu"}]
    return layers


def conv() -> list:
    return [
        {"kind": "input", "shape": [1, 28, 28]},
        {"kind": "conv", "out_ch": 16, "kernel": 11, "padding": 5}, {"kind": "relu"}, {"kind": "maxpool", "kernel": 2},
        {"kind": "conv", "out_ch": 16, "kernel": 3, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool", "kernel": 2},
        {"kind": "conv", "out_ch": 16, "kernel": 3, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool", "kernel": 2},
        {"kind": "flatten"}, {"kind": "linear", "out_f": 16}, {"kind": "relu"},
    ]


BACKBONES = {"mlp": mlp, "conv": conv}


def stream_options(name: str) -> dict:
    if name.startswith("ctrl"):
        return {"large": [400, 100], "small": [50, 100], "tiny": [5, 100], "n_test_per_class": 500}
    return {"n_tasks": 5, "n_train_per_task": 1250, "n_test_per_task": 1000, "val_fraction": 0.2}


# ---- what arms read from earlier arms ------------------------------------------------------------


def grown(run: Run) -> int:
    """Parameters of the nodes the run's L2BG grew (node annotation ``l2bg`` with a task)."""
    nodes = run.annotations["nodes"]
    return sum(run.node_params[n] for n, a in nodes.items() if isinstance(a.get(PROV), dict) and "task" in a[PROV])


def control_label(delta: float) -> str:
    """The guided arm at `delta`: ``guided`` at the default 0.55, ``guided d=0.3`` otherwise."""
    return CONTROL if delta == DELTA else f"{CONTROL} d={delta:g}"


def matched(seed: int, runs: dict, control: str = CONTROL) -> dict:
    return {"match_params": grown(runs[control])}


def shuffled(seed: int, runs: dict, control: str = CONTROL) -> dict:
    """The guided run's bind targets, each task's nucleus on another task's conflict profile."""
    tasks = runs[control].annotations["tasks"]
    names = [t for t in tasks if (tasks[t].get(PROV) or {}).get("bound_to")]
    profiles = {t: {s["slot"]: s["conflict"] for s in tasks[t][PROV]["slots"]} for t in names}
    shift = 1 + seed % max(1, len(names) - 1)  # a cyclic shift by 1..n-1 moves every task
    seq = []
    for i, t in enumerate(names):
        other = names[(i + shift) % len(names)]
        seq.append({"task": t, "bind": tasks[t][PROV]["bound_to"], "conflicts": profiles[other]})
    return {"sequence": seq, "reference": False}


DEPTH_ARMS = ("independent", "finetune", CONTROL, "random (params matched)", "top-k (depth prior)", "bottom-k")


def arms(backbone: list, stream: str, which: str, delta: float = DELTA) -> list[Arm]:
    """The arms at `delta`; away from the default 0.55 every L2BG arm's label ends in ``d=X``
    and the controls derive from that delta's guided run (independent and finetune come once,
    with the default)."""
    base = {"backbone": backbone}
    l2 = {**base, "rsa_samples": None, "delta": delta}
    if stream == "permuted-fmnist":
        l2["head"] = "shared"
    control = control_label(delta)
    sfx = "" if delta == DELTA else f" d={delta:g}"
    out = [
        Arm("independent", "independent", base),
        Arm("finetune", "finetune", base),
        Arm(control, "l2bg", l2),
        Arm("random (params matched)" + sfx, "l2bg-random", {k: v for k, v in l2.items() if k != "delta"},
            derive=functools.partial(matched, control=control)),
        Arm("top-k (depth prior)" + sfx, "l2bg", {**l2, "grow_order": "top"}),
        Arm("bottom-k" + sfx, "l2bg", {**l2, "grow_order": "bottom"}),
        Arm("reverse-RSA" + sfx, "l2bg", {**l2, "grow_order": "reverse"}),
        Arm("shuffled conflicts" + sfx, "l2bg", l2, derive=functools.partial(shuffled, control=control)),
        Arm("depth-corrected" + sfx, "l2bg", {**l2, "depth_correction": "subtract"}),
    ]
    if which == "depth":
        keep = {lb if lb in ("independent", "finetune", CONTROL) else lb + sfx for lb in DEPTH_ARMS}
        return [a for a in out if a.label in keep or a.label == control]
    if which == "all" and delta == DELTA:
        out += [
            Arm("guided 1.0x", "l2bg", {**l2, "shared_lr_scale": 1.0}),
            Arm("guided frozen", "l2bg", {**l2, "shared_lr_scale": 0.0}),
            Arm("guided + LwF heads", "l2bg", {**l2, "old_heads": "lwf"}),
            Arm("d=0 0.1x", "l2bg", {**l2, "delta": 0.0}),
            Arm("d=0 1.0x", "l2bg", {**l2, "delta": 0.0, "shared_lr_scale": 1.0}),
            Arm("d=0 frozen", "l2bg", {**l2, "delta": 0.0, "shared_lr_scale": 0.0}),
            Arm("d=0 0.1x + LwF heads", "l2bg", {**l2, "delta": 0.0, "old_heads": "lwf"}),
        ]
    return out


def gain_metric() -> Metric:
    def value(run: Run, runs: dict) -> float | None:
        ref = runs.get("independent")
        if ref is None:
            return None
        return accuracy_gain(run.matrix[-1], ref.matrix[-1])
    return Metric("gain % (acc.)", value, "+.2f")


# ---- the RSA noise floor --------------------------------------------------------------------------


def noise_floor(name: str, layers: list, seeds: list[int], out: Path) -> dict:
    """Per slot, over tasks t2.. and `seeds`: RSA of two independent nets of the same task (other
    init seeds) and of an untrained net against an independent net, on every validation input;
    cached in `out`."""
    path = out / f"noise-{name}.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    config = TrainConfig(**CONFIG)
    for seed in seeds:
        if str(seed) in cache:
            continue
        stream = get_stream(name, seed=seed, **stream_options(name))
        rows = []
        for i, task in enumerate(stream.tasks[1:], start=1):
            nets = []
            for tag in ("a", "b"):  # `independent_net` seeds its init by (run seed, index): vary the run seed
                run = TaskRun(task, i, stream, None, attrs.evolve(config, seed=seed), seed_of(seed, "noise", tag),
                              "noise-floor", None)
                nets.append(independent_net(_IndependentOptions(layers), run))
            rnd_net, rnd_store = scratch_net(layers, task, seed=seed_of(seed, "noise-random", i))
            slots = task_slots(nets[0].net, task.name, bn_slots=True)
            acts = [slot_outputs(n.net, n.store, task.name, task.x_val, slots) for n in nets]
            acts_r = slot_outputs(rnd_net, rnd_store, task.name, task.x_val, slots)
            rows.append({"task": task.name, "same_task": slot_conflicts(acts[0], acts[1]),
                         "untrained": slot_conflicts(acts_r, acts[0])})
        cache[str(seed)] = rows
        path.write_text(json.dumps(cache, indent=1))
    return {s: cache[str(s)] for s in seeds}


@attrs.frozen
class _IndependentOptions:
    """The `BindGrowOptions` fields `independent_net` reads."""

    backbone: list
    independent_config: dict | None = None
    cache_dir: str | None = None


def noise_table(name: str, floor: dict, grid: dict) -> str:
    same: dict[str, list] = {}
    untrained: dict[str, list] = {}
    for rows in floor.values():
        for r in rows:
            for s, v in r["same_task"].items():
                same.setdefault(s, []).append(v)
            for s, v in r["untrained"].items():
                untrained.setdefault(s, []).append(v)
    measured: dict[str, list] = {}
    for (stream, label, _), run in grid.items():
        if stream != name or label != CONTROL:
            continue
        for t, ann in run.annotations["tasks"].items():
            for s in (ann.get(PROV) or {}).get("slots") or []:
                measured.setdefault(s["slot"], []).append(s["conflict"])
    lines = ["| slot | two independent nets, same task | untrained vs independent | guided: bound task vs independent |",
             "|---|---|---|---|"]
    for s in same:
        def f(vals):
            if not vals:
                return "-"
            sm = summary(vals)
            return f"{sm.mean:.3f} ± {sm.sd:.3f} (n={sm.n})"
        lines.append(f"| {s} | {f(same[s])} | {f(untrained.get(s, []))} | {f(measured.get(s, []))} |")
    return "\n".join(lines)


def known_answers(name: str, grid: dict, labels: list[str]) -> str:
    """The last task's bind target and grown slots (ctrl streams: t6 repeats t1)."""
    lines = ["| arm | t6 bound to t1 | slots grown for t6 (count over seeds) |", "|---|---|---|"]
    for label in labels:
        binds, slots, n = 0, {}, 0
        for (stream, lab, _), run in sorted(grid.items()):
            if stream != name or lab != label:
                continue
            prov = run.annotations["tasks"].get("t6", {}).get(PROV) or {}
            n += 1
            binds += prov.get("bound_to") == "t1"
            for s in prov.get("grown") or []:
                slots[s] = slots.get(s, 0) + 1
            if not prov.get("grown"):
                slots["(none)"] = slots.get("(none)", 0) + 1
        if n:
            lines.append(f"| {label} | {binds} of {n} | {', '.join(f'{k}: {v}' for k, v in slots.items())} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="mlp")
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", choices=("all", "core", "depth"), default="all")
    p.add_argument("--deltas", type=float, nargs="+", default=[DELTA],
                   help="the controls at each of these deltas (the 1.0x / frozen / LwF / d=0 arms only at 0.55)")
    p.add_argument("--noise-seeds", type=int, nargs="*", default=None, help="seeds of the noise floor (default: --seeds)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gain", action="store_true", help="add the accuracy-relative gain against independent nets")
    p.add_argument("--out", required=True, help="directory of the run cells (reused when the spec matches)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out) / args.backbone
    layers = BACKBONES[args.backbone]()
    print("command: python benchmarks/l2bg.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"torch {torch.__version__}, {args.threads} thread(s), backbone {args.backbone}, seeds {args.seeds}, "
          f"arms {args.arms}, config {CONFIG}\n", flush=True)
    t0 = time.perf_counter()
    for name in args.streams:
        per_delta = [arms(layers, name, args.arms, d) for d in args.deltas]
        arm_list = list({a.label: a for group in per_delta for a in group}.values())
        grid = run_grid(arm_list, {name: stream_options(name)}, out=out, seeds=args.seeds, config=CONFIG,
                        echo=lambda m: print(m, file=sys.stderr, flush=True))
        labels = [a.label for a in arm_list]
        n = len(get_stream(name, seed=args.seeds[0], **stream_options(name)).tasks)
        metrics = ["AP", "BWT", "params"] + ([gain_metric()] if args.gain else [])
        for d, group in zip(args.deltas, per_delta):
            print(f"### {name} ({n} tasks), {args.backbone}, {len(args.seeds)} seeds, controls at delta {d:g}\n")
            print(table(grid, name, control=control_label(d), metrics=metrics, labels=[a.label for a in group]))
            print()
        if "d=0 0.1x" in labels:
            print("\nFull sharing (delta 0), against d=0 0.1x:\n")
            print(table(grid, name, control="d=0 0.1x", metrics=["AP", "BWT"],
                        labels=["finetune"] + [lb for lb in labels if lb.startswith("d=0")]))
        if name.startswith("ctrl"):
            print("\nKnown answer (t6 repeats t1):\n")
            print(known_answers(name, grid, [lb for lb in labels if lb not in ("independent", "finetune")]))
        floor = noise_floor(name, layers, args.noise_seeds if args.noise_seeds is not None else args.seeds, out)
        print("\nRSA noise floor and measured conflicts, per slot (mean ± sd over tasks t2.. and seeds):\n")
        print(noise_table(name, floor, grid))
        print(flush=True)
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
