"""PAR: the relatedness functions (properties), cells and expert rewrites, the MDL update, and
the spec §10 invariants on small end-to-end runs over CTrL-style streams (Fashion-MNIST)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jointnet.errors import JointNetError, StrategyError
from jointnet.execution.compile import compile_net
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import run_tasks
from jointnet.experiments.strategy import TaskRun, get
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph.check import check
from jointnet.graph.net import JointNet
from jointnet.graph.shapes import task_shapes
from jointnet.persistence import snapshot
from jointnet.persistence.views import method_views, param_counts
from strategies import par as par_mod
from strategies.par import PAR, par_view, stream_distances
from strategies.par_cells import (
    DARTS_V2, OPS, Genotype, add_expert, clone_expert_architecture, experts, share_expert,
)
from strategies.par_relatedness import (
    ResNet18, build_extractor, class_prototypes, decide, group_scores, heatmap_svg, np_kl,
    pair_distance, simulate_groups, squash,
)
from strategies.par_search import (
    EDGES, build_supernet, derive_genotype, mdl_delta, mdl_update, path_view, sample_ops,
)

# ---- relatedness: pure functions ---------------------------------------------------------------


def _task(seed: int, n: int, d: int, k: int, spread: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * spread
    f = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return f, y, class_prototypes(f, y, k)


@settings(max_examples=40)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 30), d=st.integers(1, 8), k=st.integers(1, 4))
def test_np_kl_of_a_task_against_itself_is_zero(seed, n, d, k):
    f, y, P = _task(seed, n, d, k)
    assert np_kl(f, y, P, P) == 0.0  # nu <= rho for every sample: all class terms clip to 0
    assert np_kl(f, y, P, P, clip=False) <= 1e-12


@settings(max_examples=40)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 30), d=st.integers(1, 8), k=st.integers(1, 4),
       clip=st.booleans())
def test_np_kl_grows_as_the_old_prototypes_move_away(seed, n, d, k, clip):
    f, y, P = _task(seed, n, d, k)
    _, _, old = _task(seed + 1, n, d, k)
    # Moving the old prototypes along a new axis moves them away from every sample.
    zero = torch.zeros(n, 1, dtype=torch.float64)
    fz, Pz = torch.cat([f, zero], 1), torch.cat([P, torch.zeros(k, 1, dtype=torch.float64)], 1)
    values = [np_kl(fz, y, Pz, torch.cat([old, torch.full((k, 1), t, dtype=torch.float64)], 1), clip=clip)
              for t in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))


def test_np_kl_sums_clipped_class_terms():
    f = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    y = torch.tensor([0, 0, 1, 1])
    own = class_prototypes(f, y, 2)  # 1 and 11: rho = 1 everywhere
    old = torch.tensor([[1.0], [100.0]])  # class 0 sits on it, class 1 is 10 and 12 away... min is 9/11
    want1 = (math.log(9.0) + math.log(11.0)) / 2
    assert np_kl(f, y, own, old) == pytest.approx(0.0 + want1)
    near = torch.tensor([[1.5], [11.0]])  # class 0: nu = 1.5, 0.5 -> negative mean, clipped
    assert np_kl(f, y, own, near) == 0.0
    assert np_kl(f, y, own, near, clip=False) == pytest.approx((math.log(1.5) + math.log(0.5)) / 2)


@given(a=st.floats(0, 20), b=st.floats(0, 20))
def test_squash_is_monotone_and_bounded(a, b):
    lo, hi = min(a, b), max(a, b)
    assert 0.0 <= squash(lo) <= squash(hi) < 1.0 or hi > 18  # 1 - e^-40 rounds to 1.0
    assert squash(lo) <= lo


def test_squash_is_the_identity_below_the_crossing():
    assert squash(0.5) == 0.5 and squash(0.79) == 0.79
    assert squash(0.8) == pytest.approx(1 - math.exp(-1.6))
    assert pair_distance(0.0) == 1.0 and pair_distance(0.0, zero_to_one=False) == 0.0


def test_group_scores_orders_and_decision():
    raw = {"a": 0.1, "b": 0.3, "c": 5.0}
    groups = {"e1": ["a", "b"], "e2": ["c"]}
    sm = group_scores(raw, groups)
    assert sm["e1"] == pytest.approx(0.2) and sm["e2"] == pytest.approx(squash(5.0))
    ms = group_scores({"a": 0.1, "b": 3.0}, {"e1": ["a", "b"]}, order="mean-squash")
    assert ms["e1"] == pytest.approx(squash(1.55))
    assert group_scores({"a": 0.0}, {"e1": ["a"]})["e1"] == 1.0  # zero-to-one, per pair
    assert decide({"e1": 0.5}, 0.5, 0.75).kind == "regularize"  # thresholds are inclusive
    assert decide({"e1": 0.75}, 0.5, 0.75).kind == "reuse"
    assert decide({"e1": 0.76, "e2": 0.76}, 0.5, 0.75).group == "e1"
    with pytest.raises(JointNetError, match="order"):
        group_scores(raw, groups, order="max")


def test_slong_override_picks_the_nearest_big_group():
    from strategies.par import slong_group

    scores = {"e1": 0.95, "e2": 0.4, "e3": 0.9}
    Q = {"e1": 4000, "e2": 30, "e3": 500}
    assert slong_group(scores, Q, 10) == "e3"  # e2 is nearer but too small (30 < 10 * 10)
    assert slong_group(scores, Q, 3) == "e2"
    assert slong_group(scores, Q, 26) is None  # only tasks of <= 25 samples
    assert slong_group(scores, {"e1": 10, "e2": 10, "e3": 10}, 5) is None


def test_simulate_groups_fewer_experts_as_alpha_rises():
    # t3 repeats t1; t2 and t4 are each moderately close to t1.
    raw = [[], [0.4], [0.01, 0.9], [0.3, 0.7, 0.3]]
    count = [sum(d.kind != "regularize" for d in simulate_groups(raw, a, 0.9)) for a in (0.0, 0.1, 0.35, 0.5, 0.9)]
    assert count == sorted(count, reverse=True) and count[0] == 4 and count[-1] == 1


# ---- the heat map's structure on the CTrL-style streams (no training) ---------------------------------


@pytest.fixture(scope="module")
def distances():
    par = PAR()
    return {name: stream_distances(par, get_stream(name, seed=0)) for name in ("ctrl-minus", "ctrl-out", "ctrl-in")}


def test_default_relatedness_separates_the_ctrl_streams(distances):
    alpha, beta = PAR().alpha, PAR().beta
    for name in ("ctrl-minus", "ctrl-out"):
        D = distances[name]["dist"]
        assert D[5][0] <= alpha, name  # the repeat (S-) / relabelled task (Sout) is near t1
        assert all(D[i][j] > alpha for i in range(1, 5) for j in range(i)), name  # distractors are not
        kinds = [d.kind for d in simulate_groups(distances[name]["raw"], alpha, beta)]
        assert kinds[5] == "regularize" and "regularize" not in kinds[:5]
    D = distances["ctrl-in"]["dist"]
    assert all(D[5][j] > beta for j in range(5))  # the perturbed task is far from everything (Fig 6 Sin)
    for D in (d["dist"] for d in distances.values()):
        assert all(D[i][j] == D[j][i] and D[i][i] == 0 for i in range(6) for j in range(6))


def test_heatmap_svg(tmp_path, distances):
    D = distances["ctrl-minus"]["dist"]
    svg = heatmap_svg(D, [f"t{i + 1}" for i in range(6)], title="ctrl-minus")
    assert svg.count("<rect") == 37 and "ctrl-minus" in svg and svg.rstrip().endswith("</svg>")
    with pytest.raises(JointNetError):
        heatmap_svg([[0.0]], ["a", "b"])


# ---- extractors ---------------------------------------------------------------------------------------


def test_extractors_are_fixed_and_resnet18_loads_a_state_dict(tmp_path):
    x = torch.rand(4, 1, 28, 28)
    a = build_extractor("random-conv", (1, 28, 28), 0)(x)
    assert a.shape == (4, 32 * 7 * 7) and torch.equal(a, build_extractor("random-conv", (1, 28, 28), 0)(x))
    assert not torch.equal(a, build_extractor("random-conv", (1, 28, 28), 1)(x))
    path = tmp_path / "r18.pth"
    torch.save(ResNet18().state_dict(), path)
    with torch.no_grad():
        f = build_extractor(f"resnet18:{path}", (1, 28, 28))(x)
    assert f.shape == (4, 512)
    with pytest.raises(JointNetError, match="cannot read"):
        build_extractor(f"resnet18:{tmp_path / 'missing.pth'}", (1, 28, 28))
    with pytest.raises(StrategyError, match="par.*extractor"):
        get("par", extractor="imagenet")


def test_bad_options_are_one_line_errors():
    for opts in ({"alpha": 0.8, "beta": 0.5}, {"rho": 2.0}, {"order": "max"}, {"channels": 0}, {"search": "darts"}):
        with pytest.raises(StrategyError) as e:
            get("par", **opts)
        assert "\n" not in str(e.value) and "par" in str(e.value)


# ---- cells, genotypes and the expert rewrites ------------------------------------------------------


def test_genotype_validates_and_round_trips():
    assert Genotype.from_dict(DARTS_V2.to_dict()) == DARTS_V2
    with pytest.raises(ValueError, match="unknown op"):
        Genotype(normal=[("conv_7x7", 0)] * 8, reduce=DARTS_V2.reduce)
    with pytest.raises(ValueError, match="node 0 can read inputs 0..1"):
        Genotype(normal=[("skip_connect", 2)] * 8, reduce=DARTS_V2.reduce)
    with pytest.raises(ValueError, match="8"):
        Genotype(normal=DARTS_V2.normal[:6], reduce=DARTS_V2.reduce)


def _two_experts():
    net = add_expert(JointNet.empty(), task="t1", expert="e1", genotype=DARTS_V2, n_classes=2, channels=4,
                     n_cells=3, input_shape=(1, 12, 12))
    net = clone_expert_architecture(net, task="t2", expert="e1", new_expert="e2", n_classes=3)
    return net


def test_expert_rewrites_compose_logged_primitives_and_check():
    net = _two_experts()
    before = {t: nx.ancestors(net.graph, net.tasks[t].head) for t in net.tasks}
    routes = {t: set(net.route(t)) for t in net.tasks}
    net3 = share_expert(net, task="t3", expert="e1", n_classes=2)
    check(net3)
    names = {r.name for r in net3.log}
    assert {"add_task", "add_node", "add_head", "bind", "annotate"} <= names
    # share_expert: the ancestors (and routes) of every old head are unchanged as sets
    assert {t: nx.ancestors(net3.graph, net3.tasks[t].head) for t in net.tasks} == before
    assert {t: set(net3.route(t)) for t in net.tasks} == routes
    assert set(net3.route("t3")) - {"head.t3"} == routes["t1"] - {"head.t1"}
    # the clone: same node layout and genotype, fresh weights (different keys and values)
    e = experts(net3)
    assert e["e2"]["genotype"] == e["e1"]["genotype"] and e["e2"]["cloned_from"] == "e1"
    assert [n.split(".", 1)[1] for n in e["e2"]["nodes"]] == [n.split(".", 1)[1] for n in e["e1"]["nodes"]]
    store = ParamStore(seed=0).realize(net3)
    w1, w2 = store[net3.node("e1.stem").params[0].key], store[net3.node("e2.stem").params[0].key]
    assert w1.shape == w2.shape and not torch.equal(w1, w2)
    out = compile_net(net3, store, ["t1", "t2", "t3"])(torch.rand(5, 1, 12, 12))
    assert out["t2"].shape == (5, 3) and out["t3"].shape == (5, 2)
    with pytest.raises(JointNetError, match="no expert 'e9'"):
        share_expert(net, task="t3", expert="e9", n_classes=2)


def test_expert_cells_have_ordered_ports_and_reductions():
    net = _two_experts()
    # node n3 of the normal cell reads (skip <- input 0, dil_conv <- node 0): ports in genotype order
    assert net.inputs_of("e1.c0.n3", "t1") == ["e1.c0.n3.0.skip_connect.id", "e1.c0.n3.1.dil_conv_3x3.bn"]
    assert net.inputs_of("e1.c0.out", "t1") == [f"e1.c0.n{i}" for i in range(4)]
    assert net.inputs_of("e1.c2.p0.relu", "t1") == ["e1.c0.out"]  # the skip edge cell[k-2] -> cell[k]
    assert net.node("e1.c2.p0.conv").spec.stride == 2  # after a reduction cell
    shapes = task_shapes(net, "t1")
    assert shapes["e1.c0.out"] == (16, 12, 12) and shapes["e1.c1.out"] == (16, 6, 6)
    assert shapes["e1.c2.out"] == (16, 3, 3) and shapes["e1.gap"] == (16,)


def test_supernet_paths_are_views():
    sn = build_supernet((1, 12, 12), 2, channels=4, n_cells=2)
    g = torch.Generator().manual_seed(0)
    p = torch.full((len(EDGES), len(OPS)), 1 / len(OPS))
    view = path_view(sn, sample_ops(p, g).tolist(), sample_ops(p, g).tolist())
    store = ParamStore().realize(sn.net)
    version = sn.net.version
    out = compile_net(sn.net, store, view, cache=False)(torch.rand(3, 1, 12, 12))
    assert out.shape == (3, 2) and sn.net.version == version  # a view rewrites nothing
    # every cell node sums exactly one op per incoming edge
    for k in range(2):
        for i in range(4):
            assert len(sn.net.inputs_of(f"s.c{k}.n{i}", view)) == 2 + i


# ---- MDL ---------------------------------------------------------------------------------------------


@settings(max_examples=25)
@given(seed=st.integers(0, 10**6), acc=st.floats(0, 1))
def test_mdl_update_properties(seed, acc):
    g = torch.Generator().manual_seed(seed)
    shape = (len(EDGES), len(OPS))
    count = torch.randint(0, 4, shape, generator=g).double()
    lastacc = torch.rand(shape, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.rand(shape, generator=g, dtype=torch.float64), 1)
    delta = mdl_delta(count, lastacc)
    assert torch.all(delta.sum(1) == 0)
    sampled = torch.randint(0, len(OPS), (len(EDGES),), generator=g)
    p2, c2, a2 = mdl_update(p, count, lastacc, sampled, acc, eta=0.01)
    rows = torch.arange(len(EDGES))
    assert torch.allclose(p2.sum(1), torch.ones(len(EDGES), dtype=torch.float64)) and bool((p2 > 0).all())
    one_hot = torch.zeros(shape, dtype=torch.float64)
    one_hot[rows, sampled] = 1.0
    assert torch.equal(c2 - count, one_hot)
    assert torch.all(a2[rows, sampled] == acc)
    # softmax is monotone: the order of p + eta * delta is kept
    z = p + 0.01 * mdl_delta(c2, a2)
    for e in range(len(EDGES)):
        for i in range(len(OPS)):
            for j in range(len(OPS)):
                if z[e, i] > z[e, j]:
                    assert p2[e, i] >= p2[e, j]


def test_mdl_rewards_the_rarely_sampled_more_accurate_op_and_derivation():
    count = torch.zeros(len(EDGES), len(OPS), dtype=torch.float64)
    acc = torch.zeros_like(count)
    count[0, 4], acc[0, 4] = 1, 0.9  # sep_conv: sampled once, 0.9
    count[0, 1], acc[0, 1] = 2, 0.5  # max_pool: twice, 0.5
    d = mdl_delta(count, acc)
    assert d[0, 4] > 0 > d[0, 1]
    p = torch.full_like(count, 1 / len(OPS))
    p2, _, _ = mdl_update(p, count, acc, torch.full((len(EDGES),), 5), 0.1)
    assert p2[0, 4] > p2[0, 1]
    p = torch.full_like(count, 1 / len(OPS))
    p[:, 0] = 0.9  # `none` is never derived
    p[0, 4] = p[1, 5] = 0.5
    g = derive_genotype(p, p)
    assert g.normal[0] == ("sep_conv_3x3", 0) and g.normal[1] == ("dil_conv_3x3", 1)
    assert all(op != "none" for op, _ in g.normal + g.reduce)


# ---- end to end: the spec §10 invariants -------------------------------------------------------------

TINY = dict(channels=4, n_cells=1, search_epochs=1, search_channels=4, alpha=0.5)
CONFIG = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=0.002)


def _run(stream, **opts):
    """[(outcome, its store's tensors then, its snapshot bytes then)] per task."""
    strategy = get("par", **{**TINY, **opts})
    outcomes = []
    for o in run_tasks(strategy, stream, CONFIG, seed=0, echo=None):
        tensors = {k: t.detach().clone() for k, t in o.store.tensors.items()}
        outcomes.append((o, tensors, snapshot.dumps(o.net, o.store)))
    return outcomes


@pytest.fixture(scope="module")
def runs():
    small = dict(large=(40, 20), small=(12, 10), n_test_per_class=20)
    return {
        # t1 searched; t2..t5 searched; t6 = t1 again with less data: head-only in t1's group
        "minus": _run(get_stream("ctrl-minus", seed=0, **small)),
        # beta = 1: every distractor reuses a cell; t6 = t1 again with more data: LwF in t1's group
        "plus": _run(get_stream("ctrl-plus", seed=0, **small), beta=1.0),
    }


def test_runs_take_every_path(runs):
    paths = {name: [o.net.tasks[o.task].annotations["par"]["path"] for o, *_ in out] for name, out in runs.items()}
    assert paths["minus"] == ["search"] * 5 + ["head-only"]
    assert paths["plus"] == ["search"] + ["reuse-cell"] * 4 + ["lwf"]
    final = runs["plus"][-1][0].net
    assert par_mod._state(final)["searches"] == 1 and len(experts(final)) == 5
    assert experts(final)["e1"]["tasks"] == ["t1", "t6"]


def test_a_task_never_changes_tensors_of_nodes_off_its_route(runs):
    for out in runs.values():
        for (prev, before, _), (o, after, _) in zip(out, out[1:]):
            mine = set(o.net.route(o.task))
            for n in prev.net.nodes:
                if n in mine:
                    continue
                node = prev.net.node(n)
                for p in node.params:
                    assert torch.equal(before[p.key], after[p.key]), (o.task, n, p.name)


def test_head_only_keeps_the_expert_bit_exact_and_af_is_zero_for_allocated_groups(runs):
    (_, before, _), (o, after, _) = runs["minus"][-2], runs["minus"][-1]
    for n in o.net.route("t6"):
        if n != "head.t6":
            for p in o.net.node(n).params:
                assert torch.equal(before[p.key], after[p.key]), n
    for name, out in runs.items():
        R = [o.row for o, *_ in out]
        final = out[-1][0].net
        for j, t in enumerate(final.tasks):
            group = experts(final)[final.tasks[t].annotations["par"]["expert"]]["tasks"]
            if len(group) == 1 or name == "minus":  # allocation-only group, or only head-only joins
                assert R[-1][j] == R[j][j], (name, t)


def test_shared_nodes_belong_to_one_expert_and_parameters_add_up(runs):
    for out in runs.values():
        net, store = out[-1][0].net, out[-1][0].store
        check(net)
        table = experts(net)
        owner = {}
        for e, rec in table.items():
            for n in rec["nodes"]:
                assert n not in owner, f"{n} in {owner.get(n)} and {e}"
                owner[n] = e
        for n in net.nodes:
            users = net.users(n)
            if len(users) > 1 and net.node(n).kind != "Input":
                assert set(users) <= set(table[owner[n]]["tasks"])
        expert_numel = sum(store[p.key].numel() for rec in table.values() for n in rec["nodes"]
                           for p in net.node(n).params if not p.buffer)
        head_numel = sum(store[p.key].numel() for t in net.tasks for p in net.node(net.tasks[t].head).params)
        # the count is experts + heads: the extractor's whitening and the prototypes are not in it
        assert param_counts(net)["total"] == expert_numel + head_numel


def test_state_is_in_the_snapshot_and_a_resumed_run_is_identical(runs, tmp_path):
    out = runs["plus"]
    o4, tensors4, data = out[3]
    net, store = snapshot.loads(data)
    assert net == o4.net and all(torch.equal(store[k], tensors4[k]) for k in store.keys_of(net))
    assert par_mod._state(net) == par_mod._state(o4.net)
    stream = get_stream("ctrl-plus", seed=0, large=(40, 20), small=(12, 10), n_test_per_class=20)
    strategy = get("par", **{**TINY, "beta": 1.0})
    resumed = list(run_tasks(strategy, stream, CONFIG, seed=0, net=net, store=store, start=4, echo=None))
    final, tensors, _ = out[-1]
    assert resumed[-1].row == final.row
    assert resumed[-1].net.structure() == final.net.structure()
    for k, t in tensors.items():
        assert torch.equal(resumed[-1].store[k], t), k


def test_inspect_view_and_heatmap_command(runs, tmp_path, capsys):
    o = runs["minus"][-1][0]
    summ = par_mod.par_summary(o.net)
    assert summ["tasks"]["t6"]["path"] == "head-only" and summ["tasks"]["t6"]["expert"] == "e1"
    assert len(summ["tasks"]["t6"]["distances"]) == 6 and summ["searches"] == 5
    lines = method_views(o.net, o.store)["par"]
    assert any(line.startswith("t6") and "head-only" in line for line in lines)
    assert par_view(JointNet.empty()) is None
    snap = tmp_path / "final.jn"
    snapshot.save(snap, o.net, o.store)
    assert par_mod.main(["heatmap", str(snap), "-o", str(tmp_path / "map.svg")]) == 0
    svg = (tmp_path / "map.svg").read_text()
    assert svg.count("<rect") == 37 and "t6 (e1)" in svg


def test_step_refuses_a_net_it_did_not_build():
    stream = get_stream("ctrl-minus", seed=0, large=(8, 4), small=(4, 2), n_test_per_class=2)
    from jointnet.graph import backbones

    net = backbones.build(backbones.mlp(784, [4]), task="x", n_classes=2)
    run = TaskRun(stream.tasks[0], 0, stream, ParamStore(), CONFIG, strategy="par")
    with pytest.raises(StrategyError, match=r"par.*t1.*not built by PAR"):
        PAR().step(net, run)


# ---- the regularization path: which training, and the distillation ----------------------------------


def test_join_path_follows_rho():
    from strategies.par import join_path

    assert join_path(24, 80, 0.5) == "head-only"  # the code's rho: 24 < 40
    assert join_path(24, 80, 0.1) == "lwf"  # the paper's rho: 24 >= 8
    assert join_path(40, 80, 0.5) == "lwf"  # strict <
    assert join_path(5, 10_000, 0.0) == "lwf"


def test_lwf_path_trains_the_expert_and_distils_from_a_frozen_teacher(runs):
    from strategies.lwf import kd_loss

    (_, before, _), (o, after, data) = runs["plus"][-2], runs["plus"][-1]
    assert o.net.tasks["t6"].annotations["par"]["path"] == "lwf"
    e1 = [p.key for n in experts(o.net)["e1"]["nodes"] for p in o.net.node(n).params if not p.buffer]
    assert any(not torch.equal(before[k], after[k]) for k in e1)  # the shared expert moved
    net, store = snapshot.loads(data)
    hooks = PAR(T=2.0, lam=0.7)._lwf_hooks(net, store, "t6", ["t1"])
    x = get_stream("ctrl-plus", seed=0, large=(40, 20), small=(12, 10), n_test_per_class=20).tasks[5].x_val[:8]
    info: dict = {}
    new = hooks.forward(SimpleNamespace(training=False), x, info, None)  # what the trainer calls
    assert new.shape == (8, 2) and set(info["lwf.old_logits"]) == {"t1"}
    teacher_before = hooks.teacher(x)["t1"].detach().clone()
    assert float(hooks.extra_loss(None, x, None, None, info).detach()) == 0.0  # the teacher is the student's copy
    # moving the student's expert weights moves its old-head logits, not the frozen teacher's
    k = net.node("e1.stem").params[0].key
    store.update(k, store[k] * 1.5 + 0.1)
    info = {}
    hooks.forward(SimpleNamespace(training=False), x, info, None)
    assert torch.equal(hooks.teacher(x)["t1"], teacher_before)
    got = hooks.extra_loss(None, x, None, None, info)
    want = 0.7 * kd_loss(info["lwf.old_logits"]["t1"], teacher_before, 2.0, t2_scale=False)
    assert float(got.detach()) > 0 and torch.allclose(got, want)
    lo_t = torch.log_softmax(teacher_before / 2, -1)  # KL(teacher || student) at T = 2, no T^2
    manual = (lo_t.exp() * (lo_t - torch.log_softmax(info["lwf.old_logits"]["t1"] / 2, -1))).sum(1).mean()
    assert torch.allclose(got, 0.7 * manual, atol=1e-6)

# ---- the CLI: inspect and the heat-map command -----------------------------------------------------


def test_jointnet_inspect_and_python_m_heatmap(runs, tmp_path, capsys):
    import subprocess
    import sys

    from jointnet.cli import main as cli

    o = runs["minus"][-1][0]
    snap = tmp_path / "final.jn"
    snapshot.save(snap, o.net, o.store)
    assert cli(["inspect", str(snap)]) == 0
    text = capsys.readouterr().out
    assert "par:" in text and "squashed task distances" in text
    assert any(line.split()[:4] == ["t6", "e1", "regularize", "head-only"] for line in text.splitlines())
    r = subprocess.run([sys.executable, "-m", "strategies.par", "heatmap", str(snap), "-o", str(tmp_path / "m.svg")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "m.svg").read_text().count("<rect") == 37
    bad = tmp_path / "missing" / "m.svg"
    assert par_mod.main(["heatmap", str(snap), "-o", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "cannot write the heat map" in err and err.count("\n") == 1
    assert par_mod.main(["heatmap", str(tmp_path / "nope.jn"), "-o", str(tmp_path / "x.svg")]) == 1


def test_module_doctests():
    import doctest

    import strategies.par_cells
    import strategies.par_relatedness
    import strategies.par_search

    for mod in (par_mod, strategies.par_cells, strategies.par_relatedness, strategies.par_search):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__
