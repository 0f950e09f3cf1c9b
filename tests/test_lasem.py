"""LASEM (spec `specs/LASEM.md`): configurations, E-step and prior maths, the factorized kinds,
the graph per task (views, commit, rollback), training, brute force, the known-answer stream,
and the two core changes LASEM needed (``add_node(route=False)``, ``reroute`` across kinds).

Spec §7 checks: (a) `test_posterior_concentrates_on_a_toy_case`, (e)
`test_rollback_restores_unused_shared_slots_bit_for_bit`, (f)
`test_group_enumeration_gives_two_to_the_groups_valid_masks`.
"""

from __future__ import annotations

import math
import os

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jointnet import check
from jointnet.errors import RewriteError, StrategyError
from jointnet.execution import Context, ParamStore, compile_net
from jointnet.experiments.runner import run_tasks
from jointnet.experiments.strategy import TaskRun, get
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph import add_node, reroute
from jointnet.graph.layers.factorized import DFConv2d, df_weight, tf_weight
from jointnet.graph.net import JointNet
from jointnet.persistence import snapshot
from jointnet.persistence.views import method_views, param_counts
from strategies import lasem_core as core
from strategies.lasem import LasemDFCNN, LasemHPS, LasemTF, em_train
from strategies.lasem_graph import (
    Template, build_column, commit, config_view, e_view, ensure_shared, inspect_view, own_node, route_mask,
    share_slots,
)
from strategies.trials import journal_storage

SMALL = {"channels": [3, 4, 4], "pools": [2, 1, 1], "fc": [6]}
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=3e-3, optimizer="rmsprop", momentum=0.0)
BASES = {"hps": LasemHPS, "tf": LasemTF, "dfcnn": LasemDFCNN}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_stream(n_tasks=2, repeat_first=False, seed=0):
    return get_stream("synthetic", seed=seed, n_tasks=n_tasks, input_shape=(1, 8, 8), n_train_per_class=16,
                      n_val_per_class=4, n_test_per_class=4, repeat_first=repeat_first)


def run_stream(strategy, stream, config=CONFIG, seed=0):
    outs = list(run_tasks(strategy, stream, config, seed=seed, echo=None))
    return outs[-1].net, outs[-1].store, outs


def em_net(base="hps", task="t1", template=None):
    """A net whose task routes through every shared slot, its own convs beside them."""
    t = template or Template(base=base, **SMALL)
    own, feeds = build_column(JointNet.empty(), t, task, 2, (1, 8, 8))
    net = share_slots(ensure_shared(own, t, task, feeds, t.slots), task, t.slots)
    return t, own, net, ParamStore(seed=0).realize(net)


# ---- configurations (spec §2.1, §2.6) ------------------------------------------------------


@settings(max_examples=40)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=5))
def test_group_enumeration_gives_two_to_the_groups_valid_masks(groups):
    # Spec §7 check (f).
    d = sum(groups)
    masks = core.enumerate_masks(d, groups)
    assert len(masks) == 2 ** len(groups) == len(set(masks))
    assert all(len(m) == d and core.valid_mask(m, groups) for m in masks)
    assert masks[0] == "F" * d and masks[-1] == "T" * d
    # ... and they are exactly the masks of {0,1}^d constant within every group.
    if d <= 8:
        every = {"".join("TF"[int(c)] for c in format(i, f"0{d}b")) for i in range(2 ** d)}
        assert set(masks) == {m for m in every if core.valid_mask(m, groups)}


def test_static_configurations_by_name_and_mask():
    assert [core.static_mask(n, 4) for n in ("all", "none", "top1", "bottom3", "bot2", "alternating", "alternating2")] \
        == ["TTTT", "FFFF", "FFFT", "TTTF", "TTFF", "FTFT", "TFTF"]
    assert core.static_mask("ttff", 4) == "TTFF"
    assert core.static_mask("TF", 4, [1, 3]) == "TFFF"
    for bad, why in (("top5", "k must be"), ("TTF", "letters"), ("TFTF", "splits a layer group"), ("best", "unknown")):
        with pytest.raises(ValueError, match=why):
            core.static_mask(bad, 4, [2, 2] if bad == "TFTF" else None)
    with pytest.raises(ValueError, match="add up"):
        core.check_groups(4, [1, 2])


