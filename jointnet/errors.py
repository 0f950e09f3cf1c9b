"""The exception hierarchy: every error jointnet raises on bad input is a `JointNetError`."""

from __future__ import annotations

__all__ = [
    "JointNetError",
    "SpecError",
    "RewriteError",
    "InvariantError",
    "SnapshotError",
    "CompileError",
    "DataError",
    "StreamError",
    "StrategyError",
    "NonFiniteLoss",
]


class JointNetError(Exception):
    """Base class of every error raised by jointnet for bad input."""


class SpecError(JointNetError, ValueError):
    """A layer spec, or an argument describing one, is invalid."""


class RewriteError(JointNetError):
    """A rewrite was called with arguments that do not fit the net.

    Carries `rewrite`, `kwargs`, `version`, `task` and `node` as attributes, and its message names
    them: ``clone_node(node='conv9', task='t3') at version 7: no node 'conv9'; nodes are ...``.
    """

    def __init__(
        self,
        message: str,
        *,
        rewrite: str = "?",
        kwargs: dict | None = None,
        version: int | None = None,
    ):
        self.rewrite = rewrite
        self.kwargs = dict(kwargs or {})
        self.version = version
        self.task = self.kwargs.get("task")
        self.node = self.kwargs.get("node")
        self.reason = message
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        where = f" at version {version}" if version is not None else ""
        super().__init__(f"{rewrite}({args}){where}: {message}")


class InvariantError(JointNetError):
    """`check(net)` found a net that breaks one of the core invariants."""


class SnapshotError(JointNetError):
    """A snapshot file cannot be read: truncated, corrupted, wrong format or version."""


class CompileError(JointNetError):
    """A net (or a task of it) cannot be compiled to a torch module."""


class DataError(JointNetError):
    """A data file is missing, truncated or corrupt, or a data set cannot be found.

    The message names the file (or every place looked) and what is wrong.
    """


class StreamError(JointNetError, ValueError):
    """A stream name or option is invalid; the message names it and what is accepted."""


class StrategyError(JointNetError):
    """A strategy cannot go on: bad options, or a task it cannot handle.

    Carries `strategy` and `task` (None when the error is not about one task) as attributes; the
    message starts with them: ``hat, task 't3': the backbone has no Gate layers``.
    """

    def __init__(self, message: str, *, strategy: str, task: str | None = None):
        self.strategy = strategy
        self.task = task
        self.reason = message
        where = f"{strategy}, task {task!r}" if task is not None else strategy
        super().__init__(f"{where}: {message}")


class NonFiniteLoss(JointNetError):
    """The loss became NaN or infinite (and ``TrainConfig.allow_nonfinite`` is off); carries
    `task`, `epoch` and `batch` (1-based) and names them in its message."""

    def __init__(self, message: str, *, task: str, epoch: int, batch: int):
        super().__init__(message)
        self.task, self.epoch, self.batch = task, epoch, batch
