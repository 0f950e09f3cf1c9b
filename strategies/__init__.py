"""Continual-learning methods as strategies over the JointNet graph API.

Importing this package registers the built-in strategies; `strategies.base.get(name)` builds one.
"""

from strategies.base import STRATEGIES, RunState, Strategy, get, register
from strategies import simple  # noqa: F401  (registers finetune, independent, frozen)

__all__ = ["STRATEGIES", "RunState", "Strategy", "get", "register"]
