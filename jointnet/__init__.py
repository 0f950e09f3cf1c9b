"""jointnet: task-incremental continual-learning architectures as versioned graphs.

The public API, by sub-package (each readable top-down):

- `jointnet.graph`: the immutable `JointNet` value, its layer kinds and its rewrites;
- `jointnet.execution`: the `ParamStore` and compilation to torch modules;
- `jointnet.persistence`: snapshots, `diff`, views and rendering;
- `jointnet.experiments`: data, streams, the trainer, metrics and the runner;
- `jointnet.cli`: the ``jointnet`` command line.
"""

import warnings

# torch warns on first use when NumPy is missing; jointnet never converts to NumPy, and NumPy is
# not a dependency (the base install has none), so this one message would be noise on every command.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

from jointnet.errors import (
    CompileError,
    InvariantError,
    JointNetError,
    RewriteError,
    SnapshotError,
    SpecError,
)
from jointnet.execution.compile import compile_net
from jointnet.execution.store import ParamStore
from jointnet.graph import (
    add_head,
    add_input,
    add_node,
    add_task,
    annotate,
    attach_mask,
    backbones,
    bind,
    clone_node,
    commit_mask,
    compact,
    freeze,
    own_param,
    per_task_bn,
    add_task_embedding,
    prune,
    release_mask,
    remove_task,
    reroute,
    route_through,
    clear_grad_rules,
    set_context,
    set_grad_rule,
    set_lr_scale,
    track_owners,
    unfreeze,
    widen,
)
from jointnet.graph.check import check
from jointnet.graph.draft import REWRITES, apply, replay, rewrite
from jointnet.graph.net import JointNet, Node, Param, Record, TensorRef
from jointnet.persistence import snapshot
from jointnet.persistence.snapshot import load, save

__version__ = "0.1.0"

__all__ = [
    "JointNetError", "SpecError", "RewriteError", "InvariantError", "SnapshotError", "CompileError",
    "JointNet", "Node", "Param", "Record", "TensorRef", "REWRITES", "apply", "replay", "rewrite",
    "add_input", "add_task", "add_node", "add_head", "bind", "route_through", "clone_node", "reroute",
    "remove_task", "prune", "widen", "compact", "attach_mask", "commit_mask", "release_mask",
    "track_owners", "own_param", "per_task_bn", "add_task_embedding", "freeze", "unfreeze", "set_lr_scale", "set_grad_rule", "clear_grad_rules", "set_context", "annotate", "check",
    "ParamStore", "compile_net", "snapshot", "save", "load", "backbones", "__version__",
]
