"""GROWN: options, masks (Gumbel forms, tied grown-masks), release, compaction, and the spec §8
invariants after every task: zero forgetting (bit-identical logits on CPU), frozen kernels exact
under momentum and weight decay, finished masks binary and unchanged, no task reads a kernel a
later task owns, release frees only unread kernels, sizes never shrink and stay put when Stage B
is skipped; a Hypothesis state machine over GROWN steps with random options; runner, resume,
snapshots and the CLI views."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from jointnet import snapshot
from jointnet.cli import main as cli
from jointnet.errors import StrategyError
from jointnet.execution import run as run_routes
from jointnet.execution.compile import compile_net
from jointnet.execution.masks import RUNTIME, salt
from jointnet.execution.program import Context
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import RunSpec, resume, run, run_tasks
from jointnet.experiments.strategy import TaskRun, get
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph.check import check
from jointnet.graph.net import JointNet
from jointnet.persistence.render import task_colors, to_dot
from strategies import grown_refs
from strategies.grown import GROWN, GrowOnly, full_layers, seed_layers
from strategies.grown_masks import (
    GROWN_MASK, SCALE, GrownHooks, producers, read_mask, ties_of, weight_block,
)
from strategies.grown_view import NET_KEY, inspect_view, size_report

SHAPE = (1, 8, 8)
CONV_BN = [
    {"kind": "input", "shape": SHAPE},
    {"kind": "conv", "out_ch": 8, "padding": 1, "bias": False}, {"kind": "bn"}, {"kind": "relu"},
    {"kind": "maxpool"},
    {"kind": "conv", "out_ch": 8, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool"},
    {"kind": "flatten"}, {"kind": "linear", "out_f": 16}, {"kind": "relu"},
]
LENET = [
    {"kind": "input", "shape": SHAPE},
    {"kind": "conv", "out_ch": 6, "kernel": 3, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool"},
    {"kind": "flatten"}, {"kind": "linear", "out_f": 12}, {"kind": "relu"},
    {"kind": "linear", "out_f": 8}, {"kind": "relu"},
]
MLP = [{"kind": "input", "shape": SHAPE}, {"kind": "flatten"}, {"kind": "linear", "out_f": 12},
       {"kind": "relu"}, {"kind": "linear", "out_f": 8}, {"kind": "relu"}]
# Momentum and weight decay on purpose: frozen kernels must not move even so.
CONFIG = TrainConfig(epochs=1, batch_size=16, lr=0.02, optimizer="sgd", momentum=0.9, weight_decay=1e-2)
# A fast GROWN: masks move quickly, candidates start on, growth forced (target above 1).
FAST = dict(mask_lr=0.5, grown_init=0.5, lam=0.05, first_pool=0.5, pool=0.25, rounds=1, target=1.0, delta=-0.01)


pytestmark = pytest.mark.usefixtures("one_thread")


def _stream(n_tasks: int = 3, seed: int = 0):
    return get_stream("synthetic", seed=seed, n_tasks=n_tasks, input_shape=SHAPE, n_train_per_class=16,
                      n_val_per_class=4, n_test_per_class=4)


PROBE = torch.rand((6, *SHAPE), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _out(net: JointNet, store: ParamStore, task: str, x: torch.Tensor = PROBE) -> torch.Tensor:
    m = compile_net(net, store, task)
    m.eval()
    return m(x).clone()


def _committed(net: JointNet, store: ParamStore, task: str) -> dict:
    """Every mask record of `task` with its stored tensor."""
    return {(n, m.param, m.kind, m.block): (m, store[m.key].clone())
            for n in net.nodes for m in net.node(n).masks if m.task == task}


class Tracker:
    """The invariants of spec §8, checked after every task (and by the state machine)."""

    def __init__(self):
        self.outs: dict[str, torch.Tensor] = {}
        self.masks: dict[str, dict] = {}
        self.sizes: list[dict] = []

    def after(self, net: JointNet, store: ParamStore) -> None:
        check(net)
        task = list(net.tasks)[-1]
        # Zero forgetting, bit for bit.
        for t, ref in self.outs.items():
            assert torch.equal(_out(net, store, t), ref), f"task {t!r} forgot after {task!r}"
        # Finished masks: committed (binary, except KSM scales), records and bits unchanged.
        for t, before in self.masks.items():
            assert _committed(net, store, t).keys() == before.keys(), f"masks of {t!r} changed"
            for k, (m, bits) in _committed(net, store, t).items():
                assert m == before[k][0] and torch.equal(bits, before[k][1]), f"mask {k} of {t!r} changed"
        for k, (m, bits) in _committed(net, store, task).items():
            if m.kind != SCALE:
                assert m.state == "committed" and bits.dtype == torch.uint8, f"mask {k} of {task!r} not binary"
        self.outs[task] = _out(net, store, task)
        self.masks[task] = _committed(net, store, task)
        # No task reads a kernel a later task owns: perturbing those changes no output.
        assert_later_kernels_unread(net, store)
        # Sizes never shrink; without Stage B only heads and BatchNorm grow.
        size = size_report(net, store)
        rec = dict(net.tasks[task].annotations[NET_KEY])
        if self.sizes:
            assert size["total"] >= self.sizes[-1]["total"]
            if not rec["grew"]:
                assert size["core"] == self.sizes[-1]["core"], f"{task!r} skipped Stage B but the core grew"
        self.sizes.append(size)


@torch.no_grad()
def assert_later_kernels_unread(net: JointNet, store: ParamStore) -> None:
    """For every task s, kernels owned by tasks added after s are not read by s: `read_mask` says
    so, and s's outputs stay bit-identical when those kernels take other values."""
    for s in net.tasks:
        me = net.tasks[s].added_at
        before = _out(net, store, s)
        saved = []
        for n in producers(net):
            for row in net.params_for(s, n)["weight"]:
                for p in row:
                    later = store[p.owners.key] > me
                    if not bool(later.any()):
                        continue
                    assert not bool((read_mask(net, store, s, n, p.block) & later).any()), \
                        f"task {s!r} reads kernels of later tasks on {n!r} {p.block}"
                    w = store[p.key]
                    saved.append((p.key, w.clone()))
                    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
                    sel = later.reshape(*later.shape, *[1] * (w.dim() - 2)).expand_as(w)
                    store.update(p.key, torch.where(sel, noise, w))
        assert torch.equal(_out(net, store, s), before), f"task {s!r} reads kernels of later tasks"
        for key, value in saved:
            store.update(key, value)


