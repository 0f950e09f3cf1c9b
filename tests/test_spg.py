"""SPG (spec §2, §7, §8): the pure pieces against hand-computed values and properties, the exact
checks of spec §7 (importance range, monotone accumulation, gamma = 1 bit-identical, old heads
untouched, task 1 untouched, the SMH factor, CHI >= the own head, the single-task importance,
the metric identity), the variants, state in the net and store (snapshot, resume), the blocked
fractions of SPG and HAT, the views, and the similar-tasks stream."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import strategies.spg  # noqa: F401  (registers the "spg" provider)
from jointnet import snapshot
from jointnet.errors import StrategyError, StreamError
from jointnet.execution.optim import train_plan
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import run_tasks
from jointnet.experiments.strategy import get
from jointnet.experiments.streams import get_stream
from jointnet.experiments.streams.similar import writer_transform
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph.net import JointNet
from jointnet.persistence.views import method_diffs, method_views

try:  # the CLI's text for method views (moved between CLI modules)
    from jointnet.cli.snapshots import format_views
except ImportError:  # pragma: no cover
    from jointnet.cli.commands import format_views
from strategies.ewc import ewc_penalty
from strategies.hat import HAT, conditioning
from strategies.spg import SPG, gradient_sums, penalty_terms, prune_probe, task_importance
from strategies.spg_core import (
    IMPORTANCE, NET_KEY, accumulate, accumulated, blocked_stats, chi_max, head_factor, importance,
    normalise, route_importance, transfer_metrics, trunk_factor, trunk_params,
)
from strategies.spg_views import diff_view, inspect_view

TINY = [{"kind": "input", "shape": (6,)}, {"kind": "linear", "out_f": 5}, {"kind": "relu"},
        {"kind": "linear", "out_f": 4}, {"kind": "relu"}]
SGD = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.0)


def _stream(n_tasks=3):
    return get_stream("synthetic", seed=0, n_tasks=n_tasks, input_shape=(6,), n_train_per_class=24,
                      n_val_per_class=4, n_test_per_class=8, noise=0.5)


def _outcomes(strategy, stream, upto, config=SGD, **kw):
    return list(itertools.islice(run_tasks(strategy, stream, config, seed=0, echo=None, **kw), upto))


def _gammas(net, store, task):
    return {k: v.clone() for k, v in route_importance(net, store, task).items()}


# ---- pure pieces ------------------------------------------------------------------------------------

floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(st.lists(floats, min_size=1, max_size=40), st.floats(1e-3, 1e3), st.booleans())
def test_importance_is_in_0_1_sign_and_scale_free(values, scale, flip):
    g = torch.tensor(values)
    imp = importance(g)
    z = normalise(g)
    assert bool(((imp >= 0) & (imp <= 1)).all())
    # 0 <= gamma < 1 except where float32 tanh saturates (|z| >~ 9)
    assert bool((imp[z.abs() < 8] < 1).all())
    assert torch.equal(importance(-g), imp)
    assert torch.allclose(importance(g * scale), imp, atol=1e-4)


def test_constant_or_single_tensors_have_zero_importance():
    for g in (torch.full((7,), 0.1), torch.full((3, 3), -7.77), torch.tensor([4.0]), torch.zeros(5)):
        assert torch.equal(importance(g), torch.zeros_like(g))


def test_importance_against_hand_computed_values():
    g = torch.tensor([1.0, 2.0, 6.0])  # mean 3, unbiased std sqrt(7)
    want = torch.tanh((g - 3.0) / math.sqrt(7.0)).abs()
    assert torch.allclose(importance(g), want)


@given(st.lists(st.lists(st.floats(0, 1, width=32), min_size=4, max_size=4), min_size=1, max_size=4))
def test_chi_max_and_accumulate_are_elementwise_max(rows):
    heads = [[torch.tensor(r)] for r in rows]
    out = chi_max(heads)[0]
    for h in heads:
        assert bool((out >= h[0]).all())
    assert torch.equal(out, torch.stack([h[0] for h in heads]).max(0).values)
    acc = None
    for h in heads:
        new = accumulate(acc, h[0])
        assert acc is None or bool((new >= acc).all())
        acc = new


def test_factors():
    g = torch.tensor([0.0, 0.25, 0.7, 1.0])
    assert torch.equal(trunk_factor(g), 1 - g)
    assert trunk_factor(g, 0.6).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert float(head_factor([g, torch.tensor([0.5, 0.5])])) == pytest.approx(1 - (1.95 + 1.0) / 6)
    assert float(head_factor([g], 0.6)) == 0.5


@given(st.integers(1, 6), st.data())
def test_metric_identity_holds_on_any_accuracy_matrix(T, data):
    """Spec §4.3: ACC = ONE + FWT + BWT (T-1)/T for every accuracy matrix and reference."""
    acc = st.floats(0, 1, allow_nan=False)
    R = [[data.draw(acc) for _ in range(i + 1)] + [None] * (T - i - 1) for i in range(T)]
    ref = [data.draw(acc) for _ in range(T)]
    m = transfer_metrics(R, ref)
    assert abs(m["identity"]) < 1e-12
    assert m["ACC"] == pytest.approx(m["ONE"] + m["FWT"] + m["BWT"] * (T - 1) / T, abs=1e-12)


# ---- importance passes -------------------------------------------------------------------------------


def _net1(strategy=SPG(backbone=TINY), n_classes=3):
    net = strategy.prepare(JointNet.empty(), "t1", n_classes, (6,))
    return net, ParamStore(seed=3).realize(net)


def test_single_task_importance_is_abs_tanh_zscore_of_summed_ce_gradients():
    """Spec §7: with one task, gamma = |tanh(zscore(sum over batches of grad CE))|, by hand."""
    net, store = _net1()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    trunk = trunk_params(net, "t1")
    head = net.params_for("t1", net.tasks["t1"].head)
    w1, b1, w2, b2 = (store[p.key].detach().clone().requires_grad_(True) for _, p in trunk)
    wh, bh = store[head["weight"][0][0].key].detach(), store[head["bias"][0][0].key].detach()
    sums = [torch.zeros_like(t) for t in (w1, b1, w2, b2)]
    for i in range(0, 10, 4):  # batches of 4, 4, 2, in order
        h = F.relu(F.linear(F.relu(F.linear(x[i:i + 4], w1, b1)), w2, b2))
        loss = F.cross_entropy(F.linear(h, wh, bh), y[i:i + 4])
        for s, g in zip(sums, torch.autograd.grad(loss, [w1, b1, w2, b2])):
            s += g
    want = [torch.tanh((g - g.mean()) / g.std()).abs() for g in sums]
    got = task_importance(net, store, "t1", x, y, batch_size=4)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)
    assert all(t.grad is None for t in (store[p.key] for _, p in trunk))  # nothing written


def test_node_scope_standardises_each_nodes_tensors_together():
    """``norm_scope="node"``: one z-score over a node's weight and bias pooled, by hand."""
    net, store = _net1()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 6, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    g = gradient_sums(net, store, "t1", "t1", x, y, batch_size=4)
    got = task_importance(net, store, "t1", x, y, batch_size=4, scope="node")
    for (w, b), (iw, ib) in zip([g[0:2], g[2:4]], [got[0:2], got[2:4]]):
        pooled = torch.cat([w.reshape(-1), b])
        z = torch.tanh((pooled - pooled.mean()) / pooled.std()).abs()
        assert torch.allclose(iw.reshape(-1), z[: w.numel()], atol=1e-6)
        assert torch.allclose(ib, z[w.numel():], atol=1e-6)
    per_tensor = task_importance(net, store, "t1", x, y, batch_size=4)
    assert not all(torch.allclose(a, b) for a, b in zip(got, per_tensor))


