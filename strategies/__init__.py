"""Continual-learning methods as strategies over the JointNet graph API.

Importing this package registers the built-in strategies; `strategies.base.get(name)` builds one.
"""

from strategies.base import STRATEGIES, RunState, Strategy, get, register
from strategies import simple  # noqa: F401  (registers finetune, independent, frozen)
from strategies import packnet, pnn  # noqa: F401
from strategies import hat  # noqa: F401
from strategies import ewc, lwf  # noqa: F401
from strategies import l2bg  # noqa: F401  (registers l2bg, l2bg-random)

__all__ = ["STRATEGIES", "RunState", "Strategy", "get", "register"]