# ---- E-step and prior maths (spec §2.2, §2.3) ---------------------------------------------------

probs = st.lists(st.floats(0.01, 1.0), min_size=2, max_size=6)


@settings(max_examples=60)
@given(probs, probs)
def test_posterior_is_prior_times_likelihood_normalised(prior, lik):
    n = min(len(prior), len(lik))
    p = torch.tensor(prior[:n], dtype=torch.float64)
    p = p / p.sum()
    L = torch.tensor(lik[:n], dtype=torch.float64)
    post = core.posterior(p, L.log())
    assert math.isclose(float(post.sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(post, p * L / (p * L).sum(), rtol=1e-10, atol=0)
    # Scaling every likelihood by one factor changes nothing; a uniform prior gives L normalised.
    assert torch.allclose(core.posterior(p, (3.0 * L).log()), post, rtol=1e-10, atol=0)
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    assert torch.allclose(core.posterior(uniform, L.log()), L / L.sum(), rtol=1e-10, atol=0)


@settings(max_examples=60)
@given(st.lists(st.lists(st.floats(0.001, 1.0), min_size=3, max_size=3), min_size=2, max_size=5))
def test_likelihoods_mean_and_product(rows):
    p = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(core.log_likelihood(p.log(), "mean").exp(), p.mean(1), rtol=1e-10)
    assert torch.allclose(core.log_likelihood(p.log(), "product"), p.log().sum(1), rtol=1e-10)
    # One sample: both are that sample's probability.
    one = p[:, :1].log()
    assert torch.allclose(core.log_likelihood(one, "mean"), core.log_likelihood(one, "product"))


def test_posterior_falls_back_to_the_prior_when_every_likelihood_is_zero():
    prior = torch.tensor([0.25, 0.75], dtype=torch.float64)
    assert torch.equal(core.posterior(prior, torch.tensor([-math.inf, -math.inf])), prior)


@settings(max_examples=60)
@given(st.lists(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), min_size=1, max_size=20))
def test_eq1_counts_and_running_mean(posts):
    posts = [torch.tensor(p, dtype=torch.float64) + 1e-3 for p in posts]
    posts = [p / p.sum() for p in posts]
    counts = torch.ones(3, dtype=torch.float64)
    mean = torch.full((3,), 1 / 3, dtype=torch.float64)
    for i, post in enumerate(posts):
        counts = core.update_counts(counts, post)
        mean = core.update_mean(mean, i, post)
    # Eq. 1: (n_c + 1) / sum(n_c' + 1), n_c = how often c was the posterior's argmax.
    n = torch.zeros(3, dtype=torch.float64)
    for post in posts:
        n[int(torch.argmax(post))] += 1
    assert torch.equal(core.counts_prior(counts), (n + 1) / (n + 1).sum())
    assert torch.allclose(mean, torch.stack(posts).mean(0), rtol=1e-12)
    assert math.isclose(float(mean.sum()), 1.0, rel_tol=1e-12)


def test_share_probability_and_regularisers():
    post = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    masks = core.enumerate_masks(2)  # FF FT TF TT
    assert torch.allclose(core.share_probability(post, masks), torch.tensor([0.7, 0.6], dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert float(core.orthogonality([q])) < 1e-5
    assert math.isclose(float(core.l2_half([torch.ones(4)])), 2.0)


# ---- the factorized kinds (spec §2.7) ---------------------------------------------------------


def test_tf_weight_is_the_mode_products_of_the_core():
    g = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    us = [torch.randn(n, n, dtype=torch.float64) for n in (3, 3, 2, 3)]  # u1 u2 (k), u3 (in), u4 (out)
    w = tf_weight(g, *us)
    # TensorFlow's layout [kh, kw, in, out], modes contracted with the factors' first axis.
    tf_g = g.permute(2, 3, 1, 0)
    expect = torch.einsum("abcd,ai,bj,ck,dl->ijkl", tf_g, *us)
    assert torch.allclose(w, expect.permute(3, 2, 0, 1))


def test_df_weight_is_a_deconvolution_then_a_contraction():
    kb = torch.randn(2, 2, 2, dtype=torch.float64)  # c_kb x h x h, h = 2 for k = 3
    deconv = torch.randn(2, 5, 3, 3, dtype=torch.float64)  # c_kb -> c_ts = 5
    beta = torch.randn(5, dtype=torch.float64)
    contract = torch.randn(5, 3, 4, dtype=torch.float64)  # c_ts x in x out
    w = df_weight(kb, deconv, beta, contract, 1)
    assert w.shape == (4, 3, 3, 3)
    # The transposed convolution by hand: every KB pixel scatters its filter at stride 2.
    z = torch.zeros(5, 5, 5, dtype=torch.float64)  # before cropping the padding of 1
    for c in range(2):
        for i in range(2):
            for j in range(2):
                z[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3] += kb[c, i, j] * deconv[c]
    z = z[:, 1:4, 1:4] + beta[:, None, None]
    assert torch.allclose(w, torch.einsum("chw,cio->oihw", z, contract))
    with pytest.raises(Exception, match="odd"):
        DFConv2d(in_ch=1, out_ch=1, kb_ch=1, ts_ch=1, kernel=4)


def test_generated_convs_compile_save_and_load_bit_identically(tmp_path):
    for base in ("tf", "dfcnn"):
        t, _, net, store = em_net(base)
        check(net)
        x = torch.rand(3, 1, 8, 8)
        before = compile_net(net, store, "t1").eval()(x)
        net2, store2 = snapshot.load(snapshot.save(tmp_path / f"{base}.jn", net, store))
        assert net2 == net
        assert torch.equal(compile_net(net2, store2, "t1").eval()(x), before)


# ---- the core changes LASEM needs --------------------------------------------------------------


def test_add_node_without_routing_and_reroute_across_kinds():
    t, own, net, _ = em_net("tf")
    # add_node(route=False): the shared alternatives were added beside the task's own convs; a
    # call with the default logs no `route` argument (older logs keep their lineage).
    recs = [r for r in net.log if r.name == "add_node"]
    assert all("route" not in r.kwargs for r in recs if r.kwargs["node"] not in t.slots)
    assert [r.kwargs.get("route") for r in recs if r.kwargs["node"] in t.slots] == [False] * t.d
    assert own.users("conv1.t1") == {"t1"} and "conv1" not in own
    assert net.users("conv1.t1") == set() and net.users("conv1") == {"t1"}
    # reroute between a Conv2d and a TFConv2d: the task gets its factors on the TF node and
    # loses them when it leaves it.
    assert {p.name for p in net.node("conv1").params if p.task == "t1"} == {"u1", "u2", "u3", "u4", "bias"}
    back = reroute(net, task="t1", node="conv1", to="conv1.t1")
    assert all(p.task is None for p in back.node("conv1").params)
    check(back)
    # (A head for a non-head is still refused: tests/test_errors.py.) Unrouted inputs are not.
    with pytest.raises(RewriteError, match="not on the route"):
        add_node(back, node="x", spec={"kind": "relu"}, inputs=["conv1"], task="t1", route=False)


# ---- the graph per task (spec §8) ---------------------------------------------------------------


def test_trie_execution_equals_per_path_execution_bit_for_bit():
    x = torch.rand(5, 1, 8, 8)
    for base in BASES:
        t, _, net, store = em_net(base)
        masks = core.enumerate_masks(t.d)
        views = [config_view(net, t, "t1", m) for m in masks]
        e_views = [e_view(net, v, f"e:{m}") for v, m in zip(views, masks)]
        together = compile_net(net, store, e_views + views)
        # Every conv layer l runs 2^l times, not 2^d times: the prefixes are computed once.
        for i, slot in enumerate(t.slots):
            assert together.code.count(f"# {slot}\n") + together.code.count(f"# {slot}.t1\n") == 2 ** (i + 1)
        ctx = Context(training=True, dropout=False)
        out = together(x, ctx)
        for v, e in zip(views, e_views):
            alone = compile_net(net, store, v)(x, ctx)
            assert torch.equal(out[v.name], alone) and torch.equal(out[e.name], alone)


def test_task_routes_are_chains_and_shared_users_follow_the_masks():
    stream = tiny_stream(n_tasks=4)
    picks = ["TFT", "FFT", None, "TTF"]  # static masks, and one task by EM
    net, store = JointNet.empty(), ParamStore(seed=0)
    masks = {}
    for i, (task, pick) in enumerate(zip(stream.tasks, picks)):
        run = TaskRun(task, i, stream, store, CONFIG, 0, "lasem-hps", None)
        net = LasemHPS(config=pick, **SMALL).step(net, run)
        masks[task.name] = net.tasks[task.name].annotations["lasem"]["mask"]
    check(net)
    t = Template(base="hps", **SMALL)
    for task, mask in masks.items():
        assert route_mask(net, t, task) == mask
        edges = net.edges(task)
        route = net.route(task)
        # One chain: every node but the input has one predecessor, every node but the head one successor.
        assert len(edges) == len(route) - 1
        assert all(len(net.inputs_of(n, task)) == 1 for n in route[1:])
        assert route[0] == "input" and route[-1] == f"head.{task}"
        for slot, bit in zip(t.slots, mask):
            assert (slot in route) + (own_node(slot, task) in route) == 1
            assert (own_node(slot, task) in net) == (bit == "F")  # unused own convs are gone
    for i, slot in enumerate(t.slots):
        users = {task for task, mask in masks.items() if mask[i] == "T"}
        assert net.users(slot) == users if users else slot not in net
    # Parameter accounting: own convs, FC and heads owned; a slot shared by 2+ tasks is shared.
    counts = param_counts(net)
    assert counts["unowned"] == 0
    shared = sum(net.node(s).spec.n_params() for i, s in enumerate(t.slots)
                 if sum(m[i] == "T" for m in masks.values()) >= 2)
    assert counts["shared"] == shared


def test_tf_and_dfcnn_accounting_splits_shared_tensor_and_owned_generators():
    stream = tiny_stream(n_tasks=2)
    for base, shared_name in (("tf", "core"), ("dfcnn", "kb")):
        net, _, _ = run_stream(BASES[base](config="all", **SMALL), stream)
        counts = param_counts(net)
        node = net.node("conv2")
        assert net.users("conv2") == {"t1", "t2"}
        assert counts["shared"] == sum(p.numel for s in ("conv1", "conv2", "conv3")
                                       for p in net.node(s).params if p.task is None)
        assert {p.name for p in node.params if p.task is None} == {shared_name}
        own_t2 = sum(p.numel for n in net.route("t2") for p in net.node(n).params
                     if p.task == "t2" or (p.task is None and net.users(n) == {"t2"}))
        assert counts["owned"]["t2"] == own_t2


# ---- training, commit and rollback (spec §2.4, §2.5) ---------------------------------------------


def test_rollback_restores_unused_shared_slots_bit_for_bit():
    # Spec §7 check (e): after the commit, every shared tensor at a slot the task chose to own is
    # bit-identical to its value before the task; a slot it shares was trained.
    stream = tiny_stream(n_tasks=2)
    for base in BASES:
        strat = BASES[base](**SMALL)
        net, store = JointNet.empty(), ParamStore(seed=0)
        run = TaskRun(stream.tasks[0], 0, stream, store, CONFIG, 0, "lasem", None)
        net = strat.step(net, run)
        t = strat.template()
        # Force a mixed choice for t2: its prior will be what the EM says; compare against it.
        before = {k: store[k].detach().clone() for s in t.slots if s in net for p in net.node(s).params
                  if p.task is None for k in [p.key]}
        run = TaskRun(stream.tasks[1], 1, stream, store, CONFIG, 0, "lasem", None)
        after = strat.step(net, run)
        mask = after.tasks["t2"].annotations["lasem"]["mask"]
        for i, slot in enumerate(t.slots):
            keys = [p.key for p in net.node(slot).params if p.task is None] if slot in net else []
            for k in keys:
                if mask[i] == "F":
                    assert torch.equal(store[k], before[k]), (base, slot)
                else:
                    assert not torch.equal(store[k], before[k]), (base, slot)


def test_rollback_covers_every_configuration_choice():
    # The same check on a forced choice: train t2 by EM but commit a mask with both letters.
    stream = tiny_stream(n_tasks=1)
    t, own, net, store = em_net("tf")
    keys = {s: [p.key for p in net.node(s).params if p.task is None] for s in t.slots}
    cp = store.checkpoint([k for ks in keys.values() for k in ks])
    before = {k: v.clone() for k, v in cp.values.items()}
    run = TaskRun(stream.tasks[0], 0, stream, store, CONFIG, 0, "lasem-tf", None)
    em_train(LasemTF(**SMALL), net, own, run, t, core.enumerate_masks(t.d))
    assert all(not torch.equal(store[k], before[k]) for ks in keys.values() for k in ks)
    mask = "TFT"
    store.restore(attrs.evolve(cp, values={k: cp.values[k] for k in keys["conv2"]}))
    committed = commit(net, t, "t1", mask)
    assert torch.equal(store[keys["conv2"][0]], before[keys["conv2"][0]])
    assert "conv2" not in committed and route_mask(committed, t, "t1") == mask  # nobody uses it: pruned
    for slot in ("conv1", "conv3"):  # the task keeps its factors where it shares
        assert {p.name for p in committed.node(slot).params if p.task == "t1"} == {"u1", "u2", "u3", "u4", "bias"}
    check(committed)


def test_posterior_concentrates_on_a_toy_case():
    # Spec §7 check (a): on a task that repeats the first one, sharing the trained layers is
    # clearly best; the prior's maximum passes 0.5 by the end of the task (Eq. 1 counts).
    stream = tiny_stream(n_tasks=2, repeat_first=True)
    config = attrs.evolve(CONFIG, epochs=3)
    net, store, _ = run_stream(LasemHPS(config="all", **SMALL), get_stream(
        "synthetic", seed=0, n_tasks=1, input_shape=(1, 8, 8), n_train_per_class=16, n_val_per_class=4,
        n_test_per_class=4), config)
    run = TaskRun(stream.tasks[1], 1, stream, store, config, 0, "lasem-hps", None)
    net = LasemHPS(**SMALL).step(net, run)
    ann = net.tasks["t2"].annotations["lasem"]
    assert max(ann["prior"]) > 0.5
    history = store[ann["posterior"].key]
    assert history.shape == (3 * 4, 8)  # 3 epochs of 4 batches, 8 configurations
    assert ann["mask"] == ann["configs"][int(torch.tensor(ann["prior"]).argmax())]
    # The posterior's argmax settles: the last epoch's batches all pick the committed mask.
    assert all(ann["configs"][int(i)] == ann["mask"] for i in history[-4:].argmax(1))


def test_fused_and_separate_e_steps_train_identically():
    stream = tiny_stream(n_tasks=2)
    a = run_stream(LasemHPS(**SMALL), stream)
    b = run_stream(LasemHPS(e_step="separate", **SMALL), stream)
    assert a[0].structure() == b[0].structure()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k
    assert [o.row for o in a[2]] == [o.row for o in b[2]]


def test_more_m_steps_and_the_other_prior_and_likelihood_run():
    stream = tiny_stream(n_tasks=2)
    for opts in ({"m_steps": 2}, {"prior": "posterior_mean", "likelihood": "product"}, {"own_init": "copy"},
                 {"rollback": False, "delete_unused": False}):
        net, store, outs = run_stream(LasemDFCNN(**SMALL, **opts), stream)
        check(net)
        ann = net.tasks["t2"].annotations["lasem"]
        assert ann["how"] == "em" and len(ann["posterior_epochs"]) == CONFIG.epochs
        assert math.isclose(sum(ann["prior"]), 1.0, rel_tol=1e-9)
        if not opts.get("delete_unused", True):
            assert any(own_node(s, "t2") in net and own_node(s, "t2") not in net.route("t2") for s in ("conv1", "conv2", "conv3"))


def test_m_steps_repeat_the_m_step_with_the_same_posterior():
    # numMSteps (spec §2.4): one E-step (one posterior per mini-batch), then m_steps optimizer
    # steps on the loss weighted by it.
    stream = tiny_stream(n_tasks=1)
    outs = {}
    for m in (1, 2):
        t, own, net, store = em_net("hps")
        run = TaskRun(stream.tasks[0], 0, stream, store, CONFIG, 0, "lasem-hps", None)
        torch.manual_seed(0)
        out = em_train(LasemHPS(m_steps=m, **SMALL), net, own, run, t, core.enumerate_masks(t.d))
        outs[m] = (out, {k: store[k].detach().clone() for k in store})
    (one, w1), (two, w2) = outs[1], outs[2]
    assert one.history.shape == two.history.shape == (CONFIG.epochs * 4, 8)
    assert torch.equal(one.history[0], two.history[0])  # before any step: the same weights
    assert not torch.equal(one.history[1], two.history[1])  # after one step against two
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)


def test_same_seed_same_numbers_and_the_snapshot_holds_the_choice(tmp_path):
    stream = tiny_stream(n_tasks=2)
    a = run_stream(get("lasem-tf", **SMALL), stream)
    b = run_stream(get("lasem-tf", **SMALL), stream)
    assert [o.row for o in a[2]] == [o.row for o in b[2]] and a[0] == b[0]
    net, store = snapshot.load(snapshot.save(tmp_path / "lasem.jn", a[0], a[1]))
    ann = net.tasks["t2"].annotations["lasem"]
    assert set(ann) >= {"how", "mask", "configs", "prior", "counts", "posterior", "posterior_epochs"}
    assert torch.equal(store[ann["posterior"].key], a[1][ann["posterior"].key])
    view = method_views(net, store)["lasem"]
    assert view["base learner"] == "tf" and view["task t2"].startswith(ann["mask"] + " (em")


# ---- settle (ours: the EM stops once argmax prior holds) -------------------------------------------


def _eq1_argmaxes(history: torch.Tensor, prior_count: float = 1.0) -> list[int]:
    """argmax prior after each batch of a posterior history, recomputed with Eq. 1 counts."""
    counts = torch.full((history.shape[1],), prior_count, dtype=torch.float64)
    out = []
    for post in history.to(torch.float64):
        counts = core.update_counts(counts, post)
        out.append(int(torch.argmax(core.counts_prior(counts))))
    return out


def test_settle_none_trains_as_before_and_a_settle_never_reached_changes_nothing():
    # settle=None is the spec's EM and leaves the annotation as it was (no settle keys: the
    # annotation is part of the net's lineage, hence of later tasks' fresh tensors). A settle no
    # task reaches (more batches than it has) runs the same arithmetic: on one task (whose
    # tensors exist before its annotation) the same tensors and accuracies, bit for bit.
    stream = tiny_stream(n_tasks=1)
    a = run_stream(LasemHPS(**SMALL), stream)
    b = run_stream(LasemHPS(settle=10_000, **SMALL), stream)
    assert [o.row for o in a[2]] == [o.row for o in b[2]]
    assert set(a[1]) == set(b[1])
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k
    ann_a, ann_b = a[0].tasks["t1"].annotations["lasem"], b[0].tasks["t1"].annotations["lasem"]
    assert "settle" not in ann_a and "settled" not in ann_a
    assert ann_b["settle"] == 10_000 and ann_b["settled"] is None
    assert {k: v for k, v in ann_b.items() if k not in ("settle", "settled")} == dict(ann_a)
    net, _, _ = run_stream(LasemHPS(**SMALL), tiny_stream(n_tasks=2))
    assert all("settle" not in net.tasks[t].annotations["lasem"] for t in ("t1", "t2"))


@pytest.mark.parametrize("k", [1, 3])
def test_settle_stops_the_em_when_argmax_prior_has_held_k_batches(k):
    stream = tiny_stream(n_tasks=2)
    full = run_stream(LasemHPS(**SMALL), stream)
    net, store, _ = run_stream(LasemHPS(settle=k, **SMALL), stream)
    for task in ("t1", "t2"):
        ann = net.tasks[task].annotations["lasem"]
        ref = full[0].tasks[task].annotations["lasem"]
        settled = ann["settled"]
        assert ann["settle"] == k and settled is not None
        history = store[ann["posterior"].key]
        assert history.shape == (settled, 8)  # the EM's batches only
        # The recorded batch is the first at which the same argmax closed k consecutive batches.
        arg = _eq1_argmaxes(history)
        assert len(set(arg[-k:])) == 1
        assert not any(len(set(arg[i - k + 1 : i + 1])) == 1 for i in range(k - 1, settled - 1))
        # The prior stopped there, and the commit is its argmax.
        assert list(ann["counts"]) == [1.0 + sum(1 for a in history.argmax(1).tolist() if a == c) for c in range(8)]
        assert ann["mask"] == ann["configs"][arg[-1]]
        if task == "t1":  # up to the settling batch the run is the full EM's, bit for bit
            assert torch.equal(history, full[1][ref["posterior"].key][:settled])
    assert len(net.tasks["t1"].annotations["lasem"]["posterior_epochs"]) == CONFIG.epochs
    view = inspect_view(net)  # `jointnet inspect` says where each task settled
    assert f"settled after batch {net.tasks['t1'].annotations['lasem']['settled']}" in view["task t1"]


@pytest.mark.parametrize("base", ["hps", "tf"])
def test_after_settling_each_step_is_the_static_configurations_step(base, monkeypatch):
    # Settle at the end of epoch 1 (4 batches; the argmax holds from batch 1 here), train epoch
    # 2; against: the plain EM for epoch 1 from the same state, then the static path (commit the
    # configuration, train it alone) for epoch 2. SGD without momentum (no optimizer state) and
    # one batch order for every epoch, so the second epoch starts from the same point in both.
    stream = tiny_stream(n_tasks=1)
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.arange(n))
    cls = BASES[base]
    sgd = attrs.evolve(CONFIG, optimizer="sgd", momentum=0.0, epochs=2)
    one = attrs.evolve(sgd, epochs=1)

    def task_run(store, config):
        return TaskRun(stream.tasks[0], 0, stream, store, config, 0, "lasem", None)

    t, own, net, store = em_net(base)
    masks = core.enumerate_masks(t.d)
    torch.manual_seed(0)
    out = em_train(cls(settle=4, **SMALL), net, own, task_run(store, sgd), t, masks)
    assert out.settled == 4 and out.history.shape == (4, 8)
    mask = masks[int(torch.argmax(out.prior))]
    t, own2, net2, store2 = em_net(base)
    torch.manual_seed(0)
    ref = em_train(cls(**SMALL), net2, own2, task_run(store2, one), t, masks)
    assert torch.equal(ref.history, out.history) and torch.equal(ref.prior, out.prior)
    after_em = {k: store2[k].clone() for k in store2}
    static = commit(net2, t, "t1", mask)
    em_train(cls(config=mask, **SMALL), static, static, task_run(store2, one), t, [mask])
    assert set(store) == set(store2)
    for k in store:
        assert torch.equal(store[k], store2[k]), k
    # ... and the second epoch did train the configuration (it is not the EM's epoch-1 state).
    route = {p.key for n in static.route("t1") for p in static.node(n).params}
    assert any(not torch.equal(store2[k], after_em[k]) for k in route)


# ---- options and errors ---------------------------------------------------------------------------


def test_options_are_validated_with_one_line_errors():
    for name, opts, why in (
        ("lasem-hps", {"config": "top9"}, "k must be"),
        ("lasem-hps", {"aux_weight": 0.1}, "aux_weight' applies to lasem-tf only"),
        ("lasem-tf", {"kb_channels": [2, 2, 2, 2]}, "applies to lasem-dfcnn only"),
        ("lasem-dfcnn", {"kernel": 4}, "odd"),
        ("lasem-dfcnn", {"groups": [1, 1]}, "add up"),
        ("lasem-hps", {"likelihood": "max"}, "'likelihood' must be one of"),
        ("lasem-hps", {"m_steps": 0}, "m_steps"),
        ("lasem-hps", {"settle": 0}, "'settle' must be None or an int >= 1"),
        ("lasem-tf", {"settle": 2.5}, "'settle' must be None or an int >= 1"),
        ("lasem-dfcnn", {"settle": True}, "'settle' must be None or an int >= 1"),
        ("lasem-hps", {"settle": 2, "config": "all"}, "'settle' applies to the EM only"),
        ("lasem-brute", {"config": "all"}, "does not apply to lasem-brute"),
        ("lasem-brute", {"settle": 2}, "'settle' does not apply to lasem-brute"),
        ("lasem-brute", {"learner": "vgg"}, "learner"),
    ):
        with pytest.raises(StrategyError, match=why) as e:
            get(name, **opts)
        assert "\n" not in str(e.value) and name in str(e.value)
    assert get("lasem-hps", config="TTFF").mask_list(4) == ["TTFF"]


def test_step_errors_name_strategy_and_task():
    stream = tiny_stream(n_tasks=2)
    net, store, _ = run_stream(LasemHPS(config="all", **SMALL), get_stream(
        "synthetic", n_tasks=1, input_shape=(1, 8, 8), n_train_per_class=4, n_val_per_class=2))
    run = TaskRun(stream.tasks[1], 1, stream, store, CONFIG, 0, "lasem-tf", None)
    with pytest.raises(StrategyError, match=r"lasem-tf.*t2.*differs from these options") as e:
        LasemTF(**SMALL).step(net, run)
    assert "\n" not in str(e.value)
    flat = get_stream("synthetic", n_tasks=1, input_shape=(6,), n_train_per_class=2, n_val_per_class=1)
    run = TaskRun(flat.tasks[0], 0, flat, ParamStore(), CONFIG, 0, "lasem-hps", None)
    with pytest.raises(StrategyError, match=r"lasem-hps.*t1.*\(C, H, W\)"):
        LasemHPS(**SMALL).step(JointNet.empty(), run)


# ---- brute force (spec §5 Table 3) ----------------------------------------------------------------


def test_brute_force_two_workers_share_one_study(tmp_path):
    import optuna

    stream = tiny_stream(n_tasks=1)
    opts = {**SMALL, "groups": [1, 2]}
    one = run_stream(get("lasem-brute", **opts), stream)
    two = run_stream(get("lasem-brute", workers=2, storage=str(tmp_path), **opts), stream)
    a, b = one[0].tasks["t1"].annotations["lasem"], two[0].tasks["t1"].annotations["lasem"]
    assert a["how"] == b["how"] == "brute" and set(a["val"]) == {"FFF", "FTT", "TFF", "TTT"}
    assert a == b and one[2][0].row == two[2][0].row  # the same trials, whoever ran them
    assert a["val"][a["mask"]] == max(a["val"].values())
    storage = journal_storage(tmp_path / "journal.log")
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["mask"] for t in done) == sorted(a["val"])
    assert {t.user_attrs["worker"] for t in done} == {0, 1}
    # The same storage again: the finished trials are reused (none runs again); other settings
    # (here the training config) open a study of their own.
    again = run_stream(get("lasem-brute", storage=str(tmp_path), **opts), stream)
    assert again[0].tasks["t1"].annotations["lasem"] == a and len(optuna.get_all_study_names(storage)) == 1
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == len(study.trials)
    run_stream(get("lasem-brute", storage=str(tmp_path), **opts), stream, attrs.evolve(CONFIG, epochs=1))
    assert len(optuna.get_all_study_names(storage)) == 2
    # The static run of the chosen mask from the same state gives the same net and numbers.
    static = run_stream(get("lasem-hps", config=a["mask"], **opts), stream)
    assert static[2][0].row == one[2][0].row