def _drive(strategy, stream=None, config=CONFIG, tracker=None):
    tracker = tracker or Tracker()
    net = store = None
    for o in run_tasks(strategy, stream or _stream(), config, seed=0, echo=None):
        net, store = o.net, o.store
        tracker.after(net, store)
    return net, store, tracker


# ---- options and pure functions --------------------------------------------------------------------


@pytest.mark.parametrize("options, word", [
    ({"rounds": -1}, "rounds"), ({"gumbel": "plain"}, "gumbel"), ({"target": 1.5}, "target"),
    ({"backbone": "resnet"}, "backbone"), ({"pool": 0}, "pool"), ({"selective": 1}, "selective"),
    ({"grow_mode": "both"}, "grow_mode"), ({"tau": 0.0}, "tau"), ({"seed_ratio": 0.0}, "seed_ratio"),
    ({"grown_init": float("nan")}, "grown_init"), ({"bogus": 1}, "bogus"),
])
def test_options_are_validated_with_one_line_errors(options, word):
    with pytest.raises(StrategyError) as e:
        get("grown", **options)
    msg = str(e.value)
    assert msg.startswith("grown") and word in msg and "\n" not in msg


def test_defaults_and_grow_only_preset():
    g = get("grown")
    assert (g.selective, g.attentive, g.release, g.grow_mode, g.gumbel, g.delta, g.rounds) == \
        (True, True, True, "lsg", "concrete", 0.0, 2)
    o = get("grow-only")
    assert isinstance(o, GrowOnly) and (o.selective, o.attentive, o.release, o.grow_when) == \
        (False, False, False, "needed")
    assert GROWN(backbone="vgg").ratio() == 0.125 and GROWN().ratio() == 0.25


def test_seed_layers_and_errors_name_strategy_and_task():
    seed = seed_layers(full_layers("lenet", (1, 28, 28)), 0.25)
    assert [i.get("out_ch", i.get("out_f")) for i in seed if i["kind"] in ("conv", "linear")] == [5, 13, 200, 125]
    with pytest.raises(StrategyError, match=r"^grown, task 't1': GROWN grows sequential"):
        seed_layers([{"kind": "add", "inputs": ["a", "b"]}], 0.5, "t1")
    stream = _stream(1)
    with pytest.raises(StrategyError, match="^grown, task 't1'"):
        merge = [{"kind": "input", "shape": SHAPE}, {"kind": "add", "inputs": ["input", "input"]}]
        list(run_tasks(GROWN(backbone=merge), stream, CONFIG, echo=None))


