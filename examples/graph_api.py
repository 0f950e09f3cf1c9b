"""A walk through the graph API: build, grow three tasks with bind / clone / widen, train, save,
load, diff.

Run: ``python examples/graph_api.py`` (CPU, a few seconds; synthetic data, nothing downloaded).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import jointnet as jn
from jointnet import backbones, snapshot
from jointnet.execution.compile import compile_net
from jointnet.persistence.diff import diff
from jointnet.execution.optim import evaluate, fit
from jointnet.persistence.views import param_counts


def synthetic_task(seed: int, n: int = 512, classes: int = 2):
    """Images whose class is a fixed random pattern plus noise (one pattern set per task)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 1, 28, 28, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = patterns[y] + 0.8 * torch.randn(n, 1, 28, 28, generator=g)
    return x, y


def batches(x, y, size=64, epochs=2):
    for _ in range(epochs):
        for i in range(0, len(x), size):
            yield x[i : i + size], y[i : i + size]


def main(out_dir: Path | None = None) -> None:
    torch.manual_seed(0)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="jointnet-example-"))
    data = {t: synthetic_task(i) for i, t in enumerate(["t1", "t2", "t3"])}

    # 1. A backbone for the first task, declared as a list of layers.
    net = backbones.build(backbones.small_conv((1, 28, 28), widths=(8, 16), hidden=32),
                          task="t1", n_classes=2)
    store = jn.ParamStore(seed=0).realize(net)
    fit(net, store, "t1", batches(*data["t1"]))
    v1 = net
    print(net, "\n")

    # 2. Task t2 binds to t1's route (shares every layer) and gets its own conv2 (a copy).
    net = jn.add_task(net, task="t2")
    net = jn.bind(net, task="t2", to="t1")
    net = jn.add_head(net, task="t2", n_classes=2)
    net = jn.clone_node(net, node="conv2", task="t2", init="copy")
    # Shared layers train at 0.1x the learning rate for t2 (L2BG's policy).
    shared = [n for n in net.route("t2") if len(net.users(n)) > 1 and net.node(n).params]
    net = jn.set_lr_scale(net, nodes=shared, scale=0.1, task="t2")

    # 3. Task t3 binds to t2, widens conv1 by 8 channels it owns (t1 and t2 never see them) and
    #    gets a fresh fc1 of its own.
    net = jn.add_task(net, task="t3")
    net = jn.bind(net, task="t3", to="t2")
    net = jn.add_head(net, task="t3", n_classes=2)
    net = jn.widen(net, node="conv1", k=8, task="t3")
    net = jn.clone_node(net, node="fc1", task="t3", init="fresh")

    store.realize(net)  # creates exactly the tensors the rewrites asked for
    probe = data["t1"][0][:32]
    before = compile_net(net, store, "t1").eval()(probe).detach()
    fit(net, store, "t2", batches(*data["t2"]))
    # Freeze what t3 shares, except its own new channels in conv1 (keep_owned).
    shared = [n for n in net.route("t3") if len(net.users(n)) > 1 and net.node(n).params]
    net = jn.freeze(net, nodes=shared, task="t3", keep_owned=True)
    fit(net, store, "t3", batches(*data["t3"], epochs=6))  # fewer free tensors: more epochs
    after = compile_net(net, store, "t1").eval()(probe).detach()
    print(net, "\n")
    print("t1's outputs after training t2 (0.1x on shared layers) and t3 (shared frozen, own channels train):",
          f"max |delta| = {float((after - before).abs().max()):.2e}")
    for t, (x, y) in data.items():
        print(f"accuracy {t}: {evaluate(net, store, t, x, y):.3f}")
    print("parameters:", param_counts(net))

    # 4. Save, load, and compare.
    path = snapshot.save(out_dir / "final.jn", net, store)
    snapshot.save(out_dir / "first.jn", v1, store)
    loaded, loaded_store = snapshot.load(path)
    assert loaded == net
    x = data["t3"][0][:8]
    same = torch.equal(compile_net(net, store, "t3").eval()(x), compile_net(loaded, loaded_store, "t3").eval()(x))
    print(f"\nsnapshot {path}: equal net, bit-identical outputs = {same}")
    print("\nwhat changed since the first task:\n" + str(diff(v1, net)))
    print(f"\ninspect it:  jointnet inspect {path}\n             jointnet log {path}"
          f"\n             jointnet diff {out_dir / 'first.jn'} {path}")


if __name__ == "__main__":
    main()