def test_importance_mode_eval_turns_dropout_off():
    """``importance_mode``: "eval" switches dropout off (two passes agree exactly), "train" keeps
    it on (its gradients differ from eval's)."""
    backbone = [TINY[0], TINY[1], {"kind": "dropout", "p": 0.5}, *TINY[2:]]
    net, store = _net1(SPG(backbone=backbone))
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    ev = [gradient_sums(net, store, "t1", "t1", x, y, mode="eval") for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*ev))
    torch.manual_seed(0)
    tr = gradient_sums(net, store, "t1", "t1", x, y, mode="train")
    assert not all(torch.allclose(a, b) for a, b in zip(tr, ev[0]))


def test_chi_is_at_least_the_own_head_and_the_max_over_heads():
    """Spec §7: CHI at a fixed model state gives gamma^t >= gamma^{t,t} elementwise."""
    s = _stream(2)
    o = _outcomes(SPG(backbone=TINY), s, 2)[-1]
    x, y = s[1].train
    own = task_importance(o.net, o.store, "t2", x, y)
    both = task_importance(o.net, o.store, "t2", x, y, old_heads=["t1"])
    old = gradient_sums(o.net, o.store, "t2", "t1", x, y)
    for a, b, g in zip(own, both, old):
        assert bool((b >= a).all())
        assert torch.equal(b, torch.maximum(a, importance(g)))
    assert any(bool((b > a).any()) for a, b in zip(own, both))