@pytest.mark.parametrize("form", ["gumbel", "gumbel_eq6"])
def test_gumbel_forms_keep_rates(form):
    """Binary concrete keeps a kernel with probability sigmoid(m); Eq. 6 as printed with
    pi0 / (1 + pi0) <= 1/2 (spec §2.5); both are m > 0 without noise."""
    m = torch.tensor([-2.0, 0.0, 2.0, 8.0]).repeat(4000, 1)
    rate = RUNTIME[f"_mask_{form}"](m, Context(training=True, noise_seed=5), 11).mean(0)
    pi0 = torch.sigmoid(m[0])
    want = pi0 if form == "gumbel" else pi0 / (1 + pi0)
    assert torch.allclose(rate, want, atol=0.03), (rate, want)
    assert RUNTIME[f"_mask_{form}"](m[0], Context(), 11).tolist() == [0.0, 0.0, 1.0, 1.0]


def _one_round(options: dict, layers=CONV_BN):
    """A task-1 net with one growth round attached but not trained, and its TaskRun."""
    stream = _stream(1)
    s = GROWN(backbone=layers, **{**FAST, **options})
    store = ParamStore(seed=0)
    run = TaskRun(stream.tasks[0], 0, stream, store, CONFIG, 0, "grown", None)
    net = s._start(JointNet.empty(), run, layers)
    net = s._grow(net, run, 0.5, 1, {})
    return s, net, store, run


def test_tied_grown_mask_samples_and_gradients():
    """Followers hold the driver's sample; their gradients reach the driver through the
    straight-through rule, as if every block of the channel shared one tensor."""
    s, net, store, run = _one_round({})
    ties = ties_of(net, "t1")
    assert ties and all(len(f) >= 2 for _, f in ties.values())  # weight blocks, bias or BatchNorm
    hooks = GrownHooks(net, store, "t1", seed0=100, tau=0.7)
    ctx = hooks.context({"training": True})
    m = compile_net(net, store, "t1")
    x, y = run.task.train
    loss = torch.nn.functional.cross_entropy(m(x[:16], ctx), y[:16])
    for d, fs in ties.values():
        hard = RUNTIME["_mask_gumbel"](store[d.key].detach(), ctx, salt(d.key))
        for f in fs:
            assert torch.equal(store[f.key].detach().reshape(-1), hard.reshape(-1))
    loss.backward()
    raw = {g: store[d.key].grad.clone() for g, (d, _) in ties.items()}
    fgrads = {g: sum(store[f.key].grad.reshape(-1) for f in fs) for g, (d, fs) in ties.items()}
    hooks.transform_grads(m, {})
    for g, (d, fs) in ties.items():
        mr = store[d.key].detach()
        gen = torch.Generator().manual_seed((ctx.noise_seed * 1_000_003 + salt(d.key)) % (1 << 63))
        u = torch.rand(mr.shape, generator=gen).clamp_(1e-6, 1 - 1e-6)
        yv = torch.sigmoid((mr + torch.log(u) - torch.log1p(-u)) / ctx.tau)
        want = raw[g] + yv * (1 - yv) / ctx.tau * fgrads[g]
        assert torch.allclose(store[d.key].grad, want, atol=1e-6)
        assert all(store[f.key].grad is None for f in fs)


