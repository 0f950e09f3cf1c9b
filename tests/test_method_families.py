"""One test per method family: the core expresses each method's graph operations.

L2BG (bind + clone + lr scale), LASEM (one branch per share/own configuration, compiled together,
then committed), GROWN (widen with channel ownership, per-task kernel masks), PAR (an expert
sub-DAG with two-input cells, shared by a later task) and SPG (per-parameter importance
annotations that survive a snapshot).
"""

from __future__ import annotations

import itertools

import attrs
import pytest
import torch

import gen
import invariants as inv
from jointnet import backbones as bb
from jointnet import graph as rw
from jointnet.graph.check import check
from jointnet.execution.compile import compile_net
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.net import TensorRef
from jointnet.execution.store import ParamStore
from jointnet.graph.shapes import task_shapes
from jointnet.execution.optim import fit, param_groups, task_tensors


def _batches(shape, classes, n=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((8, *shape), generator=g), torch.randint(0, classes, (8,), generator=g)) for _ in range(n)]


def _code_lines(module) -> int:
    """Computed values in a compiled module's forward (one line per node evaluation)."""
    return sum(1 for line in module.code.splitlines() if line.startswith("    v"))


def _numel(net, n) -> int:
    return sum(p.numel for p in net.node(n).params if not p.buffer)


# ---- L2BG -----------------------------------------------------------------------------------


def test_l2bg_bind_then_clone_conflicting_slots():
    shape = (1, 28, 28)
    net = bb.build(bb.lenet5(shape), task="t1", n_classes=3)
    store = ParamStore(seed=0).realize(net)
    x = gen.probe(shape)
    fit(net, store, "t1", _batches(shape, 3))
    before_total = inv.owned_numel(net)

    # t2 binds to t1's whole path, then grows its own copies of the most conflicting slots.
    net = rw.add_task(net, task="t2")
    net = rw.bind(net, task="t2", to="t1")
    net = rw.add_head(net, task="t2", n_classes=4)
    bound = net
    store.realize(bound)
    assert bound.route("t2")[:-1] == net.route("t1")[:-1]
    grown = []
    for slot in ("conv2", "fc1"):
        net = rw.clone_node(net, node=slot, task="t2", init="copy")
        grown.append(f"{slot}.t2")
    check(net)
    assert [r.name for r in net.log][-2:] == ["clone_node", "clone_node"]
    assert net.route("t2") == [
        "input", "conv1", "relu1", "pool1", "conv2.t2", "relu2", "pool2", "flatten1",
        "fc1.t2", "relu3", "fc2", "relu4", "head.t2",
    ]
    assert net.users("conv2") == {"t1"} and net.users("conv2.t2") == {"t2"}
    assert net.users("conv1") == net.users("fc2") == {"t1", "t2"}
    # Parameters grow by exactly the cloned layers (plus t2's head, added before).
    assert inv.owned_numel(net) == inv.owned_numel(bound) + _numel(bound, "conv2") + _numel(bound, "fc1")
    assert inv.owned_numel(bound) == before_total + _numel(bound, "head.t2")

    # At realization the clones hold copies: equal values, distinct tensors.
    store.realize(net)
    for slot, clone in zip(("conv2", "fc1"), grown):
        for p, q in zip(net.node(slot).params, net.node(clone).params):
            assert p.name == q.name and q.init.kind == "copy" and q.init.src == p.key
            a, b = store[p.key], store[q.key]
            assert torch.equal(a, b) and a is not b and a.data_ptr() != b.data_ptr()
    # Copy clones compute what the bound net computed, for both tasks.
    inv.assert_outputs_equal(inv.outputs(bound, store, x), inv.outputs(net, store, x), ["t1", "t2"], "clone")

    # Training t2 with the shared path frozen for t2 leaves t1 bit-identical.
    shared = ["conv1", "fc2"]
    frozen = rw.freeze(net, nodes=shared, task="t2")
    assert frozen.policy_for("t2", "conv1").frozen and not frozen.policy_for("t1", "conv1").frozen
    t1_before = inv.outputs(frozen, store, x, ["t1"])
    t2_before = inv.outputs(frozen, store, x, ["t2"])
    clone_before = inv.tensors_of(store, [p.key for c in grown for p in frozen.node(c).params])
    fit(frozen, store, "t2", _batches(shape, 4, seed=7), lr=0.1)
    inv.assert_outputs_equal(t1_before, inv.outputs(frozen, store, x, ["t1"]), ["t1"], "training t2")
    assert not torch.equal(t2_before["t2"], inv.outputs(frozen, store, x, ["t2"])["t2"])
    assert any(not torch.equal(v, store[k]) for k, v in clone_before.items())

    # L2BG proper: shared layers train at 0.1x the learning rate of the grown ones.
    scaled = rw.set_lr_scale(net, nodes=shared, scale=0.1, task="t2")
    assert scaled.log[-1].name == "set_lr_scale" and scaled.version == net.version + 1
    groups = param_groups(scaled, store, "t2", lr=0.5)
    by_lr = {round(g["lr"], 6): {id(p) for p in g["params"]} for g in groups}
    shared_ids = {id(store[k]) for n in shared for k in task_tensors(scaled, "t2")[n]}
    own_ids = {id(store[k]) for n in grown + ["head.t2"] for k in task_tensors(scaled, "t2")[n]}
    assert by_lr == {0.05: shared_ids, 0.5: own_ids}
    assert param_groups(scaled, store, "t1", lr=0.5)[0]["lr"] == 0.5  # t1 is not scaled

    # One SGD step moves each tensor by lr * scale * grad.
    (xb, yb), = _batches(shape, 4, n=1, seed=11)
    module = compile_net(scaled, store, "t2")
    module.train()
    for p in module.parameters():
        p.grad = None
    torch.nn.functional.cross_entropy(module(xb), yb).backward()
    grads = {k: store[k].grad.clone() for n in shared + grown for k in task_tensors(scaled, "t2")[n]}
    olds = inv.tensors_of(store, grads)
    fit(scaled, store, "t2", [(xb, yb)], lr=0.5)
    for k, g in grads.items():
        lr = 0.05 if any(k in task_tensors(scaled, "t2")[n] for n in shared) else 0.5
        assert torch.allclose(store[k].detach(), olds[k] - lr * g, atol=1e-6), k