def test_fisher_importance_is_in_0_1():
    s = _stream(2)
    for norm in ("zscore", "max"):
        o = _outcomes(SPG(backbone=TINY, importance="fisher", fisher_norm=norm), s, 2)[-1]
        for g in route_importance(o.net, o.store, "t2").values():
            assert bool(((g >= 0) & (g <= 1)).all())
        if norm == "max":
            assert any(float(g.max()) == 1.0 for g in route_importance(o.net, o.store, "t2").values())


# ---- the training checks of spec §7 --------------------------------------------------------------------


def test_accumulated_importance_never_decreases_and_lives_in_the_store():
    outs = _outcomes(SPG(backbone=TINY), _stream(3), 3)
    prev = None
    for o in outs:
        gam = _gammas(o.net, o.store, o.task)
        assert len(gam) == 4 and all(bool(((g >= 0) & (g <= 1)).all()) for g in gam.values())
        if prev is not None:
            for k, g in gam.items():
                assert bool((g >= prev[k]).all())
        prev = gam
        assert list(o.net.annotations[NET_KEY]["tasks"]) == [x.task for x in outs[: o.index + 1]]
    # spec §8.3: the topology grows by the task's head only; nothing is annotated on a head
    for before, after in zip(outs, outs[1:]):
        added = set(after.net.graph.nodes) - set(before.net.graph.nodes)
        assert added == {after.net.tasks[after.task].head}
        assert set(before.net.graph.nodes) <= set(after.net.graph.nodes)
    last = outs[-1].net
    for t in last.tasks:
        head = last.node(last.tasks[t].head)
        assert not head.annotations and all(not p.annotations for p in head.params)
    # older versions keep their own tensors (new keys per task)
    first = outs[0].net
    for (n, name), g in _gammas(first, outs[-1].store, "t1").items():
        assert bool((g <= prev[(n, name)]).all())


def test_task1_gradients_untouched_and_factors_as_specified():
    """Spec §7: no rule does anything at task 1; later the trunk gets 1 - gamma, the head
    1 - mean(cat(gamma)) (SMH), each exactly."""
    spg = SPG(backbone=TINY)
    net, store = _net1(spg)
    tp = train_plan(net, store, "t1", 0.1)
    assert tp.grad_mults == [] and tp.update_mults == [] and tp.freezes == []
    o = _outcomes(spg, _stream(2), 1)[-1]
    net2 = spg.prepare(o.net, "t2", 2, (6,))
    o.store.realize(net2)
    tp = train_plan(net2, o.store, "t2", 0.1)
    mults = {id(t): m for t, m in tp.grad_mults}
    gammas = []
    for _, p in trunk_params(net2, "t2"):
        g = accumulated(o.store, p)
        gammas.append(g)
        assert torch.equal(mults[id(o.store[p.key])], 1 - g)
    head = net2.params_for("t2", net2.tasks["t2"].head)
    want = 1 - torch.cat([g.reshape(-1) for g in gammas]).mean()
    for name in ("weight", "bias"):
        got = mults[id(o.store[head[name][0][0].key])]
        assert got.dim() == 0 and torch.equal(got, want)
    # without SMH the head has no rule; the hard mask uses 1[gamma > threshold]
    for variant in (SPG(backbone=TINY, smh=False), SPG(backbone=TINY, hard_threshold=0.5)):
        o = _outcomes(variant, _stream(2), 1)[-1]
        net2 = variant.prepare(o.net, "t2", 2, (6,))
        o.store.realize(net2)
        mults = {id(t): m for t, m in train_plan(net2, o.store, "t2", 0.1).grad_mults}
        hk = net2.params_for("t2", net2.tasks["t2"].head)["weight"][0][0].key
        if variant.smh and variant.hard_threshold:
            gs = [accumulated(o.store, p) for _, p in trunk_params(net2, "t2")]
            assert torch.equal(mults[id(o.store[hk])], 1 - (torch.cat([g.reshape(-1) for g in gs]) > 0.5).float().mean())
            for (_, p), g in zip(trunk_params(net2, "t2"), gs):
                assert torch.equal(mults[id(o.store[p.key])], 1 - (g > 0.5).float())
        else:
            assert id(o.store[hk]) not in mults