@pytest.mark.parametrize("layers", [CONV_BN, LENET], ids=["conv-bn", "lenet"])
def test_channel_off_is_exactly_zero_and_compaction_changes_nothing(layers):
    s, net, store, run = _one_round({}, layers)
    ties = ties_of(net, "t1")
    for i, (d, _) in enumerate(ties.values()):  # channels alternately on and off
        store.update(d.key, torch.tensor([3.0 if (i + j) % 2 else -3.0 for j in range(d.shape[0])]))
    s._train(net, run, 1)  # trains, then leaves followers at the driver's value
    first = producers(net)[0]
    g = net.node(first).out_groups[-1]
    act = run_routes(net, store, PROBE, "t1", capture=[net.route("t1")[net.route("t1").index(first) + 2]])
    off = ~(store[net.node(first).mask("t1", "weight", GROWN_MASK, (g.id, None)).key] > 0)
    value = next(iter(act.activations.values()))
    base = net.node(first).base_width("out")
    before_groups = sum(gg.size for gg in net.node(first).out_groups[:-1])
    assert bool((value[:, base + before_groups:][:, off] == 0).all())
    before = _out(net, store, "t1")
    net = s._commit(net, run, {"grew": False, "first": True, "rounds": 1})
    store.realize(net)
    check(net)
    assert torch.allclose(_out(net, store, "t1"), before, atol=1e-5)
    kept = dict(net.tasks["t1"].annotations[NET_KEY])["grown_channels"]
    assert all(0 < v["kept"] < v["candidates"] for v in kept.values())


# ---- the invariants over whole runs -------------------------------------------------------------


OPTION_SETS = {
    "default": {},
    "no-selective": {"selective": False},
    "no-attentive": {"attentive": False},
    "no-release": {"release": False},
    "channel": {"grow_mode": "channel"},
    "eq6-sampled": {"gumbel": "eq6", "test_masks": "sampled"},
    "soft-selective": {"soft_selective": True},
    "old-not-new": {"old_reads_new": False},
    "bn-freeze-fresh-release": {"bn": "freeze", "release_init": "fresh", "mask_released": True},
    "lam-a": {"lam_a": 0.5, "weight_decay": 1e-2},
}


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_invariants_hold_for_every_option_set(name):
    layers = MLP if name == "lam-a" else LENET if name in ("channel", "old-not-new") else CONV_BN
    net, store, tr = _drive(GROWN(backbone=layers, **{**FAST, **OPTION_SETS[name]}))
    assert len(net.tasks) == 3 and all(dict(i.annotations[NET_KEY])["grew"] for i in list(net.tasks.values())[1:])


@pytest.mark.parametrize("backbone", ["vgg", "lenet", "mlp"])
def test_named_backbones_hold_the_invariants(backbone):
    """The named backbones (VGG-style with BatchNorm, LeNet-5-like 20-50-800-500, the MLP) start
    from their seed widths and keep every invariant over two tasks that grow."""
    net, store, tr = _drive(GROWN(backbone=backbone, **FAST), stream=_stream(2))
    ann = dict(net.annotations[NET_KEY])
    ratio = 0.125 if backbone == "vgg" else 0.25
    full, seed = dict(ann["full_widths"]), dict(ann["seed_widths"])
    assert full and all(seed[n] == max(2, math.ceil(full[n] * ratio)) for n in full)
    assert tr.sizes[0]["size"] < 1 and dict(net.tasks["t2"].annotations[NET_KEY])["grew"]
    if backbone == "vgg":
        bns = [n for n in net.nodes if net.node(n).kind == "BatchNorm"]
        assert bns and all(any(p.task == "t2" for p in net.node(n).params) for n in bns)  # per-task BatchNorm


def test_release_frees_only_kernels_no_finished_task_reads(monkeypatch):
    """At every release, the released kernels can take any value without changing a finished
    task's outputs; and there is something to release (m^a switched kernels off)."""
    real = GROWN._release
    seen = []

    def checked(self, net, run):
        before = {t: _out(net, run.store, t) for t in net.tasks if t != run.task.name}
        out = real(self, net, run)
        for (n, block), r in out.items():
            p = weight_block(net, run.task.name, n, block)
            w = run.store[p.key]
            sel = r.reshape(*r.shape, *[1] * (w.dim() - 2)).expand_as(w)
            run.store.update(p.key, torch.where(sel, torch.full_like(w, 1e3), w))
        for t, ref in before.items():
            assert torch.equal(_out(net, run.store, t), ref), f"release to {run.task.name!r} freed a kernel {t!r} reads"
        seen.append(int(sum(int(r.sum()) for r in out.values())))
        return out

    monkeypatch.setattr(GROWN, "_release", checked)
    _drive(GROWN(backbone=CONV_BN, **{**FAST, "attentive_init": 0.0}))
    assert len(seen) == 2 and sum(seen) > 0


