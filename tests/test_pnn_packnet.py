"""Progressive Nets and PackNet: graph structure, ownership, train policy (and PackNet's training
arithmetic against the pre-Core-2 hooks, bit for bit), zero forgetting, runner and resume."""

from __future__ import annotations

import itertools
import json
import shutil

import attrs
import pytest
import torch
from torch import nn

from jointnet import backbones, snapshot
from jointnet.errors import JointNetError, RewriteError, StrategyError
from jointnet.execution.compile import compile_net
from jointnet.execution.optim import train_plan
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import RunSpec, resume, run, run_tasks
from jointnet.experiments.strategy import get
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import Hooks, TrainConfig, train_task
from jointnet.graph import (
    add_head, add_node, add_task, bind, clear_grad_rules, clone_node, freeze, route_through, set_grad_rule,
    track_owners, unfreeze,
)
from jointnet.graph.check import check
from jointnet.graph.draft import replay
from jointnet.graph.net import GradRule, JointNet, OwnerMap
from strategies.packnet import (
    FREE, MASK, PackNet, claim, live_mask, owner_tensor, owner_value, prune_free, retrain_epochs,
    trunk_nodes,
)
from strategies.pnn import OUTPUTS, PNN, add_progressive_column, column_items

SHAPE = (1, 8, 8)
CONV_BN = [
    {"kind": "input", "shape": SHAPE},
    {"kind": "conv", "out_ch": 4, "padding": 1, "bias": False}, {"kind": "bn"}, {"kind": "relu"},
    {"kind": "maxpool"},
    {"kind": "conv", "out_ch": 6, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool"},
    {"kind": "flatten"}, {"kind": "linear", "out_f": 12}, {"kind": "relu"},
]
MLP = [{"kind": "input", "shape": SHAPE}, {"kind": "flatten"}] + backbones.mlp(64, (24, 16))[1:]
# Momentum and weight decay on purpose: frozen weights must not move even so.
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3)


def _stream(n_tasks: int = 3):
    return get_stream("synthetic", seed=0, n_tasks=n_tasks, input_shape=SHAPE, n_train_per_class=16,
                      n_val_per_class=4, n_test_per_class=8)


def _probe(n: int = 8) -> torch.Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _out(net: JointNet, store: ParamStore, task: str, x: torch.Tensor) -> torch.Tensor:
    m = compile_net(net, store, task)
    m.eval()
    return m(x).clone()


def _drive(strategy, stream, config=CONFIG, after=None) -> tuple[JointNet, ParamStore]:
    """The runner's loop (`run_tasks`), without files; `after(net, store, i)` runs after every
    task. Returns the last net and the store."""
    net = store = None
    for o in run_tasks(strategy, stream, config, seed=0, echo=None):
        net, store = o.net, o.store
        check(net)
        if after is not None:
            after(net, store, o.index)
    return net, store


def _assert_no_forgetting(strategy, stream=None, config=CONFIG) -> tuple[JointNet, ParamStore]:
    """Every finished task's eval outputs on a probe stay bit-identical through later tasks."""
    stream = stream or _stream()
    x = _probe()
    first: dict[str, torch.Tensor] = {}

    def after(net, store, i):
        for t in list(net.tasks)[: i + 1]:
            out = _out(net, store, t, x)
            if t not in first:
                first[t] = out
            else:
                assert torch.equal(out, first[t]), f"task {t} changed after training task {i + 1}"

    net, store = _drive(strategy, stream, config, after)
    assert set(first) == {"t1", "t2", "t3"}
    return net, store


# ---- route_through (the core rewrite PNN needs) ---------------------------------------------


def _two_layer():
    return backbones.build(backbones.mlp(4, [8, 8]), task="t1", n_classes=2)


def test_route_through_routes_the_ancestors_of_upto_and_logs():
    net = add_task(_two_layer(), task="t2")
    out = route_through(net, task="t2", like="t1", upto=["relu1"])
    assert out.route("t2") == ["input", "fc1", "relu1"]
    assert out.log[-1].name == "route_through" and out.version == net.version + 1
    assert replay(out.log) == out
    # Nothing new to route: the same net back, unlogged.
    assert route_through(out, task="t2", like="t1", upto=["fc1"]) is out
    # The routed nodes are shared: no parameters were added.
    assert {p.key for n in out.nodes for p in out.node(n).params} == {
        p.key for n in net.nodes for p in net.node(n).params}