@pytest.mark.parametrize("apply, config", [
    ("grad", TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.0)),
    ("update", TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.01)),
])
def test_saturated_parameters_and_old_heads_are_bit_identical_after_the_next_task(apply, config):
    """Spec §7: gamma = 1 keeps a parameter bit-identical (plain SGD through the gradient; with
    momentum and weight decay through the update rule); old heads never change."""
    spg, s = SPG(backbone=TINY, apply=apply), _stream(2)
    o1 = _outcomes(spg, s, 1, config)[-1]
    net, store = o1.net, o1.store
    saturated = {}
    for n, p in trunk_params(net, "t1"):
        ref = p.annotations[IMPORTANCE]
        g = store[ref.key].clone()
        mask = torch.zeros_like(g, dtype=torch.bool)
        mask.view(-1)[::3] = True  # every third entry saturated
        store.update(ref.key, torch.where(mask, torch.ones_like(g), g))
        saturated[p.key] = (mask | (store[ref.key] == 1), store[p.key].detach().clone())
    head1 = {p.key: store[p.key].detach().clone() for p in net.node(net.tasks["t1"].head).params}
    o2 = _outcomes(spg, s, 2, config, net=net, store=store, start=1)[-1]
    for key, (mask, before) in saturated.items():
        after = o2.store[key].detach()
        assert torch.equal(after[mask], before[mask])
        assert not torch.equal(after[~mask], before[~mask])  # the others did train
    for key, before in head1.items():
        assert torch.equal(o2.store[key], before)


def test_ewc_gi_penalises_instead_of_masking():
    spg = SPG(backbone=TINY, ewc_gi=5.0)
    o = _outcomes(spg, _stream(2), 1)[-1]
    net2 = spg.prepare(o.net, "t2", 2, (6,))
    o.store.realize(net2)
    tp = train_plan(net2, o.store, "t2", 0.1)
    assert tp.grad_mults == [] and tp.update_mults == []
    terms = penalty_terms(net2, o.store, "t2")
    assert len(terms) == 4
    with torch.no_grad():
        for theta, _, _ in terms:
            theta.add_(0.5)
    want = sum(0.5 * 5.0 * (g * (th - a) ** 2).sum() for th, g, a in terms)
    assert torch.allclose(ewc_penalty(*zip(*terms), 5.0), want)
    assert all(torch.equal(g, accumulated(o.store, p)) for (g, (_, p)) in zip([t[1] for t in terms], trunk_params(net2, "t2")))


# ---- options, errors, state ---------------------------------------------------------------------


@pytest.mark.parametrize("opts", [
    {"hard_threshold": 1.5}, {"hard_threshold": 0}, {"importance": "hessian"}, {"chi": "yes"},
    {"ewc_gi": -1.0}, {"apply": "both"}, {"importance_mode": "test"}, {"norm_scope": "layer"},
    {"fisher_norm": "sum"}, {"importance_batch_size": 0}, {"ewc_gi": 5.0, "hard_threshold": 0.5},
])
def test_bad_options_are_one_line_errors(opts):
    with pytest.raises(StrategyError) as e:
        get("spg", **opts)
    assert "\n" not in str(e.value) and "spg" in str(e.value)