def test_frozen_kernels_get_no_update_under_momentum_and_weight_decay():
    """Training task 2 (SGD, momentum 0.9, weight decay in the optimizer and as GROWN's L2) leaves
    every entry task 1 still owns, and task 1's BatchNorm and head, bit-identical."""
    s = GROWN(backbone=CONV_BN, **{**FAST, "weight_decay": 1e-2, "attentive_init": 0.0})
    snaps = []
    for o in run_tasks(s, _stream(2), CONFIG, seed=0, echo=None):
        snaps.append({p.key: (store_value.clone(), p.owners) for n in o.net.nodes for p in o.net.node(n).params
                      if p.task in (None, "t1") and (store_value := o.store[p.key]) is not None})
    store, me = o.store, o.net.tasks["t1"].added_at
    moved = 0
    for key, (value, owners) in snaps[0].items():
        now = store[key]
        if owners is None:  # BatchNorm, head of t1: t1's own, off task 2's training
            assert torch.equal(now, value), key
            continue
        own = store[owners.key]
        mine = (own == me).reshape(*own.shape, *[1] * (value.dim() - own.dim())).expand_as(value)
        assert torch.equal(now[mine], value[mine]), f"{key}: a frozen kernel moved"
        moved += int((now != value).sum())
    assert moved > 0  # kernels released to task 2 did train


def test_stage_b_skipped_keeps_the_core_and_logs_no_widen():
    net, store, tr = _drive(GROWN(backbone=CONV_BN, **{**FAST, "target": 0.0, "delta": 0.0}))
    recs = [dict(i.annotations[NET_KEY]) for i in net.tasks.values()]
    assert [r["grew"] for r in recs] == [False, False, False] and recs[0]["first"]
    assert tr.sizes[1]["core"] == tr.sizes[2]["core"] == tr.sizes[0]["core"]
    widen_at = [r.kwargs["task"] for r in net.log if r.name == "widen"]
    assert set(widen_at) == {"t1"}
    view = inspect_view(net, store)
    assert view["stage B ran at"] == [] and view["stage B skipped at"] == ["t2", "t3"]


def test_grow_only_grows_without_selective_or_attentive_masks():
    net, store, tr = _drive(GrowOnly(backbone=LENET, **FAST))
    assert {r.kwargs["task"] for r in net.log if r.name == "widen"} == {"t1", "t2", "t3"}
    assert not any(m.kind in ("selective", "attentive") for n in net.nodes for m in net.node(n).masks)
    always, _, _ = _drive(GrowOnly(backbone=LENET, **{**FAST, "target": 0.0, "grow_when": "always"}))
    assert {r.kwargs["task"] for r in always.log if r.name == "widen"} == {"t1", "t2", "t3"}


def test_references_are_memoised_and_cached(tmp_path, monkeypatch):
    calls = []
    real = grown_refs._train_one

    def counted(*a, **k):
        calls.append(a[2])
        return real(*a, **k)

    monkeypatch.setattr(grown_refs, "_train_one", counted)
    monkeypatch.setattr(grown_refs, "_ACC", {})
    monkeypatch.setattr(grown_refs, "_CHAIN", {})
    s = GROWN(backbone=MLP, **{**FAST, "target": "max", "target_cache": str(tmp_path)})
    net, store, _ = _drive(s)
    # task 1: none; task 2: scratch, the fine-tune chain's task 1 and task 2; task 3: both
    assert calls == [1, 0, 1, 2, 2]
    rec = dict(net.tasks["t2"].annotations[NET_KEY])
    assert rec["target"] == max(rec["scratch"], rec["finetune"])
    assert (tmp_path / grown_refs.CACHE_FILE).exists()
    monkeypatch.setattr(grown_refs, "_ACC", {})
    monkeypatch.setattr(grown_refs, "_CHAIN", {})
    calls.clear()
    net2, _, _ = _drive(s)
    assert calls == [] and dict(net2.tasks["t3"].annotations[NET_KEY]) == dict(net.tasks["t3"].annotations[NET_KEY])


# ---- the Hypothesis state machine over GROWN steps -----------------------------------------------


