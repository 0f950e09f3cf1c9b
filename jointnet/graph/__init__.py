"""The graph value and its rewrites.

- `net`: the immutable `JointNet` and the records it is made of (`Node`, `Param`, `Mask`, ...);
- `layers`: the layer kinds; `names`: the names and bounds every entry point checks;
- `draft`: the `@rewrite` registry, `apply` and `replay`;
- the primitives by concern: `structure` (inputs, tasks, nodes, heads, routes), `channels`
  (widening, masks), `ownership` (per-task variants), `policy` (train policy), `annotate`;
- `check`: the invariants; `shapes`: shape inference; `backbones`: declarative nets.

Importing this package registers every primitive.
"""

from jointnet.graph.annotate import annotate
from jointnet.graph.channels import attach_mask, commit_mask, release_mask, widen
from jointnet.graph.ownership import add_task_embedding, per_task_bn
from jointnet.graph.policy import freeze, set_lr_scale, unfreeze
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
    "remove_task", "prune", "widen", "attach_mask", "commit_mask", "release_mask", "freeze",
    "unfreeze", "set_lr_scale", "per_task_bn", "add_task_embedding", "annotate", "backbones",
]