# ---- LASEM ----------------------------------------------------------------------------------


def test_lasem_one_branch_per_configuration_then_commit():
    shape = gen.IMAGE
    net = gen.tiny_backbone("small_conv", 3, 4, 5).build("t1", 3)
    store = ParamStore(seed=0).realize(net)
    x = gen.probe(shape)
    fit(net, store, "t1", _batches(shape, 3))
    slots = ("conv2", "fc1")  # the transferable layers; bit 1 = "own", 0 = "share"
    configs = ["".join(bits) for bits in itertools.product("01", repeat=len(slots))]
    names = [f"t2:{c}" for c in configs]
    for name, bits in zip(names, configs):
        net = rw.add_task(net, task=name)
        net = rw.bind(net, task=name, to="t1")
        net = rw.add_head(net, task=name, n_classes=2)
        for slot, bit in zip(slots, bits):
            if bit == "1":
                net = rw.clone_node(net, node=slot, task=name, init="copy")
    check(net)
    store.realize(net)
    # The users of a shared slot are exactly the configurations that share it (LASEM spec §8).
    for i, slot in enumerate(slots):
        assert net.users(slot) == {"t1"} | {n for n, c in zip(names, configs) if c[i] == "0"}
        for n, c in zip(names, configs):
            assert (f"{slot}.{n}" in net.route(n)) == (c[i] == "1")

    # All branches compiled together: each shared prefix is computed once.
    together = compile_net(net, store, names)
    singles = {n: compile_net(net, store, n) for n in names}
    per_task = sum(_code_lines(m) for m in singles.values())
    assert per_task == 4 * (len(net.route("t2:00")) - 1)
    # conv1, relu1, pool1 once; conv2 by 2 branches + 2 own; relu2/pool2/flatten1 after each of
    # the 3 conv2 variants; fc1 by 2 branches (fed by 2 different conv2s) + 2 own; relu3 and head
    # per branch.
    assert _code_lines(together) == 3 + 3 + 3 * 3 + 4 + 4 + 4 == 27 < per_task
    assert together.code.count("# conv1\n") == 1 and together.code.count("# conv2\n") == 1
    together.eval()
    outs = together(x)
    single = inv.outputs(net, store, x, names)
    inv.assert_outputs_equal(single, outs, names, "multi-task compile")

    # Commit one configuration: drop the others and prune what no task routes through.
    keep = "t2:01"
    committed = net
    for n in names:
        if n != keep:
            committed = rw.remove_task(committed, task=n)
    committed = rw.prune(committed)
    check(committed)
    assert list(committed.tasks) == ["t1", keep]
    assert set(committed.nodes) == set(net.route("t1")) | {f"fc1.{keep}", f"head.{keep}"}
    after = inv.outputs(committed, store, x)
    inv.assert_outputs_equal(single, after, [keep], "commit")
    inv.assert_outputs_equal(inv.outputs(net, store, x, ["t1"]), after, ["t1"], "commit")
    inv.assert_replays(committed)