class GrownSteps(RuleBasedStateMachine):
    """Random GROWN steps (each with random options, growing or not) on one net; the spec §8
    invariants after every step."""

    def __init__(self):
        super().__init__()
        self.stream = _stream(4, seed=1)
        self.net = JointNet.empty()
        self.store = ParamStore(seed=0)
        self.tracker = Tracker()

    @precondition(lambda self: len(self.net.tasks) < 4)
    @rule(options=st.sampled_from(sorted(OPTION_SETS)), grow=st.booleans(), init=st.sampled_from([-1.0, 0.5, 2.0]))
    def step(self, options, grow, init):
        i = len(self.net.tasks)
        opts = {**FAST, **OPTION_SETS[options], "grown_init": init, "target": 1.0 if grow else 0.0,
                "delta": -0.01 if grow else 0.0}
        run = TaskRun(self.stream.tasks[i], i, self.stream, self.store, CONFIG, 0, "grown", None)
        self.net = GROWN(backbone=CONV_BN, **opts).step(self.net, run)
        self.store.realize(self.net)
        self.tracker.after(self.net, self.store)
        assert dict(self.net.tasks[run.task.name].annotations[NET_KEY])["grew"] == (grow and i > 0)

    @invariant()
    def masks_of_finished_tasks_are_bits(self):
        for n in self.net.nodes:
            for m in self.net.node(n).masks:
                assert m.kind == SCALE or m.state == "committed"


def test_state_machine_over_grown_steps():
    run_state_machine_as_test(GrownSteps, settings=settings(
        max_examples=10, stateful_step_count=4, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# ---- runner, snapshots, CLI -----------------------------------------------------------------------


def _spec(**options):
    return RunSpec("grown", "synthetic", seed=0,
                   strategy_options={"backbone": CONV_BN, **FAST, **options},
                   stream_options={"n_tasks": 3, "input_shape": list(SHAPE), "n_train_per_class": 16,
                                   "n_val_per_class": 4, "n_test_per_class": 4},
                   config={"epochs": 1, "batch_size": 16})


def test_smoke_run_bwt_zero_resume_and_views(tmp_path, capsys):
    """The CI smoke run: a tiny synthetic stream through the runner; BWT exactly 0; a run resumed
    after the first task gives the same matrix; snapshots load with bit-identical outputs; inspect,
    log and render show GROWN's growth."""
    res = run(_spec(), tmp_path / "a", echo=lambda m: None)
    assert res["metrics"]["BWT"] == 0.0 and res["done"] == 3
    other = tmp_path / "b"
    run(_spec(), other, echo=lambda m: None)
    data = json.loads((other / "results.json").read_text())
    for key in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        data[key] = data[key][:1]
    data["done"] = 1
    (other / "results.json").write_text(json.dumps(data))
    for p in (other / "snapshots").glob("task_0[12]_*"):
        p.unlink()
    again = resume(other, echo=lambda m: None)
    assert again["matrix"] == res["matrix"]
    snap = tmp_path / "a" / res["snapshots"][-1]
    net, store = snapshot.load(snap)
    for t in net.tasks:
        assert torch.equal(_out(net, store, t), _out(net, store, t))
    capsys.readouterr()
    assert cli(["inspect", str(snap)]) == 0
    text = capsys.readouterr().out
    assert "grown:" in text and "stage B ran at" in text and "size (x one full backbone)" in text
    assert cli(["inspect", "--json", str(snap)]) == 0
    view = json.loads(capsys.readouterr().out)["methods"]["grown"]
    assert view["stage B ran at"] == ["t2", "t3"] and len(view["size after each task"]) == 3
    assert cli(["log", str(snap)]) == 0
    log = capsys.readouterr().out
    assert "widen(" in log and "grown.stage_b, value={grew: True, rounds: 1" in log
    assert cli(["render", str(snap), "-o", str(tmp_path / "g.dot")]) == 0
    dot = (tmp_path / "g.dot").read_text()  # `jointnet render`: each channel group in its owner's colour
    assert dot == to_dot(net)
    colors = task_colors(net)
    groups = [g for n in net.nodes for g in net.node(n).out_groups]
    assert {g.owner for g in groups} >= {"t1", "t2"}  # two owners at least: two colours
    assert all(f'BGCOLOR="{colors[g.owner]}">+{g.size} ch ({g.owner})' in dot for g in groups)


def test_snapshot_round_trip_is_bit_identical(tmp_path):
    net, store, tr = _drive(GROWN(backbone=CONV_BN, **FAST))
    snapshot.save(tmp_path / "g.jn", net, store)
    net2, store2 = snapshot.load(tmp_path / "g.jn")
    assert net2 == net
    for t in net.tasks:
        assert torch.equal(_out(net2, store2, t), tr.outs[t])
    assert inspect_view(net2, store2) == inspect_view(net, store)