def test_route_through_errors_name_task_and_node():
    net = add_task(_two_layer(), task="t2")
    with pytest.raises(RewriteError, match="does not route through 'nope'|no node 'nope'"):
        route_through(net, task="t2", like="t1", upto=["nope"])
    with pytest.raises(RewriteError, match="head"):
        route_through(net, task="t2", like="t1", upto=["head.t1"])
    with pytest.raises(RewriteError, match="itself"):
        route_through(net, task="t2", like="t2", upto=["fc1"])
    with pytest.raises(RewriteError, match="closed") as e:
        route_through(net, task="t1", like="t2", upto=["fc1"])
    assert e.value.task == "t1" and e.value.rewrite == "route_through"
    # A route that already reaches a node from elsewhere cannot be merged into `like`'s.
    net2 = bind(add_task(backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2), task="t2"),
                task="t2", to="t1")
    net2 = clone_node(add_head(net2, task="t2", n_classes=2), node="fc1", task="t2")
    net3 = route_through(add_task(net2, task="t3"), task="t3", like="t2", upto=["relu1"])
    assert net3.route("t3") == ["input", "fc1.t2", "relu1"]
    with pytest.raises(RewriteError, match="already routes into 'relu1'"):
        route_through(net3, task="t3", like="t1", upto=["relu1"])
    # Routed nodes that end up feeding nothing on the closed route break the route-end invariant.
    open_ = route_through(add_task(_two_layer(), task="t2"), task="t2", like="t1", upto=["relu2"])
    open_ = add_node(open_, node="side", spec={"kind": "linear", "out_f": 3}, inputs=["relu1"], task="t2")
    with pytest.raises(RewriteError, match="ends in"):
        add_head(open_, task="t2", n_classes=2)
    with pytest.raises(RewriteError, match="would feed nothing"):
        add_head(open_, task="t2", n_classes=2, after="side")


# ---- PNN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [CONV_BN, MLP], ids=["conv_bn", "mlp"])
def test_pnn_laterals_from_every_earlier_column(layers):
    net = JointNet.empty()
    names = ["t1", "t2", "t3", "t4"]
    for t in names:
        net = add_progressive_column(net, layers, t, 2)
        check(net)
    _, items = column_items(layers)
    weighted = [(n, ins[0]) for n, kind, _, ins in items if kind in ("Conv2d", "Linear")]
    for k, t in enumerate(names):
        outs = net.tasks[t].annotations[OUTPUTS]
        assert set(outs) == {name for name, *_ in items}  # every backbone layer, to its node
        for j in names[:k]:
            theirs = net.tasks[j].annotations[OUTPUTS]
            for layer, src in weighted[1:]:  # the first layer reads the shared input: no laterals
                lat = f"{layer}.{t}.lat.{j}"
                assert net.graph.has_edge(theirs[src], lat), (t, j, layer)
                assert net.graph.has_edge(lat, f"{layer}.{t}.add"), (t, j, layer)
                assert t in net.graph.edges[theirs[src], lat]["tasks"]
            # and into the head, from the earlier column's top features
            assert net.graph.has_edge(theirs[items[-1][0]], f"head.{t}.lat.{j}")
            assert net.graph.has_edge(f"head.{t}.lat.{j}", f"head.{t}.add")
        # own output on port 0 of every merge
        for layer, _ in weighted[1:]:
            if k:
                assert net.inputs_of(f"{layer}.{t}.add", t)[0] == f"{layer}.{t}"
        # earlier columns' parameter nodes are frozen for t; t's own are not
        for n in net.route(t):
            node = net.node(n)
            if node.params:
                assert net.policy_for(t, n).frozen == (node.created_by != t), (t, n)
    # The first layer sees the shared input: no laterals into it.
    first_layer = weighted[0][0]
    assert not any(n.startswith(f"{first_layer}.t2.lat") for n in net.nodes)
    # Earlier routes are untouched by later columns.
    one = add_progressive_column(JointNet.empty(), layers, "t1", 2)
    assert {(u, v) for u, v, _ in one.edges("t1")} == {(u, v) for u, v, _ in net.edges("t1")}


