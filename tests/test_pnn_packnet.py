"""Progressive Nets and PackNet: graph structure, ownership, zero forgetting, runner and resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from jointnet import backbones, snapshot
from jointnet.graph.check import check
from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError, RewriteError
from jointnet.graph.net import JointNet, TensorRef
from jointnet.execution.store import ParamStore
from jointnet.graph.draft import replay
from jointnet.graph import add_head, add_node, add_task, bind, clone_node, route_through
from jointnet.experiments.runner import RunSpec, resume, run
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import TrainConfig
from strategies.base import RunState, get
from strategies.packnet import OWNER, PackNet, PackNetHooks, owner_tensor, prune_free, task_id, trunk_nodes
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
def _out(state: RunState, task: str, x: torch.Tensor) -> torch.Tensor:
    m = compile_net(state.net, state.store, task)
    m.eval()
    return m(x).clone()


def _drive(strategy, stream, config=CONFIG, after=None) -> RunState:
    """The runner's per-task steps, without files; `after(state, i)` runs after every task."""
    state = RunState(net=JointNet.empty(), store=ParamStore(seed=0), stream=stream, config=config,
                     echo=lambda msg: None)
    for i, task in enumerate(stream.tasks):
        torch.manual_seed(i)
        strategy.before_task(state, task, i)
        state.store.realize(state.net)
        strategy.train_task(state, task, i)
        strategy.after_task(state, task, i)
        state.store.realize(state.net)
        check(state.net)
        if after is not None:
            after(state, i)
    return state


def _assert_no_forgetting(strategy, stream=None, config=CONFIG) -> RunState:
    """Every finished task's eval outputs on a probe stay bit-identical through later tasks."""
    stream = stream or _stream()
    x = _probe()
    first: dict[str, torch.Tensor] = {}

    def after(state, i):
        for t in list(state.net.tasks)[: i + 1]:
            out = _out(state, t, x)
            if t not in first:
                first[t] = out
            else:
                assert torch.equal(out, first[t]), f"task {t} changed after training task {i + 1}"

    state = _drive(strategy, stream, config, after)
    assert set(first) == {"t1", "t2", "t3"}
    return state


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
    state = _assert_no_forgetting(get("pnn", **options))
    # BatchNorm of earlier columns: later tasks got their own statistics (copied).
    if options["backbone"] is CONV_BN:
        assert state.net.node("bn1").param("running_mean", task="t3") is not None


# ---- PackNet ----------------------------------------------------------------------------------


def test_prune_free_takes_the_smallest_free_weights():
    w = torch.tensor([3.0, -0.5, 0.1, 2.0, -0.2, 0.0])
    owner = torch.tensor([0, 0, 1, 0, 0, 2], dtype=torch.int16)
    assert prune_free(w, owner, 0.5).tolist() == [False, True, False, False, True, False]
    assert not prune_free(w, owner, 0.0).any()
    assert prune_free(w, owner, 1.0).tolist() == [True, True, False, True, True, False]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_packnet_hooks_keep_owned_weights_bit_exact(optimizer):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5))
    b = torch.nn.Parameter(torch.randn(6))
    owned = torch.rand(6, 5) < 0.5
    before_w, before_b = w.detach().clone(), b.detach().clone()
    hooks = PackNetHooks([(w, owned)], [b])
    opt = (torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.1) if optimizer == "sgd"
           else torch.optim.Adam([w, b], lr=0.1, weight_decay=0.1))
    for _ in range(5):
        opt.zero_grad()
        (torch.randn(3, 5) @ w.t() + b).pow(2).sum().backward()
        hooks.transform_grads(None, {})
        opt.step()
        hooks.after_step(None, {})
    assert torch.equal(w.detach()[owned], before_w[owned])
    assert torch.equal(b.detach(), before_b)
    assert not torch.equal(w.detach()[~owned], before_w[~owned])  # the free ones did train


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

    def after(state, i):
        owners.append({n: owner_tensor(state.net, state.store, n).clone() for n in trunk_nodes(state.net)})

    state = _drive(strategy, _stream(), after=after)
    net, store = state.net, state.store
    trunk = trunk_nodes(net)
    assert trunk == ["conv1", "conv2", "fc1"]
    final = owners[-1]
    for n in trunk:
        ref = net.node(n).param("weight").annotations[OWNER]
        assert isinstance(ref, TensorRef) and store[ref.key].dtype == torch.int16
        before = torch.zeros_like(final[n])
        for i, t in enumerate(net.tasks):
            me = task_id(net, t)
            assert me == i + 1
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
            bits = store[m.key]
            assert torch.equal(bits, ((final[n] >= 1) & (final[n] <= me)).float())
            assert torch.equal(bits, ((after_t >= 1) & (after_t <= me)).float())
            before = after_t
        masks = [store[net.node(n).mask(t).key] for t in net.tasks]
        for a, b in zip(masks, masks[1:]):
            assert torch.all(a <= b)  # nested
        # free_init="zero": weights nobody owns hold 0
        assert torch.all(store[net.node(n).param("weight").key].detach()[final[n] == 0] == 0)


def test_packnet_snapshot_round_trip_keeps_ownership(tmp_path):
    state = _drive(PackNet(backbone=MLP), _stream(2))
    snapshot.save(tmp_path / "s.jn", state.net, state.store)
    net, store = snapshot.load(tmp_path / "s.jn")
    for n in trunk_nodes(net):
        assert torch.equal(owner_tensor(net, store, n), owner_tensor(state.net, state.store, n))
    x = _probe()
    for t in net.tasks:
        assert torch.equal(_out(RunState(net, store, None, CONFIG), t, x), _out(state, t, x))


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
        PackNet(free_init="random")
    with pytest.raises(ValueError):
        PNN(adapter="gated")
    assert PackNet(prune=[0.5, 0.75]).fraction(5) == 0.75


def test_docstring_examples():
    import doctest

    import strategies.packnet
    import strategies.pnn

    for mod in (strategies.pnn, strategies.packnet):
        assert doctest.testmod(mod).failed == 0, mod.__name__