def test_a_net_from_another_run_is_refused_naming_the_task():
    o = _outcomes(SPG(backbone=TINY), _stream(2), 1)[-1]
    with pytest.raises(StrategyError, match="t2.*chi=True.*chi=False"):
        SPG(backbone=TINY, chi=False).prepare(o.net, "t2", 2, (6,))
    ft = _outcomes(get("finetune", backbone=TINY), _stream(2), 1)[-1]
    with pytest.raises(StrategyError, match="not built by spg"):
        SPG(backbone=TINY).prepare(ft.net, "t2", 2, (6,))


def test_resume_from_a_snapshot_continues_exactly(tmp_path):
    spg, s = SPG(backbone=TINY), _stream(3)
    full = _outcomes(spg, s, 3)
    mid = _outcomes(spg, s, 2)[-1]
    path = snapshot.save(tmp_path / "t2.jn", mid.net, mid.store)
    net, store = snapshot.load(path)
    resumed = _outcomes(spg, s, 1, net=net, store=store, start=2)[-1]
    assert resumed.row == full[-1].row
    for k, g in _gammas(full[-1].net, full[-1].store, "t3").items():
        assert torch.equal(_gammas(resumed.net, resumed.store, "t3")[k], g)


def test_prune_probe_leaves_the_store_alone():
    s = _stream(1)
    o = _outcomes(SPG(backbone=TINY), s, 1)[-1]
    x, y = s[0].test
    before = {k: o.store[k].clone() for k in o.store}
    base = prune_probe(o.net, o.store, "t1", x, y, fraction=0.0)
    assert base == pytest.approx(o.row[0])
    assert prune_probe(o.net, o.store, "t1", x, y, fraction=1.0, which="highest") <= 1.0
    for which, scope in itertools.product(("lowest", "highest", "random"), ("global", "tensor")):
        prune_probe(o.net, o.store, "t1", x, y, fraction=0.2, which=which, scope=scope)
    assert all(torch.equal(o.store[k], v) for k, v in before.items())
    with pytest.raises(StrategyError, match="fraction"):
        prune_probe(o.net, o.store, "t1", x, y, fraction=2.0)


# ---- blocked fractions and views ------------------------------------------------------------------


def test_blocked_fractions_of_spg_and_hat():
    spg_o = _outcomes(SPG(backbone=TINY), _stream(2), 2)[-1]
    st_ = blocked_stats(spg_o.net, spg_o.store)
    gs = list(route_importance(spg_o.net, spg_o.store, "t2").values())
    n = sum(g.numel() for g in gs)
    assert st_["total"]["params"] == n
    assert st_["total"]["blocked"] == pytest.approx(sum(int((g == 1).sum()) for g in gs) / n)
    assert st_["total"]["> 0.5"] == pytest.approx(sum(int((g > 0.5).sum()) for g in gs) / n)
    assert st_["total"]["mean importance"] == pytest.approx(float(torch.cat([g.reshape(-1) for g in gs]).mean()))
    hat_o = _outcomes(HAT(backbone=TINY), _stream(2), 2)[-1]
    hs = blocked_stats(hat_o.net, hat_o.store)
    net3 = HAT(backbone=TINY).prepare(hat_o.net, "t3", 2, (6,))
    hat_o.store.realize(net3)
    factors = conditioning(net3, hat_o.store, "t3")
    zeros = total = 0
    for n_, names in strategies.hat.conditioned_params(net3, "t3").items():
        for name in names:
            p = net3.params_for("t3", n_)[name][0][0]
            zeros += int((factors[p.key].expand(p.shape) == 0).sum())
            total += p.numel
    assert hs["total"]["params"] == total and hs["total"]["blocked"] == pytest.approx(zeros / total)
    ft = _outcomes(get("finetune", backbone=TINY), _stream(2), 1)[-1]
    assert blocked_stats(ft.net, ft.store) is None and inspect_view(ft.net, ft.store) is None


