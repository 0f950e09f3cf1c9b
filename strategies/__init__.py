"""Continual-learning methods as strategies over the JointNet graph API.

Each module holds one method (or a family): a frozen config class with a ``step(net, run)``
method, its pure decision functions, and its trainer hooks. They are registered under the
``jointnet.strategies`` entry-point group (pyproject.toml); `jointnet.experiments.strategy.get`
builds one by name. Importing this package imports nothing else.
"""
