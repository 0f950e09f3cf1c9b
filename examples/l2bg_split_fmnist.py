"""L2BG end to end on split Fashion-MNIST: bind to the least conflicting task, grow the nucleus of
conflicting layers, explain every choice, replay the grow sequence, draw the final JointNet.

Run (CPU, under a minute; needs the Fashion-MNIST data package, nothing is downloaded)::

    python examples/l2bg_split_fmnist.py [--out DIR] [--n-train 600] [--epochs 2] [--delta 0.55]

It writes a `jointnet run` directory (``DIR/run``: snapshots, results.json), the drawing
``DIR/l2bg.dot`` (and ``DIR/l2bg.svg`` when Graphviz's ``dot`` is installed), and prints the
accuracy matrix, the grow sequence, the conflicts behind each bind-grow step and the multi-task
gain against the independent nets L2BG trained on the way.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from jointnet import snapshot
from jointnet.persistence.render import render
from jointnet.experiments.runner import RunSpec, print_results, run
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import TrainConfig
from jointnet.persistence.views import param_counts
from strategies.l2bg import PROV, grow_sequence, net_gain
from strategies.l2bg_search import replay_sequence


def main(argv=None, out_dir: Path | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--n-train", type=int, default=600, help="training images per task (before the val split)")
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--delta", type=float, default=0.55)
    p.add_argument("--n-tasks", type=int, default=5)
    args = p.parse_args(argv)
    out = Path(out_dir or args.out or tempfile.mkdtemp(prefix="l2bg-example-"))
    if (out / "run").exists():
        shutil.rmtree(out / "run")
    options = {"delta": args.delta, "rsa_samples": 100}
    stream_options = {"n_tasks": args.n_tasks, "n_train_per_task": args.n_train, "n_test_per_task": args.n_test}
    config = {"epochs": args.epochs, "batch_size": 32}
    spec = RunSpec("l2bg", "split-fmnist", seed=0, strategy_options=options, stream_options=stream_options,
                   config=config)
    results = run(spec, out / "run", echo=lambda m: None)
    print_results(results)

    net, _ = snapshot.load(out / "run" / results["snapshots"][-1])
    print("\ngrow sequence (task -> bound task, delta, grown slots):")
    for e in grow_sequence(net):
        print(f"  {e['task']} -> {e['bind'] or '(first task)'}  delta={e['delta']}  grown={e['grow']}")
    print("\nwhy (RSA conflict per slot with the bound task; probability; in the nucleus?):")
    for t, info in list(net.tasks.items())[1:]:
        prov = info.annotations[PROV]
        cc = {b: round(c["norm"], 3) for b, c in prov["conflicts"].items()}
        slots = ", ".join(f"{s['slot']}: rho={s['conflict']:.3f} p={s['prob']:.2f}{' *' if s['in_nucleus'] else ''}"
                          for s in prov["slots"])
        print(f"  {t}: task conflicts {cc} -> bind {prov['bound_to']}; {slots}")
    counts = param_counts(net)
    gain = net_gain(net)
    print(f"\nparameters {counts['total']} (shared {counts['shared']}); multi-task gain vs independent nets "
          f"(validation) {gain:+.2f}%")

    # The grow sequence rebuilds the same net with the same accuracies (CPU, same seed).
    stream = get_stream("split-fmnist", seed=0, **stream_options)
    again = replay_sequence(grow_sequence(net), stream, TrainConfig(**config), seed=0, options=options)
    same = again.net.structure() == net.structure() and again.matrix == results["matrix"]
    print(f"replaying the grow sequence gives the same graph and accuracies: {same}")

    target = out / ("l2bg.svg" if shutil.which("dot") else "l2bg.dot")
    written = render(net, target)
    print("drawing: " + ", ".join(str(w) for w in written))
    print(f"inspect it: jointnet inspect {out / 'run' / results['snapshots'][-1]}")
    return {"results": results, "replay_same": same, "written": written, "gain": gain}


if __name__ == "__main__":
    main()
