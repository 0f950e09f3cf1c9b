"""The exception hierarchy: every error jointnet raises on bad input is a `JointNetError`."""

from __future__ import annotations

__all__ = [
    "JointNetError",
    "SpecError",
    "RewriteError",
    "InvariantError",
    "SnapshotError",
    "CompileError",
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