# ---- GROWN ----------------------------------------------------------------------------------


def test_grown_widen_with_channel_ownership_and_kernel_masks():
    shape = gen.IMAGE
    net = gen.tiny_backbone("vgg_bn", 3, 4, 5).build("t1", 3)  # conv2 -> bn2 -> relu2 -> pool2 (2x2)
    store = ParamStore(seed=0).realize(net)
    x = gen.probe(shape)
    fit(net, store, "t1", _batches(shape, 3))
    net = rw.add_task(net, task="t2")
    net = rw.bind(net, task="t2", to="t1")
    net = rw.add_head(net, task="t2", n_classes=2)
    # A selective mask over t2's view of conv2's old kernels, attached before growing.
    net = rw.attach_mask(net, node="conv2", task="t2", granularity="kernel", transform="sigmoid")
    store.realize(net)
    t1_before = inv.outputs(net, store, x, ["t1"])

    k, hw = 2, 2 * 2
    grown = rw.widen(net, node="conv2", k=k, task="t2")
    check(grown)
    store.realize(grown)
    conv = grown.node("conv2")
    group = conv.out_groups[-1]
    assert (group.owner, group.size, group.created_at) == ("t2", k, grown.version)
    assert all(p.owner == "t2" for p in conv.params if p.block[0] == group.id)
    assert {p.name for p in conv.params if p.block[0] == group.id} == {"weight"}  # no bias after BN
    # Successors follow: BN gains k features, the Linear after Flatten k*H*W inputs, owned by t2.
    assert grown.node("bn2").spec.num_features == 4 + k
    assert grown.node("bn2").out_groups[-1] == group
    fc1 = grown.node("fc1")
    assert fc1.spec.in_f == (4 + k) * hw and fc1.in_groups[-1].size == k * hw
    assert fc1.in_groups[-1].owner == "t2"
    assert all(p.owner == "t2" for p in fc1.params if p.block[1] == group.id)
    # Ownership: t2 sees the new channels, t1 does not, and computes bit-identical outputs.
    assert grown.effective_spec("t2", "conv2").out_ch == 4 + k
    assert grown.effective_spec("t1", "conv2").out_ch == 4
    assert grown.effective_spec("t2", "fc1").in_f == (4 + k) * hw
    assert grown.effective_spec("t1", "fc1") == net.node("fc1").spec
    assert grown.effective_spec("t1", "bn2").num_features == 4
    inv.assert_outputs_equal(t1_before, inv.outputs(grown, store, x, ["t1"]), ["t1"], "widen")
    # The mask still covers the old kernels only; the grown ones are unmasked.
    mask = conv.mask("t2")
    assert mask.shape == (4, 3) and tuple(store[mask.key].shape) == (4, 3)
    single = inv.outputs(grown, store, x)
    inv.assert_matches_reference(grown, store, x, single)

    # Old kernels stay t1's: the trunk is frozen for t2 except what t2 owns (its grown channels,
    # their BN features and fc1 columns, its mask), which trains with its head.
    trunk = ["conv1", "bn1", "conv2", "bn2", "fc1"]
    grown = rw.freeze(grown, nodes=trunk, task="t2", keep_owned=True)
    groups = param_groups(grown, store, "t2", lr=0.1)
    trainable = {id(p) for g in groups for p in g["params"]}
    owned = [p.key for n in trunk for p in grown.node(n).params if p.owner == "t2" and not p.buffer]
    assert len(owned) == 1 + 2 + 1  # conv2 weight rows, bn2 weight/bias, fc1 weight columns
    expected = {id(store[k]) for k in owned + [mask.key] + task_tensors(grown, "t2")["head.t2"]}
    assert trainable == expected
    assert not any(id(store[p.key]) in trainable for n in trunk for p in grown.node(n).params if p.owner is None)
    owned_before = inv.tensors_of(store, owned + [mask.key])
    fit(grown, store, "t2", _batches(shape, 2, seed=3), lr=0.5)
    inv.assert_outputs_equal(t1_before, inv.outputs(grown, store, x, ["t1"]), ["t1"], "training t2")
    assert all(not torch.equal(v, store[k]) for k, v in owned_before.items())
    store.update(mask.key, torch.linspace(-3, 3, 12).reshape(4, 3))  # a non-trivial selection
    logits = store[mask.key].detach().clone()
    committed = rw.commit_mask(grown, node="conv2", task="t2")
    check(committed)
    store.realize(committed)
    bits = committed.node("conv2").mask("t2")
    assert bits.state == "committed" and bits.key != mask.key
    assert store[bits.key].dtype == torch.uint8 and store[bits.key].numel() == 2  # 12 bits, packed
    assert torch.equal(store.unpacked(bits.key, bits.shape), (torch.sigmoid(logits) > 0.5).float())
    assert 0 < int(store.unpacked(bits.key, bits.shape).sum()) < 12
    assert bits.key not in {k for ks in task_tensors(committed, "t2").values() for k in ks}
    inv.assert_outputs_equal(t1_before, inv.outputs(committed, store, x, ["t1"]), ["t1"], "commit")
    inv.assert_matches_reference(committed, store, x, inv.outputs(committed, store, x))

    # Masks on BN features work on grown (grouped) BatchNorms too.
    bn_masked = rw.attach_mask(committed, node="bn2", task="t2", init="zeros")
    store.realize(bn_masked)
    out = inv.outputs(bn_masked, store, x)
    inv.assert_matches_reference(bn_masked, store, x, out)
    assert not torch.equal(out["t2"], inv.outputs(committed, store, x, ["t2"])["t2"])