def test_pnn_mlp_adapter_and_1x1_laterals():
    net = JointNet.empty()
    opts = PNN(adapter="mlp", lateral_conv="1x1")
    for t in ("t1", "t2", "t3"):
        net = add_progressive_column(net, CONV_BN, t, 2, opts)
        check(net)
    assert net.inputs_of("conv2.t3.lat.cat", "t3") == ["pool1", "pool1.t2"]
    assert net.node("conv2.t3.lat.v").spec.kernel == 1 and net.node("conv2.t3.lat.u").spec.kernel == 1
    assert net.inputs_of("conv2.t2.lat.v", "t2") == ["pool1"]  # one earlier column: no concat
    plain = JointNet.empty()
    for t in ("t1", "t2", "t3"):
        plain = check(add_progressive_column(plain, MLP, t, 2, PNN(head_laterals=False)))
    assert plain.inputs_of("head.t3", "t3") == ["relu2.t3"]
    assert not any(".lat." in n and n.startswith("head") for n in plain.nodes)
    with pytest.raises(JointNetError, match="lateral_conv='same'"):
        lenet = backbones.lenet5((1, 28, 28))
        add_progressive_column(add_progressive_column(JointNet.empty(), lenet, "t1", 2), lenet, "t2", 2, opts)


@pytest.mark.parametrize("options", [{"backbone": CONV_BN}, {"backbone": MLP, "adapter": "mlp"}],
                         ids=["conv_bn_linear", "mlp_adapter"])
def test_pnn_finished_tasks_bit_identical(options):
    net, _ = _assert_no_forgetting(get("pnn", **options))
    # BatchNorm of earlier columns: later tasks got their own statistics (copied).
    if options["backbone"] is CONV_BN:
        assert net.node("bn1").param("running_mean", task="t3") is not None


@pytest.mark.parametrize("layers,lineage", [(MLP, "17d05fff7231"), (CONV_BN, "f386127876ca")], ids=["mlp", "conv_bn"])
def test_pnn_logs_the_rewrites_it_always_logged(layers, lineage):
    """Fresh tensors are seeded by keys that include the lineage (a hash of every logged
    rewrite): these are the lineages the pre-Core-2 PNN reached, so a run with the same seed
    gives the same numbers. A change here changes every PNN result."""
    net = JointNet.empty()
    for t in ("t1", "t2", "t3"):
        net = add_progressive_column(net, layers, t, 2)
    assert net.lineage == lineage
    assert "set_grad_rule" not in [r.name for r in net.log]


# ---- PackNet ----------------------------------------------------------------------------------


def test_prune_free_takes_the_smallest_free_weights():
    w = torch.tensor([3.0, -0.5, 0.1, 2.0, -0.2, 0.0])
    owner = torch.tensor([0, 0, 1, 0, 0, 2], dtype=torch.int32)
    assert prune_free(w, owner, 0.5).tolist() == [False, True, False, False, True, False]
    assert not prune_free(w, owner, 0.0).any()
    assert prune_free(w, owner, 1.0).tolist() == [True, True, False, True, True, False]


