"""The graph value and its rewrites.

- `net`: the immutable `JointNet` and the records it is made of (`Node`, `Param`, `Mask`, ...);
- `layers`: the layer kinds; `names`: the names and bounds every entry point checks;
- `draft`: the `@rewrite` registry, `apply` and `replay`;
- the primitives by concern: `structure` (inputs, tasks, nodes, heads, routes), `channels`
  (widening, compaction, masks, owner maps), `ownership` (per-task variants), `policy` (train
  policy, inference context), `annotate`;
- `check`: the invariants; `shapes`: shape inference; `backbones`: declarative nets.

Importing this package registers every primitive.
"""

from jointnet.graph.annotate import annotate
from jointnet.graph.channels import attach_mask, commit_mask, compact, release_mask, track_owners, widen
from jointnet.graph.ownership import add_task_embedding, own_param, per_task_bn
from jointnet.graph.policy import clear_grad_rules, freeze, set_context, set_grad_rule, set_lr_scale, unfreeze
from jointnet.graph.structure import (
    add_head,
    add_input,
    add_node,
    add_task,
    bind,
    clone_node,
    prune,
    remove_task,
    reroute,
    route_through,
)
from jointnet.graph import backbones  # after the primitives it builds with

__all__ = [
    "add_input", "add_task", "add_node", "add_head", "bind", "route_through", "clone_node", "reroute",
    "remove_task", "prune", "widen", "compact", "attach_mask", "commit_mask", "release_mask",
    "track_owners", "own_param", "per_task_bn", "add_task_embedding", "freeze", "unfreeze", "set_lr_scale", "set_grad_rule", "clear_grad_rules", "set_context", "annotate",
    "backbones",
]