# ---- PAR ------------------------------------------------------------------------------------


def test_par_expert_with_two_input_cells_shared_by_a_later_task():
    shape = gen.IMAGE
    base = gen.tiny_backbone("small_conv", 3, 4, 5).build("t1", 3)
    store = ParamStore(seed=0).realize(base)
    x = gen.probe(shape)
    t1_nodes = {n: base.node(n) for n in base.nodes}
    t1_out = inv.outputs(base, store, x)

    # A new expert for t2 from the shared input: stem -> cell0 -> cell1 -> pool -> head, where
    # cell k merges the outputs of the two previous layers (k-2 and k-1).
    C = 4
    net = rw.add_task(base, task="t2")
    add = lambda n, node, spec, inputs: rw.add_node(n, node=node, spec=spec, inputs=inputs, task="t2")  # noqa: E731
    net = add(net, "e.stem", {"kind": "conv", "out_ch": C, "padding": 1}, "input")
    net = add(net, "e.stem_relu", {"kind": "relu"}, "e.stem")
    # cell0: s0 = s1 = stem; op on s1; Add(s0, op)
    net = add(net, "e.c0.op", {"kind": "conv", "out_ch": C, "padding": 1}, "e.stem_relu")
    net = add(net, "e.c0", {"kind": "add"}, ["e.stem_relu", "e.c0.op"])
    # cell1: s0 = stem (k-2), s1 = cell0 (k-1); op on s1; Concat(s0, op) -> 2C channels
    net = add(net, "e.c1.op", {"kind": "conv", "out_ch": C, "padding": 1}, "e.c0")
    net = add(net, "e.c1", {"kind": "concat"}, ["e.stem_relu", "e.c1.op"])
    net = add(net, "e.pool", {"kind": "gap"}, "e.c1")
    net = rw.add_head(net, task="t2", n_classes=2)
    expert = ["e.stem", "e.stem_relu", "e.c0.op", "e.c0", "e.c1.op", "e.c1", "e.pool"]
    # t3 is related to t2: it joins t2's expert with its own head.
    net = rw.add_task(net, task="t3")
    net = rw.bind(net, task="t3", to="t2")
    net = rw.add_head(net, task="t3", n_classes=5)
    check(net)
    store.realize(net)

    assert net.route("t2") == ["input", *expert, "head.t2"]
    assert net.route("t3") == ["input", *expert, "head.t3"]
    for n in expert:
        assert net.users(n) == {"t2", "t3"}
    assert net.users("input") == {"t1", "t2", "t3"}
    assert net.users("head.t2") == {"t2"} and net.users("head.t3") == {"t3"}
    # Skip edges k-2 -> k with explicit ports, in the order the merge takes its operands.
    assert net.graph.has_edge("e.stem_relu", "e.c1")
    assert net.inputs_of("e.c0", "t3") == ["e.stem_relu", "e.c0.op"]
    assert net.inputs_of("e.c1", "t3") == ["e.stem_relu", "e.c1.op"]
    assert net.graph.edges["e.c1.op", "e.c1"]["port"] == 1
    assert task_shapes(net, "t3")["e.c1"] == (2 * C, 8, 8)
    # t1's nodes are untouched (the same values), and so are its routes and outputs.
    for n, node in t1_nodes.items():
        assert net.node(n) == node
        assert net.users(n) == ({"t1", "t2", "t3"} if n == "input" else {"t1"})
    assert inv.route_edges(net, "t1") == inv.route_edges(base, "t1")
    out = inv.outputs(net, store, x)
    inv.assert_outputs_equal(t1_out, out, ["t1"], "adding the expert")
    inv.assert_matches_reference(net, store, x, out)

    # Both expert tasks compile together, the expert computed once.
    both = compile_net(net, store, ["t2", "t3"])
    assert _code_lines(both) == len(expert) + 2
    both.eval()
    inv.assert_outputs_equal(out, both(x), ["t2", "t3"], "multi-task compile")

    # The head-only path: t3 trains its head with the expert frozen; t2 is unaffected.
    head_only = rw.freeze(net, nodes=expert, task="t3")
    groups = param_groups(head_only, store, "t3", lr=0.1)
    assert {id(p) for g in groups for p in g["params"]} == {id(store[k]) for k in task_tensors(net, "t3")["head.t3"]}
    fit(head_only, store, "t3", _batches(shape, 5))
    inv.assert_outputs_equal(out, inv.outputs(head_only, store, x), ["t1", "t2"], "head-only training")


