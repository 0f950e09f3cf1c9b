"""jointnet: task-incremental continual-learning architectures as versioned graphs."""

from jointnet.errors import (
    CompileError,
    InvariantError,
    JointNetError,
    RewriteError,
    SnapshotError,
    SpecError,
)
from jointnet.net import JointNet, Node, Param, Record, TensorRef
from jointnet.rewrite import REWRITES, apply, replay, rewrite
from jointnet.rewrites import (
    add_head,
    add_input,
    add_node,
    add_task,
    annotate,
    attach_mask,
    bind,
    clone_node,
    commit_mask,
    freeze,
    per_task_bn,
    prune,
    release_mask,
    remove_task,
    reroute,
    route_through,
    set_lr_scale,
    unfreeze,
    widen,
)
from jointnet.params import ParamStore
from jointnet.compile import compile_net
from jointnet import backbones

__version__ = "0.1.0"
