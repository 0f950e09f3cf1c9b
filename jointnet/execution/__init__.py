"""Execution and parameters: the one way to run a net.

- `ParamStore` (`store`): the tensors, written only through its API;
- `Context`, `plan` (`program`): what a call runs, for tasks or route views, with shared prefixes
  computed once and any node's output captured;
- `compile_net` (`compile`): the plan as a torch module; `run`: compile (cached) and call it once;
- `masks`: mask transforms; `optim`: the optimizer groups and gradient rules a train policy asks for.

Everything that runs a net (training, evaluation, a strategy's activations or teachers, the test
oracle's comparisons) goes through `compile_net` / `run`.
"""

from jointnet.execution.compile import CompiledNet, Outputs, compile_net, run
from jointnet.execution.program import Context, Plan, plan, task_context
from jointnet.execution.store import Checkpoint, ParamStore

__all__ = [
    "ParamStore", "Checkpoint", "Context", "Plan", "plan", "task_context", "compile_net",
    "CompiledNet", "run", "Outputs",
]