def test_claim_and_live_mask_by_hand():
    owner = torch.tensor([0, 0, 4, 0, 9], dtype=torch.int32)
    cut = torch.tensor([False, True, False, False, False])
    new = claim(owner, cut, 7)
    assert new.tolist() == [7, FREE, 4, 7, 9] and new.dtype == torch.int32
    assert live_mask(new, 7).tolist() == [True, False, True, True, False]  # 9: a later task's
    assert retrain_epochs(None, TrainConfig(epochs=1)) == 1 and retrain_epochs(3, TrainConfig(epochs=0)) == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_owned_rule_and_bias_freeze_keep_weights_bit_exact(optimizer):
    """The policy PackNet uses, on its own: the "owned" freeze rule keeps the weights another
    task owns bit-exact, a per-parameter freeze keeps the bias, under momentum / Adam and weight
    decay; the free weights train."""
    net = backbones.build(backbones.mlp(5, [6]), task="t1", n_classes=2)
    net = track_owners(net, node="fc1", param="weight", granularity="param")
    net = set_grad_rule(net, nodes="fc1", params="weight", kind="freeze", provider="owned")
    net = freeze(net, nodes="fc1", task="t1", params=["bias"])
    store = ParamStore(seed=0).realize(net)
    w, b = (net.node("fc1").param(n) for n in ("weight", "bias"))
    g = torch.Generator().manual_seed(0)
    owned = torch.rand(6, 5, generator=g) < 0.5
    mine = net.tasks["t1"].added_at
    store.update(w.owners.key, torch.where(owned, mine + 1, torch.where(torch.rand(6, 5, generator=g) < 0.5, mine, FREE)))
    before_w, before_b = store[w.key].detach().clone(), store[b.key].detach().clone()
    x, y = torch.randn(24, 5, generator=g), torch.randint(0, 2, (24,), generator=g)
    config = TrainConfig(epochs=3, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.1, optimizer=optimizer)
    train_task(net, store, "t1", (x, y), None, config)
    assert torch.equal(store[w.key].detach()[owned], before_w[owned])
    assert torch.equal(store[b.key].detach(), before_b)
    assert not torch.equal(store[w.key].detach()[~owned], before_w[~owned])  # the free ones did train


def test_packnet_policy_is_owner_maps_rules_and_frozen_biases_and_masks():
    p = PackNet(backbone=CONV_BN)
    net = JointNet.empty()
    for t in ("t1", "t2", "t3"):
        net = p.prepare(net, t, 2, SHAPE)
    check(net)
    trunk = trunk_nodes(net)
    assert trunk == ["conv1", "conv2", "fc1"]
    names = [r.name for r in net.log]
    # Logged once, by the first task, for every task: owner maps, the owned rule, the mask freeze.
    assert names.count("track_owners") == 3 and names.count("set_grad_rule") == 1
    rule = GradRule("freeze", provider="owned")
    store = ParamStore(seed=0).realize(net)
    for n in trunk:
        w = net.node(n).param("weight")
        assert w.owners == OwnerMap(w.owners.key, "param")
        assert store[w.owners.key].dtype == torch.int32 and not store[w.owners.key].any()
    for i, t in enumerate(net.tasks):
        for n in trunk:
            pol = net.policy_for(t, n)
            assert pol.param("weight").rules == (rule,) and not pol.param("weight").frozen
            assert pol.param(f"mask:{MASK}").frozen
            if "bias" in net.node(n).spec.params():  # conv1 has none
                assert bool(pol.param("bias").frozen) == (i > 0)  # biases train with the first task only
        tp = train_plan(net, store, t, 0.1)
        trained = {id(x) for x in tp.params}
        for n in trunk:
            node = net.node(n)
            assert id(store[node.param("weight").key]) in trained
            assert id(store[node.mask(t, kind=MASK).key]) not in trained
            if node.param("bias") is not None:
                assert (id(store[node.param("bias").key]) in trained) == (i == 0)
        assert tp.freezes == []  # every owner map is still all free: nothing to hold back
    # Once another task owns entries, the owned rule freezes exactly those.
    w = net.node("fc1").param("weight")
    owners = torch.zeros(w.shape, dtype=torch.int32)
    owners[0] = owner_value(net, "t1")
    store.update(w.owners.key, owners)
    tp = train_plan(net, store, "t2", 0.1)
    assert [id(x) for x, _, _ in tp.freezes] == [id(store[w.key])]
    assert torch.equal(tp.freezes[0][1], owners != 0)
    assert owner_value(net, "t1") < owner_value(net, "t2") < owner_value(net, "t3")
    assert owner_value(net, "t1") > FREE


