"""What the subcommands share: loading a snapshot named on the command line, ``key=value``
options, JSON output."""

from __future__ import annotations

import json
from typing import Any

from jointnet.errors import JointNetError

__all__ = ["load_snapshot", "parse_options", "to_json"]


def load_snapshot(path: str, tensors: bool = False):
    """(net, store) from a snapshot file; the store is None unless `tensors` and the file has them."""
    from pathlib import Path

    from jointnet.persistence import snapshot

    if not Path(path).is_file():
        what = "is a directory, not a snapshot file" if Path(path).is_dir() else "no such snapshot file"
        raise JointNetError(f"{what}: {path}")
    net, store = snapshot.load(path)
    return net, (store if tensors else None)


def parse_options(items: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs of the flag `what` (``-O``, ``-S``, ``-T``); values are read as JSON
    when they parse (``3``, ``0.5``, ``true``, ``null``, ``[1, 2]``, ``"x"``), else kept as
    strings. A key given twice is an error.

    >>> parse_options(["lr=0.1", "optimizer=adam", "patience=null"], "-T")
    {'lr': 0.1, 'optimizer': 'adam', 'patience': None}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise JointNetError(f"{what} takes key=value (got {item!r:.60})")
        if key in out:
            raise JointNetError(f"{what} {key} is given twice")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
