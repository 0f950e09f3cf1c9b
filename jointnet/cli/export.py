"""``jointnet export SNAP --task T -o FILE``: one task's network for other tools
(`jointnet.execution.export`): ``.pt2`` (torch.export) or ``.onnx`` (``pip install 'jointnet[export]'``)."""

from __future__ import annotations

import argparse

from jointnet.cli.common import load_snapshot as _load
from jointnet.errors import JointNetError

__all__ = ["add_parsers"]


def _cmd_export(args: argparse.Namespace) -> int:
    from jointnet.execution.export import export_task

    net, store = _load(args.snapshot, tensors=True)
    if store is None:
        raise JointNetError(f"{args.snapshot} holds no tensors (saved structure only); export needs them")
    r = export_task(net, store, args.task, args.output, batch=args.batch)
    shape = "x".join(str(d) for d in r.input_shape)
    check = (f"outputs equal to the compiled module's (max abs diff {r.max_abs_diff:.3g})" if r.checked
             else r.note)
    print(f"wrote {r.path} ({r.format}, task {r.task}, input [batch]x{shape}); {check}")
    return 0


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 2 (got {text!r})") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an int >= 2 (got {value})")
    return value


def add_parsers(sub) -> None:
    """Add export to the subparsers `sub`."""
    s = sub.add_parser("export", help="one task's network as a torch.export program (.pt2) or ONNX (.onnx)")
    s.add_argument("snapshot", metavar="SNAP", help="a snapshot file with tensors")
    s.add_argument("--task", required=True, help="the task to export")
    s.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="output file: FILE.pt2 (torch.export) or FILE.onnx (needs jointnet[export])")
    s.add_argument("--batch", type=_batch, default=2, metavar="N",
                   help="size of the seeded example batch traced and checked (default 2; the exported "
                        "batch dimension is dynamic)")
    s.set_defaults(func=_cmd_export)
