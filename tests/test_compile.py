"""Compiled modules under torch.compile and on CUDA (when a GPU is present)."""

from __future__ import annotations

import pytest
import torch

import jointnet as jn
from jointnet import backbones
from jointnet.execution.compile import compile_net


def _net():
    net = backbones.build(backbones.vgg((1, 8, 8), cfg=(4, "M", 6), hidden=8), task="t1", n_classes=3)
    net = jn.add_task(net, task="t2")
    net = jn.bind(net, task="t2", to="t1")
    net = jn.add_head(net, task="t2", n_classes=2)
    net = jn.widen(net, node="conv1", k=2, task="t2")
    net = jn.attach_mask(net, node="fc1", task="t2", granularity="channel")
    return net


def test_compiled_module_works_under_torch_compile():
    net = _net()
    store = jn.ParamStore(seed=1).realize(net)
    x = torch.randn(4, 1, 8, 8)
    for tasks in ("t2", None):
        module = compile_net(net, store, tasks).eval()
        fast = torch.compile(module, backend="eager", fullgraph=True)
        want, got = module(x), fast(x)
        if isinstance(want, dict):
            assert want.keys() == got.keys()
            for t in want:
                assert torch.equal(want[t], got[t])
        else:
            assert torch.equal(want, got)


def test_single_task_module_has_no_unused_parameters():
    net = _net()
    store = jn.ParamStore(seed=1).realize(net)
    module = compile_net(net, store, "t1").train()
    out = module(torch.randn(4, 1, 8, 8))
    out.sum().backward()
    unused = [n for n, p in module.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    net = _net()
    store = jn.ParamStore(seed=1).realize(net)
    x = torch.randn(4, 1, 8, 8)
    want = compile_net(net, store, None).eval()(x)
    store.to("cuda")
    got = compile_net(net, store, None).eval()(x.cuda())
    for t in want:
        torch.testing.assert_close(got[t].cpu(), want[t], rtol=1e-4, atol=1e-5)