def test_trial_workers_run_as_module_processes_from_the_repository():
    from strategies import trials

    env = trials.worker_env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(trials.ROOT)
    # Workers import this repository's modules (from any working directory); exit codes come
    # back one per argument list.
    assert trials.run_workers("strategies.trials", [["a"], ["b"]], show_output=False) == [0, 0]
    codes = trials.run_workers("strategies.no_such_module", [["a"]], show_output=False)
    assert len(codes) == 1 and codes[0] != 0


# ---- the known-answer stream --------------------------------------------------------------------


def test_lowlevel_stream_is_deterministic_and_renders_each_task_apart(tmp_path):
    from datafiles import fake_mnist

    folder = fake_mnist(tmp_path / "fm", n_train=400, n_test=200)
    kw = dict(data_dir=folder, n_train_per_class=4, n_val_per_class=2, n_test_per_class=3, n_classes=3)
    s = get_stream("lowlevel-fmnist", seed=1, **kw)
    s2 = get_stream("lowlevel-fmnist", seed=1, **kw)
    assert [t.metadata["transform"] for t in s] == ["identity", "invert", "blur", "randconv", "patchperm"]
    assert len({t.classes for t in s}) == 1 and len(s[0].classes) == 3
    for t, t2 in zip(s, s2):
        assert torch.equal(t.x_train, t2.x_train) and torch.equal(t.y_test, t2.y_test)
        assert t.x_train.shape == (12, 1, 28, 28) and 0 <= float(t.x_train.min()) and float(t.x_train.max()) <= 1
    raw = [t.metadata["source_indices"]["train"] for t in s]
    assert len(set(torch.cat(raw).tolist())) == sum(len(r) for r in raw)  # fresh images per task
    src = s[0].x_train
    assert torch.allclose(get_stream("lowlevel-fmnist", seed=1, transforms=["invert"], n_tasks=1, **kw)[0].x_train, 1 - src)
    with pytest.raises(Exception, match="transforms"):
        get_stream("lowlevel-fmnist", transforms=["sharpen"], **kw)