# ---- SPG ------------------------------------------------------------------------------------


def test_spg_importance_annotations_survive_a_snapshot(tmp_path):
    if not inv.HAVE_SNAPSHOT:  # pragma: no cover - jointnet.persistence.snapshot is part of the package
        pytest.skip("jointnet.persistence.snapshot is not there yet")
    from jointnet import snapshot

    shape = gen.IMAGE
    net = gen.tiny_backbone("small_conv", 3, 4, 5).build("t1", 3)
    store = ParamStore(seed=0).realize(net)
    x = gen.probe(shape)
    trunk = ["conv1", "conv2", "fc1"]
    plain = net
    g = torch.Generator().manual_seed(0)
    for n in trunk:
        for p in net.node(n).params:
            key = f"spg.acc_importance.{n}.{p.name}"
            store.put(key, torch.rand(p.shape, generator=g))
            net = rw.annotate(net, node=n, param=p.name, key="spg.acc_importance", value=TensorRef(key))
    net = rw.annotate(net, key="spg", value={"tasks_done": ["t1"], "variant": {"chi": True, "hard_threshold": None}})
    check(net)
    assert net.version == plain.version + 2 * len(trunk) + 1
    assert all(r.name == "annotate" for r in list(net.log)[plain.version:])

    # annotate changes no topology: the same structure apart from annotations.
    def bare(n):
        nodes = tuple(
            (i, attrs.evolve(n.node(i), params=tuple(attrs.evolve(p, annotations=FrozenDict()) for p in n.node(i).params)))
            for i in sorted(n.nodes)
        )
        return nodes, n.structure()[1], tuple(n.tasks.items()), n.policy

    assert bare(net) == bare(plain)
    assert net.structure() != plain.structure()
    inv.assert_outputs_equal(inv.outputs(plain, store, x), inv.outputs(net, store, x), ["t1"], "annotate")
    for n in trunk:  # shapes of importance = shapes of the params; nothing on the head
        for p in net.node(n).params:
            assert tuple(store[p.annotations["spg.acc_importance"].key].shape) == p.shape
    assert all(not p.annotations for p in net.node("head.t1").params)
    # The store keeps what the net references, TensorRefs included, when collecting garbage.
    store.put("stray", torch.zeros(2))
    assert store.gc(net) == 1 and "spg.acc_importance.conv1.weight" in store

    path = snapshot.save(tmp_path / "spg.jn", net, store)
    net2, store2 = snapshot.load(path)
    assert net2 == net and net2.structure() == net.structure()
    for n in trunk:
        for p, q in zip(net.node(n).params, net2.node(n).params):
            ref = q.annotations["spg.acc_importance"]
            assert isinstance(ref, TensorRef) and ref == p.annotations["spg.acc_importance"]
            assert torch.equal(store2[ref.key], store[ref.key]) and store2[ref.key].dtype == torch.float32
    assert net2.annotations == net.annotations
    assert net2.annotations["spg"]["variant"]["hard_threshold"] is None
    inv.assert_outputs_equal(inv.outputs(net, store, x), inv.outputs(net2, store2, x), ["t1"], "snapshot")

    # SPG adds only heads: the topology after t2 is the topology after t1 plus head_t2.
    net3 = rw.add_head(rw.bind(rw.add_task(net2, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    assert set(net3.nodes) - set(net2.nodes) == {"head.t2"}
    assert set(net3.graph.edges) - set(net2.graph.edges) == {("relu3", "head.t2")}
