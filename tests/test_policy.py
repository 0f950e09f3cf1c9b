"""Train policy as per-parameter data: frozen / lr scale per parameter, gradient rules (multiply the
gradient or the update, freeze entries), requires_grad off for what nothing trains."""

from __future__ import annotations

import pytest
import torch

import jointnet as jn
from jointnet import backbones
from jointnet.errors import JointNetError, RewriteError
from jointnet.execution.optim import fit, register_provider, train_plan
from jointnet.execution.store import ParamStore
from jointnet.experiments.trainer import TrainConfig, train_task


def _net():
    return backbones.build(backbones.mlp(6, [5]), task="t1", n_classes=3)


def _data(seed=0, n=48):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _batches(seed=0, steps=6):
    x, y = _data(seed)
    return [(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]) for i in range(steps)]


def test_a_zero_multiplier_on_the_update_keeps_entries_bit_identical_under_momentum_and_decay():
    net = _net()
    store = ParamStore(seed=1).realize(net)
    w = net.node("fc1").param("weight")
    zero_rows = torch.ones(5, 1)
    zero_rows[[0, 3]] = 0.0  # rows 0 and 3 may not move
    store.put("m", zero_rows)
    net = jn.set_grad_rule(net, nodes="fc1", params="weight", kind="multiply", tensor="m", apply="update")
    before = store[w.key].detach().clone()
    fit(net, store, "t1", _batches(), lr=0.3, momentum=0.9, weight_decay=0.1)
    after = store[w.key].detach()
    assert torch.equal(after[[0, 3]], before[[0, 3]])  # bit-identical
    assert not torch.equal(after[[1, 2, 4]], before[[1, 2, 4]])


def test_a_zero_multiplier_on_the_gradient_is_not_enough_under_weight_decay():
    """Why `apply="update"` exists: weight decay moves entries whose gradient was zeroed."""
    net = _net()
    store = ParamStore(seed=1).realize(net)
    w = net.node("fc1").param("weight")
    store.put("m", torch.zeros(5, 1))
    net = jn.set_grad_rule(net, nodes="fc1", params="weight", tensor="m", apply="grad")
    before = store[w.key].detach().clone()
    fit(net, store, "t1", _batches(), lr=0.3, momentum=0.9, weight_decay=0.1)
    assert not torch.equal(store[w.key], before)


def test_a_freeze_rule_keeps_entries_exactly_and_zeroes_their_gradient():
    net = _net()
    store = ParamStore(seed=2).realize(net)
    w = net.node("fc1").param("weight")
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[1:3, ::2] = True
    store.put("frozen", mask)
    net = jn.set_grad_rule(net, nodes="fc1", params="weight", kind="freeze", tensor="frozen")
    before = store[w.key].detach().clone()
    fit(net, store, "t1", _batches(), lr=0.3, momentum=0.9, weight_decay=0.1)
    assert torch.equal(store[w.key][mask], before[mask])
    assert not torch.equal(store[w.key][~mask], before[~mask])


def test_the_owned_provider_freezes_what_another_task_owns():
    net = _net()
    net = jn.track_owners(net, node="fc1", param="weight", granularity="param")
    net = jn.set_grad_rule(net, nodes="fc1", params="weight", kind="freeze", provider="owned")
    store = ParamStore(seed=3).realize(net)
    p = net.node("fc1").param("weight")
    owners = torch.zeros(5, 6, dtype=torch.int32)
    owners[0] = 999  # another task's number
    owners[1] = net.tasks["t1"].added_at  # t1's own
    store.update(p.owners.key, owners)
    before = store[p.key].detach().clone()
    fit(net, store, "t1", _batches(), lr=0.3, momentum=0.9)
    assert torch.equal(store[p.key][0], before[0])
    assert not torch.equal(store[p.key][1], before[1])