class _PreCore2Hooks(Hooks):
    """The pre-Core-2 `PackNetHooks`, re-implemented from the old code: zero the gradient of the
    weights earlier tasks own (``owner != 0 and owner < me``), drop the gradients of the trunk
    biases (after task 1) and of the live masks, and copy the owned weights back after the step."""

    def __init__(self, net, store, task):
        me = owner_value(net, task)
        self.frozen, self.no_grad = [], []
        for n in trunk_nodes(net):
            node = net.node(n)
            owner = owner_tensor(net, store, n)
            w, m = store[node.param("weight").key], (owner != FREE) & (owner < me)
            if bool(m.any()):
                self.frozen.append((w, m, w.detach().clone()))
            if net.task_order(task) > 0 and node.param("bias") is not None:
                self.no_grad.append(store[node.param("bias").key])
            self.no_grad.append(store[node.mask(task, kind=MASK).key])

    def transform_grads(self, module, info):
        for w, m, _ in self.frozen:
            if w.grad is not None:
                w.grad.masked_fill_(m, 0.0)
        for t in self.no_grad:
            t.grad = None

    @torch.no_grad()
    def after_step(self, module, info):
        for w, m, saved in self.frozen:
            w.copy_(torch.where(m, saved, w))


@torch.no_grad()
def _old_prune(net, store, task, fraction, free_init):
    """The pre-Core-2 `PackNet.prune_task`, re-implemented from the old code: weights and masks
    written in place (the old code wrote behind the store's back; so does this test's twin)."""
    me = owner_value(net, task)
    for n in trunk_nodes(net):
        node = net.node(n)
        w = store[node.param("weight").key]
        owner = store[node.param("weight").owners.key]
        cut = prune_free(w, owner, fraction)
        new = torch.where(owner == FREE, torch.full_like(owner, me), owner)
        new = torch.where(cut, torch.full_like(owner, FREE), new)
        if free_init == "zero":
            w.masked_fill_(cut, 0.0)
        mask = store[node.mask(task, kind=MASK).key]
        mask.copy_(((new != FREE) & (new <= me)).to(mask.dtype))
        owner.copy_(new)


def _twin(store: ParamStore) -> ParamStore:
    """An independent store holding copies of `store`'s tensors (Parameters stay Parameters)."""
    copies = {k: nn.Parameter(v.detach().clone()) if isinstance(v, nn.Parameter) else v.detach().clone()
              for k, v in store.tensors.items()}
    return ParamStore(seed=store.seed, device=store.device).load(copies)


@pytest.mark.parametrize("optimizer,free_init", [("sgd", "zero"), ("adam", "keep")])
def test_packnet_training_arithmetic_is_the_pre_core2_hooks_bit_for_bit(optimizer, free_init):
    """Task 2 trained, pruned and retrained under the policy (owned rule, frozen biases and
    masks, `ParamStore.update`) and under the old hooks and in-place pruning on a net without
    that policy: every tensor is bit-identical after each phase."""
    p = PackNet(backbone=CONV_BN, free_init=free_init, prune=[0.5, 0.75])
    stream = _stream(2)
    config = attrs.evolve(CONFIG, optimizer=optimizer)
    first = next(run_tasks(p, stream, config, seed=0, echo=None))  # t1 trained, pruned, committed
    task = stream.tasks[1]
    net = p.prepare(first.net, task.name, task.n_classes, task.input_shape)
    new_store = first.store.realize(net)
    old_store = _twin(new_store)
    trunk = trunk_nodes(net)
    # The old net: the same tensors without the policy (the old code did all of it in hooks).
    old_net = clear_grad_rules(net, nodes=trunk, params="weight")
    old_net = unfreeze(old_net, nodes=trunk, params=[f"mask:{MASK}"])
    old_net = unfreeze(old_net, nodes=[n for n in trunk if net.node(n).param("bias") is not None], task="t2",
                       params=["bias"])
    plan = train_plan(old_net, old_store, "t2", config.lr)
    assert plan.freezes == [] and len(plan.params) > len(train_plan(net, new_store, "t2", config.lr).params)
    owned_before = {n: owner_tensor(net, new_store, n) != FREE for n in trunk}
    assert all(bool(m.any()) for m in owned_before.values())  # task 1 owns weights: the rules matter
    keep = {n: new_store[net.node(n).param("weight").key].detach().clone() for n in trunk}

    def same(phase):
        assert set(new_store.tensors) == set(old_store.tensors)
        for k in new_store:
            assert torch.equal(new_store[k], old_store[k]), (phase, k)

    res_new = train_task(net, new_store, "t2", task.train, task.val, config, None, task_index=1)
    res_old = train_task(old_net, old_store, "t2", task.train, task.val, config,
                         _PreCore2Hooks(old_net, old_store, "t2"), task_index=1)
    assert res_new.history == res_old.history
    same("train")
    p.prune_task(net, new_store, "t2", p.fraction(1))
    _old_prune(old_net, old_store, "t2", p.fraction(1), free_init)
    same("prune")
    again = attrs.evolve(config, epochs=1)
    train_task(net, new_store, "t2", task.train, task.val, again, None, task_index=1)
    train_task(old_net, old_store, "t2", task.train, task.val, again, _PreCore2Hooks(old_net, old_store, "t2"),
               task_index=1)
    same("retrain")
    for n in trunk:  # not vacuous: task 1's weights are exact, task 2's moved
        w = new_store[net.node(n).param("weight").key].detach()
        m = owned_before[n]
        assert torch.equal(w[m], keep[n][m]) and not torch.equal(w[~m], keep[n][~m]), n


