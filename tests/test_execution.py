"""The one execution API: routes and views, captures, shared prefixes, per-call contexts, mask
transforms; the layer kinds' knowledge; the store's API; compaction and coupled widening."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gen
import invariants as inv
import jointnet as jn
from jointnet import backbones
from jointnet.errors import CompileError, JointNetError, RewriteError, SpecError
from jointnet.execution import Context, compile_net, plan, run
from jointnet.execution.store import ParamStore, pack_bits, unpack_bits
from jointnet.graph.layers import AvgPool2d, BatchNorm, Conv2d, MaxPool2d, Zero, infer_spec


def _two_tasks():
    net = backbones.build(backbones.mlp(6, [5, 4]), task="t1", n_classes=3)
    net = jn.add_head(jn.bind(jn.add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    return jn.clone_node(net, node="fc2", task="t2", init="fresh")


# ---- run, capture, views -------------------------------------------------------------------------


def test_run_gives_every_route_and_captured_nodes_in_one_pass():
    net = _two_tasks()
    store = ParamStore(seed=0).realize(net)
    x = torch.randn(4, 6)
    out = run(net, store, x, capture=["relu1", "fc2.t2"])
    single = inv.outputs(net, store, x)
    assert set(out.logits) == {"t1", "t2"}
    for t in ("t1", "t2"):
        assert torch.equal(out.logits[t], single[t])
    # A node several routes compute is captured for each of them (one computation).
    assert set(out.activations) == {("t1", "relu1"), ("t2", "relu1"), ("t2", "fc2.t2")}
    assert out.activations[("t1", "relu1")] is out.activations[("t2", "relu1")]
    with torch.no_grad():
        h = F.relu(F.linear(x, store[net.node("fc1").param("weight").key], store[net.node("fc1").param("bias").key]))
    assert torch.allclose(out.activations[("t1", "relu1")], h)


def test_a_shared_prefix_is_computed_once():
    net = _two_tasks()
    p = plan(net, ["t1", "t2"])
    nodes = [s.node for s in p.steps]
    assert nodes.count("fc1") == 1 and nodes.count("relu1") == 1  # shared by both routes
    assert nodes.count("relu2") == 2  # after fc2 / fc2.t2 the routes differ


def test_views_are_values_that_need_no_rewrite():
    net = _two_tasks()
    store = ParamStore(seed=1).realize(net)
    x = torch.randn(3, 6)
    # t2's route with t1's fc2 in place of its clone: a path that is no task.
    view = net.view("t2", swap={"fc2.t2": "fc2"}, name="t2-with-fc2")
    assert net.route(view) == ["input", "fc1", "relu1", "fc2", "relu2", "head.t2"]
    out = run(net, store, x, [view, "t1", "t2"])
    ref = inv.reference_forward(net, store, view, x)
    assert torch.allclose(out.logits["t2-with-fc2"], ref, atol=1e-6)
    assert net.version == _two_tasks().version and len(net.log) == len(_two_tasks().log)
    # Many views sharing a prefix: each node of the prefix runs once.
    views = [net.view("t2", swap={"fc2.t2": "fc2"}, name=f"v{i}") for i in range(3)]
    p = plan(net, views + ["t2"])
    assert [s.node for s in p.steps].count("fc1") == 1
    assert len(p.outputs) == 4


def test_independent_dropout_draws_a_mask_per_route():
    layers = [{"kind": "linear", "out_f": 32}, {"kind": "dropout", "p": 0.5}, {"kind": "relu"}]
    net = backbones.build(layers, input_shape=(8,), task="t1", n_classes=2)
    store = ParamStore(seed=2).realize(net)
    views = [net.view("t1", name="a"), net.view("t1", name="b")]
    shared = plan(net, views)
    apart = plan(net, views, independent_dropout=True)
    assert [s.node for s in shared.steps].count("drop1") == 1
    assert [s.node for s in apart.steps].count("drop1") == 2
    torch.manual_seed(0)
    out = run(net, store, torch.ones(16, 8), views, context=Context(training=True), independent_dropout=True)
    assert not torch.equal(out.logits["a"], out.logits["b"])


def test_capturing_a_node_no_route_computes_is_a_compile_error():
    net = _two_tasks()
    store = ParamStore().realize(net)
    with pytest.raises(CompileError, match=r"cannot capture \['nope'\]"):
        compile_net(net, store, "t1", capture=["nope"])
    with pytest.raises(CompileError, match="repeat a name"):
        compile_net(net, store, [net.view("t1", name="t1"), "t1"])


# ---- the per-call context --------------------------------------------------------------------------


def test_gate_scale_comes_from_the_call_or_the_task():
    layers = [{"kind": "linear", "out_f": 4}, {"kind": "relu"}, {"kind": "gate"}]
    net = backbones.build(layers, input_shape=(3,), task="t1", n_classes=2)
    store = ParamStore(seed=3).realize(net)
    m = compile_net(net, store, "t1").eval()
    x = torch.randn(5, 3)
    assert torch.equal(m(x), m(x, Context(gate_scale=400.0)))
    assert not torch.equal(m(x), m(x, Context(gate_scale=0.5)))
    net2 = jn.set_context(net, task="t1", values={"gate_scale": 0.5})
    assert net2.tasks["t1"].context == {"gate_scale": 0.5}
    m2 = compile_net(net2, store, "t1").eval()
    assert torch.equal(m2(x), m(x, Context(gate_scale=0.5)))
    with pytest.raises(RewriteError, match="finite number"):
        jn.set_context(net, task="t1", values={"gate_scale": float("nan")})


def test_a_recorded_context_keeps_what_it_sets_apart_in_both_modes():
    """A task whose inference context keeps dropout on (MC dropout) keeps it in eval mode, and a
    frozen-statistics context keeps its BatchNorm in eval mode while training."""
    layers = [{"kind": "linear", "out_f": 32}, {"kind": "dropout", "p": 0.5}, {"kind": "relu"}]
    net = backbones.build(layers, input_shape=(8,), task="t1", n_classes=2)
    store = ParamStore(seed=2).realize(net)
    x = torch.ones(16, 8)
    plain = compile_net(net, store, "t1").eval()
    assert torch.equal(plain(x), plain(x))
    mc = compile_net(jn.set_context(net, task="t1", values={"dropout": True}), store, "t1").eval()
    torch.manual_seed(0)
    assert not torch.equal(mc(x), mc(x))
    assert Context(True, bn=False).with_training(True).bn is False
    assert Context(True, bn=False).with_training(False) == Context(False)


def test_a_context_is_validated():
    with pytest.raises(CompileError, match="gate_scale"):
        Context(gate_scale=-1.0)
    with pytest.raises(CompileError, match="noise_seed"):
        Context(noise_seed=-3)
    c = Context(training=True)
    assert c.dropout is True and c.bn is True
    assert Context(training=True, bn=False).bn is False


def test_gumbel_masks_sample_with_the_seed_and_are_deterministic_without():
    net = backbones.build(backbones.mlp(6, [5]), task="t1", n_classes=2)
    net = jn.attach_mask(net, node="fc1", task="t1", transform="gumbel", init="zeros")
    store = ParamStore(seed=4).realize(net)
    store.update(net.node("fc1").mask("t1").key, torch.linspace(-2, 2, 30).reshape(5, 6))
    m = compile_net(net, store, "t1")
    x = torch.randn(3, 6)
    a = m(x, Context(training=True, noise_seed=1))
    assert torch.equal(a, m(x, Context(training=True, noise_seed=1)))
    assert not torch.equal(a, m(x, Context(training=True, noise_seed=2)))
    deterministic = m(x, Context(training=True))  # no seed: the hard mask m > 0
    assert torch.equal(deterministic, m(x, Context(training=False, noise_seed=1)))
    # Straight-through: the forward is hard, the gradient flows into the logits.
    store[net.node("fc1").mask("t1").key].grad = None
    m(x, Context(training=True, noise_seed=3)).sum().backward()
    assert store[net.node("fc1").mask("t1").key].grad is not None


# ---- masks by kind and block, packed bits -----------------------------------------------------------


def test_mask_kinds_multiply_and_commit_to_packed_bits():
    net = backbones.build(backbones.mlp(6, [5]), task="t1", n_classes=2)
    net = jn.attach_mask(net, node="fc1", task="t1", kind="selective", granularity="channel", init="ones")
    net = jn.attach_mask(net, node="fc1", task="t1", kind="grown", transform="sigmoid", init="zeros")
    store = ParamStore(seed=5).realize(net)
    x = torch.randn(4, 6)
    sel = net.node("fc1").mask("t1", kind="selective")
    store.update(sel.key, torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]))
    w = store[net.node("fc1").param("weight").key]
    expected = w * 0.5 * torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])[:, None]  # sigmoid(0) = 0.5
    m = compile_net(net, store, "t1").eval()
    with torch.no_grad():
        h = F.linear(x, expected, store[net.node("fc1").param("bias").key])
    assert torch.allclose(inv.reference_forward(net, store, "t1", x), m(x))
    committed = jn.commit_mask(net, node="fc1", task="t1", kind="selective")
    store.realize(committed)
    bits = committed.node("fc1").mask("t1", kind="selective")
    assert store[bits.key].dtype == torch.uint8 and store[bits.key].numel() == 1
    assert store.unpacked(bits.key, bits.shape).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert torch.equal(compile_net(committed, store, "t1").eval()(x), m(x))
    assert h.shape == (4, 5)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 100])
def test_pack_bits_round_trips(n):
    bits = torch.rand(n) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, (n,)), bits)


def test_a_mask_limited_by_where_leaves_other_entries_alone():
    net = backbones.build(backbones.mlp(4, [3]), task="t1", n_classes=2)
    store = ParamStore(seed=6)
    where = torch.zeros(3, 4, dtype=torch.bool)
    where[0] = True
    store.put("sel", where)
    net = jn.attach_mask(net, node="fc1", task="t1", init="zeros", where="sel")
    store.realize(net)
    x = torch.randn(2, 4)
    w = store[net.node("fc1").param("weight").key].detach().clone()
    w[0] = 0.0
    with torch.no_grad():
        want = F.linear(F.relu(F.linear(x, w, store[net.node("fc1").param("bias").key])),
                        store[net.node("head.t1").param("weight").key], store[net.node("head.t1").param("bias").key])
    assert torch.allclose(compile_net(net, store, "t1").eval()(x), want)


# ---- the store's API ----------------------------------------------------------------------------------


def test_the_store_is_written_only_through_its_api():
    store = ParamStore()
    store.put("a", torch.zeros(3))
    with pytest.raises(JointNetError, match="already has a tensor 'a'"):
        store.put("a", torch.ones(3))
    with pytest.raises(TypeError):
        store.tensors["b"] = torch.zeros(1)  # read-only
    store.update("a", torch.ones(3))
    assert store["a"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(JointNetError, match="shape"):
        store.update("a", torch.ones(4))
    cp = store.checkpoint(["a"])
    store.update("a", torch.full((3,), 7.0))
    t = store["a"]
    store.restore(cp)
    assert store["a"] is t and store["a"].tolist() == [1.0, 1.0, 1.0]  # in place: modules keep it


# ---- layer kinds --------------------------------------------------------------------------------------


def _module_of(spec, in_shape, store_seed=0):
    net = backbones.build([spec, {"kind": "flatten"}], input_shape=in_shape, task="t1", n_classes=2)
    store = ParamStore(seed=store_seed).realize(net)
    return net, store


@pytest.mark.parametrize("spec, torch_layer", [
    (dict(kind="conv", out_ch=4, kernel=3, padding=2, dilation=2), lambda w, b: (lambda x: F.conv2d(x, w, b, 1, 2, 2))),
    (dict(kind="conv", out_ch=4, kernel=3, padding=1, groups=4), lambda w, b: (lambda x: F.conv2d(x, w, b, 1, 1, 1, 4))),
])
def test_dilated_and_grouped_convolutions(spec, torch_layer):
    net, store = _module_of(spec, (4, 6, 6))
    node = net.node("conv1")
    w, b = store[node.param("weight").key], store[node.param("bias").key]
    x = torch.randn(2, 4, 6, 6)
    got = run(net, store, x, capture=["conv1"]).activations[("t1", "conv1")]
    assert torch.allclose(got, torch_layer(w, b)(x))
    if spec.get("groups"):
        assert w.shape == (4, 1, 3, 3)
        with pytest.raises(RewriteError, match="only Conv2d \\(groups=1\\) and Linear"):
            jn.widen(net, node="conv1", k=1, task="t1")


def test_grouped_conv_checks_its_channels():
    with pytest.raises(SpecError, match="multiples of groups"):
        Conv2d(in_ch=3, out_ch=4, groups=2)


def test_batchnorm_without_affine_and_the_zero_op():
    bn = BatchNorm(num_features=3, affine=False)
    assert set(bn.params()) == {"running_mean", "running_var"} and bn.n_params() == 0
    assert Zero(stride=2).out_shape([(3, 5, 5)]) == (3, 3, 3)
    assert infer_spec({"kind": "none", "stride": 2}, [(3, 4, 4)]) == Zero(stride=2)
    layers = [{"kind": "bn", "affine": False}, {"kind": "zero", "stride": 2}, {"kind": "flatten"}]
    net = backbones.build(layers, input_shape=(3, 4, 4), task="t1", n_classes=2)
    store = ParamStore(seed=9).realize(net)
    x = torch.randn(5, 3, 4, 4)
    out = compile_net(net, store, "t1").eval()(x)
    bias = store[net.node("head.t1").param("bias").key]
    assert torch.equal(out, bias.detach().expand(5, 2))  # zeros in, the head's bias out
    inv.assert_matches_reference(net, store, x, {"t1": out})


def test_pools_with_padding():
    assert MaxPool2d(kernel=3, stride=1, padding=1).out_shape([(2, 5, 5)]) == (2, 5, 5)
    assert AvgPool2d(kernel=3, stride=2, padding=1).out_shape([(2, 5, 5)]) == (2, 3, 3)


# ---- compaction and coupled widening ------------------------------------------------------------------


def test_compacting_zero_masked_grown_channels_keeps_what_every_task_computes():
    net = gen.tiny_backbone("vgg_bn", 3, 4, 5).build("t1", 3)
    net = jn.add_head(jn.bind(jn.add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    net = jn.widen(net, node="conv2", k=3, task="t2")
    gid = net.node("conv2").out_groups[-1].id
    store = ParamStore(seed=7).realize(net)
    x = gen.probe(gen.IMAGE)
    # Zero the weights of grown channel 1 (as a committed grown mask would): it contributes nothing.
    wkey = net.node("conv2").param("weight", (gid, None)).key
    w = store[wkey].detach().clone()
    w[1] = 0.0
    store.update(wkey, w)
    bn_w = net.node("bn2").param("weight", (gid, None)).key
    bw = store[bn_w].detach().clone()
    bw[1] = 0.0
    store.update(bn_w, bw)
    bn_b = net.node("bn2").param("bias", (gid, None)).key
    bb = store[bn_b].detach().clone()
    bb[1] = 0.0
    store.update(bn_b, bb)
    before = inv.outputs(net, store, x)
    small = jn.check(jn.compact(net, group=gid, keep=[0, 2]))
    store.realize(small)
    after = inv.outputs(small, store, x)
    assert torch.equal(before["t1"], after["t1"])  # t1 never saw the group
    assert torch.allclose(before["t2"], after["t2"], atol=1e-5)
    assert small.node("conv2").out_groups[-1].size == 2 and small.effective_spec("t2", "conv2").out_ch == 6
    assert small.node("fc1").in_groups[-1].size == 2 * 2 * 2  # 2 channels x H*W after the Flatten
    gone = jn.check(jn.compact(small, group=gid, keep=[]))
    assert not any(g.id == gid for n in gone.nodes for g in gone.node(n).out_groups + gone.node(n).in_groups)
    with pytest.raises(RewriteError, match="keep names channel 5"):
        jn.compact(net, group=gid, keep=[0, 5])


def test_a_residual_stream_widens_only_with_all_its_producers():
    net = gen.tiny_backbone("resnet_tiny", 3, 4, 5).build("t1", 3)
    with pytest.raises(RewriteError, match=r"'b1_add' \(Add\) also adds"):
        jn.widen(net, node="stem", k=2, task="t1")
    wide = jn.check(jn.widen(net, node=["stem", "b1_conv2"], k=2, task="t1"))
    gid = wide.node("stem").out_groups[-1].id
    assert wide.node("b1_conv2").out_groups[-1].id == gid
    assert wide.effective_spec("t1", "b1_conv1").in_ch == 3 + 2  # the block reads the wider stream
    store = ParamStore(seed=8).realize(wide)
    x = gen.probe(gen.IMAGE)
    out = inv.outputs(wide, store, x)
    inv.assert_matches_reference(wide, store, x, out)