def test_a_registered_provider_multiplies_the_gradient():
    seen = []

    def half(net, store, task, node, param):
        seen.append((task, node, param.name))
        return torch.full(param.shape, 0.5)

    register_provider("test-half", half)
    net = jn.set_grad_rule(_net(), nodes="fc1", params=["weight", "bias"], provider="test-half")
    store = ParamStore(seed=4).realize(net)
    tp = train_plan(net, store, "t1", lr=0.1)
    assert sorted(seen) == [("t1", "fc1", "bias"), ("t1", "fc1", "weight")]
    assert len(tp.grad_mults) == 2


def test_per_parameter_freeze_and_lr_scale_win_over_the_node():
    net = jn.freeze(_net(), nodes="fc1", params="bias")
    net = jn.set_lr_scale(net, nodes="fc1", scale=0.1, params="weight", task="t1")
    store = ParamStore(seed=5).realize(net)
    groups = {g["name"]: g for g in train_plan(net, store, "t1", lr=1.0).groups}
    w, b = (store[net.node("fc1").param(n).key] for n in ("weight", "bias"))
    assert [id(p) for p in groups["lr_scale=0.1"]["params"]] == [id(w)]
    assert all(id(p) != id(b) for g in groups.values() for p in g["params"])
    # The node is frozen for t1, its weight unfrozen by name: the parameter wins.
    net2 = jn.unfreeze(jn.freeze(_net(), nodes="fc1", task="t1"), nodes="fc1", params="weight", task="t1")
    trained = {id(p) for g in train_plan(net2, store, "t1", 1.0).groups for p in g["params"]}
    assert id(store[net2.node("fc1").param("weight").key]) in trained
    assert id(store[net2.node("fc1").param("bias").key]) not in trained


def test_untrained_tensors_carry_no_gradient_while_training_and_get_it_back():
    net = jn.freeze(_net(), nodes="fc1")
    store = ParamStore(seed=6).realize(net)
    w = store[net.node("fc1").param("weight").key]
    seen = []
    from jointnet.experiments.trainer import Hooks

    class Look(Hooks):
        def after_step(self, module, info):
            seen.append((w.requires_grad, w.grad))

    x, y = _data()
    train_task(net, store, "t1", (x, y), None, TrainConfig(epochs=1, batch_size=16), Look())
    assert seen and all(rg is False and g is None for rg, g in seen)
    assert w.requires_grad  # restored


def test_policy_rewrites_validate_their_arguments():
    with pytest.raises(RewriteError, match="has no trainable parameter 'nope'"):
        jn.freeze(_net(), nodes="fc1", params="nope")
    with pytest.raises(RewriteError, match="a tensor key or a provider"):
        jn.set_grad_rule(_net(), nodes="fc1", params="weight")
    with pytest.raises(RewriteError, match="provider must be one of"):
        jn.set_grad_rule(_net(), nodes="fc1", params="weight", provider="nope")
    with pytest.raises(RewriteError, match="keep_owned applies to whole nodes"):
        jn.freeze(_net(), nodes="fc1", params="weight", keep_owned=True)
    net = jn.set_grad_rule(_net(), nodes="fc1", params="weight", tensor="k")
    assert jn.set_grad_rule(net, nodes="fc1", params="weight", tensor="k") is net  # already there
    cleared = jn.clear_grad_rules(net, nodes="fc1", params="weight")
    assert cleared.policy_for("t1", "fc1").param("weight").rules == ()


def test_a_rule_whose_tensor_does_not_broadcast_is_a_clear_error():
    net = jn.set_grad_rule(_net(), nodes="fc1", params="weight", tensor="m")
    store = ParamStore(seed=7).realize(net)
    store.put("m", torch.ones(7))
    with pytest.raises(JointNetError, match=r"gradient rule on 'fc1'.weight .* does not broadcast"):
        train_plan(net, store, "t1", 0.1)


def test_new_arguments_at_their_default_leave_records_as_they_were():
    """freeze(params=None) logs as freeze did before params existed: lineages (hence parameter
    keys and their initial values) of existing programs do not change."""
    net = jn.freeze(_net(), nodes="fc1")
    assert "params" not in net.log[-1].kwargs
    assert "params" in jn.freeze(_net(), nodes="fc1", params="bias").log[-1].kwargs