@pytest.mark.parametrize("options", [
    {"backbone": MLP},
    {"backbone": CONV_BN, "bn": "freeze", "free_init": "keep", "prune": [0.5, 0.75]},
    {"backbone": CONV_BN, "retrain_epochs": 0},
], ids=["mlp", "conv_bn_freeze_keep", "no_retrain"])
def test_packnet_finished_tasks_bit_identical(options):
    _assert_no_forgetting(get("packnet", **options))


@pytest.mark.parametrize("prune", [0.5, [0.25, 0.75]])
def test_packnet_ownership_nested_disjoint_and_pruned_fraction(prune):
    strategy = PackNet(backbone=CONV_BN, prune=prune)
    owners: list[dict[str, torch.Tensor]] = []

    def after(net, store, i):
        owners.append({n: owner_tensor(net, store, n).clone() for n in trunk_nodes(net)})

    net, store = _drive(strategy, _stream(), after=after)
    trunk = trunk_nodes(net)
    assert trunk == ["conv1", "conv2", "fc1"]
    final = owners[-1]
    values = [owner_value(net, t) for t in net.tasks]
    assert values == sorted(set(values)) and values[0] > FREE  # distinct, increasing in task order
    for n in trunk:
        owners_map = net.node(n).param("weight").owners
        assert isinstance(owners_map, OwnerMap) and owners_map.granularity == "param"
        assert store[owners_map.key].dtype == torch.int32
        assert set(final[n].unique().tolist()) <= {FREE, *values}
        before = torch.zeros_like(final[n])
        for i, t in enumerate(net.tasks):
            me = owner_value(net, t)
            assert me == net.tasks[t].added_at
            after_t = owners[i][n]
            # earlier owners never change; each weight has at most one owner
            assert torch.equal(after_t[before != 0], before[before != 0])
            free = int((before == 0).sum())
            k = int(strategy.fraction(i) * free + 0.5)
            assert int((after_t == me).sum()) == free - k
            assert int(((before == 0) & (after_t == 0)).sum()) == k
            # task t's committed mask = union of the owners 1..t, on the final ownership too
            m = net.node(n).mask(t)
            assert m.state == "committed" and m.granularity == "param"
            assert store[m.key].dtype == torch.uint8  # packed bits
            bits = store.unpacked(m.key, m.shape)
            assert torch.equal(bits, ((final[n] != FREE) & (final[n] <= me)).float())
            assert torch.equal(bits, ((after_t != FREE) & (after_t <= me)).float())
            before = after_t
        masks = [store.unpacked(net.node(n).mask(t).key, net.node(n).mask(t).shape) for t in net.tasks]
        for a, b in itertools.pairwise(masks):
            assert torch.all(a <= b)  # nested
        # free_init="zero": weights nobody owns hold 0
        assert torch.all(store[net.node(n).param("weight").key].detach()[final[n] == 0] == 0)