def test_inspect_and_diff_views():
    outs = _outcomes(SPG(backbone=TINY), _stream(2), 2)
    a, b = outs
    view = method_views(b.net, b.store)["spg"]  # through the entry point, as `jointnet inspect`
    assert [row["node"] for row in view["nodes"]] == ["fc1", "fc2"]
    assert {"mean importance", "blocked", "> 0.5", "> 0.9"} <= set(view["nodes"][0]) & set(view)
    assert 0 < view["head factor (next task)"] <= 1
    text = format_views({"spg": view})
    assert "\n      node: fc1\n" in text and "\n  blocked: " in text  # one line per field
    d = method_diffs(a.net, b.net, a.store, b.store)["spg"]
    assert d["tasks"] == "['t1'] -> ['t1', 't2']"
    assert [row["tensor"] for row in d["tensors"]] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(row["max fall"] == 0 for row in d["tensors"])
    assert any(row["rose"] > 0 for row in d["tensors"])
    assert diff_view(a.net, b.net)["note"].startswith("no tensors")
    assert inspect_view(b.net)["note"].startswith("no tensors")


# ---- the similar-tasks stream ---------------------------------------------------------------------


SIM = {"n_tasks": 3, "n_train_per_task": 200, "n_test_per_task": 100}


def test_similar_stream_shares_classes_on_disjoint_shards_with_one_writer_each():
    s = get_stream("similar-fmnist", seed=1, **SIM)
    assert len(s) == 3
    seen = {"train": set(), "test": set()}
    writers = []
    for t in s:
        assert t.classes == tuple(range(10)) and t.input_shape == (1, 28, 28)
        assert len(t.y_train) == 180 and len(t.y_val) == 20 and len(t.y_test) == 100
        assert torch.bincount(t.y_test, minlength=10).tolist() == [10] * 10
        for split, pool in (("train", "train"), ("val", "train"), ("test", "test")):
            idx = set(t.metadata["source_indices"][split].tolist())
            assert not idx & seen[pool]
            seen[pool] |= idx
        x = t.x_train
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        writers.append(t.metadata["writer"])
    assert len({tuple(w.values()) for w in writers}) == 3
    again = get_stream("similar-fmnist", seed=1, **SIM)
    assert all(torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test) for a, b in zip(s, again))
    other = get_stream("similar-fmnist", seed=2, **SIM)
    assert not torch.equal(s[0].x_train, other[0].x_train)


def test_similar_stream_writers_are_mild_and_exact_at_identity():
    from jointnet.experiments import data

    fm = data.load_fashion_mnist()
    s = get_stream("similar-fmnist", seed=0, **SIM)
    for t in s:
        src = fm["train_images"][t.metadata["source_indices"]["train"]].unsqueeze(1).float() / 255
        w = t.metadata["writer"]
        again = writer_transform(src, angle=w["angle"], shear=w["shear"], scale=w["scale"],
                                 shift=(w["shift_x"], w["shift_y"]), gamma=w["gamma"])
        assert torch.equal(again, t.x_train)
        cos = F.cosine_similarity(src.flatten(1), t.x_train.flatten(1)).mean()
        assert 0.7 < float(cos) < 0.999  # perturbed, yet close to the source
    plain = get_stream("similar-fmnist", seed=0, max_rotation=0.0, max_shear=0.0, max_scale=0.0, max_shift=0.0,
                       max_gamma=1.0, **SIM)
    src = fm["train_images"][plain[0].metadata["source_indices"]["train"]].unsqueeze(1).float() / 255
    assert torch.allclose(plain[0].x_train, src, atol=1e-5)


@pytest.mark.parametrize("opts, match", [
    ({"n_tasks": 0}, "n_tasks"), ({"max_gamma": 0.5}, "max_gamma"), ({"max_rotation": -1}, "max_rotation"),
    ({"n_tasks": 7, "n_test_per_task": 2000}, "disjoint"), ({"n_train_per_task": 5}, "n_train_per_task"),
])
def test_similar_stream_bad_options(opts, match):
    with pytest.raises(StreamError, match=match):
        get_stream("similar-fmnist", **opts)