def test_packnet_snapshot_round_trip_keeps_ownership(tmp_path):
    net0, store0 = _drive(PackNet(backbone=MLP), _stream(2))
    snapshot.save(tmp_path / "s.jn", net0, store0)
    net, store = snapshot.load(tmp_path / "s.jn")
    assert net == net0
    for n in trunk_nodes(net):
        assert torch.equal(owner_tensor(net, store, n), owner_tensor(net0, store0, n))
    x = _probe()
    for t in net.tasks:
        assert torch.equal(_out(net, store, t, x), _out(net0, store0, t, x))


# ---- through the runner -----------------------------------------------------------------------

SPEC_CONFIG = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
SYN = {"n_tasks": 3, "input_shape": list(SHAPE), "n_train_per_class": 16, "n_val_per_class": 4,
       "n_test_per_class": 8}


@pytest.mark.parametrize("strategy,options", [("pnn", {"backbone": CONV_BN}), ("packnet", {"backbone": CONV_BN})])
def test_runner_bwt_is_exactly_zero(tmp_path, strategy, options):
    res = run(RunSpec(strategy=strategy, stream="synthetic", strategy_options=options, stream_options=SYN,
                      config=SPEC_CONFIG), tmp_path / "run", echo=lambda s: None)
    R = res["matrix"]
    assert res["metrics"]["BWT"] == 0.0 and res["metrics"]["AF"] == 0.0
    for j in range(len(R)):
        assert all(R[i][j] == R[j][j] for i in range(j, len(R)))


@pytest.mark.parametrize("strategy", ["packnet", "pnn"])
def test_resume_after_first_task_gives_the_same_matrix(tmp_path, strategy):
    spec = RunSpec(strategy=strategy, stream="synthetic", strategy_options={"backbone": CONV_BN},
                   stream_options={**SYN, "n_tasks": 2}, config=SPEC_CONFIG)
    a = run(spec, tmp_path / "a", echo=lambda s: None)
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)
    results = json.loads((copy / "results.json").read_text())
    results["done"] = 1
    for k in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        results[k] = results[k][:1]
    (copy / "results.json").write_text(json.dumps(results))
    (copy / a["snapshots"][1]).unlink()
    b = resume(copy, echo=lambda s: None)
    assert b["matrix"] == a["matrix"]
    assert b["params"] == a["params"] and b["epochs"] == a["epochs"]


def test_split_fmnist_subset_no_forgetting(tmp_path):
    """Real Fashion-MNIST (fails, never skips, when it is missing)."""
    stream_opts = {"n_tasks": 2, "n_train_per_task": 200, "n_test_per_task": 200}
    for strategy in ("packnet", "pnn"):
        res = run(RunSpec(strategy=strategy, stream="split-fmnist", stream_options=stream_opts,
                          config={"epochs": 1, "batch_size": 32}), tmp_path / strategy, echo=lambda s: None)
        assert res["metrics"]["BWT"] == 0.0
        assert min(res["matrix"][-1]) > 0.6, res["matrix"]


def test_options_are_validated():
    with pytest.raises(ValueError):
        PackNet(prune=1.5)
    with pytest.raises(ValueError):
        PackNet(prune=[])
    with pytest.raises(ValueError):
        PackNet(prune=[0.5, True])
    with pytest.raises(ValueError):
        PackNet(free_init="random")
    with pytest.raises(ValueError):
        PackNet(retrain_epochs=-1)
    with pytest.raises(ValueError):
        PackNet(retrain_lr=0)
    with pytest.raises(ValueError):
        PNN(adapter="gated")
    with pytest.raises(TypeError):
        PNN(head_laterals="yes")
    assert PackNet(prune=[0.5, 0.75]).fraction(5) == 0.75
    for name, bad in (("packnet", {"bn": "drop"}), ("packnet", {"prune": 2}), ("pnn", {"lateral_conv": "3x3"}),
                      ("pnn", {"backbone": "mlp"})):
        with pytest.raises(StrategyError, match=f"^{name}: bad options"):
            get(name, **bad)
    assert isinstance(get("packnet"), PackNet) and isinstance(get("pnn"), PNN)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        PackNet().prune = 0.1


def test_docstring_examples():
    import doctest

    import strategies.packnet
    import strategies.pnn

    for mod in (strategies.pnn, strategies.packnet):
        assert doctest.testmod(mod).failed == 0, mod.__name__
