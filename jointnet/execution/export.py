"""Export one task's network for other tools: a `torch.export` program (``.pt2``) or ONNX
(``.onnx``, with the optional extra ``jointnet[export]``).

What is exported is the task's compiled module (`compile_net`) in eval mode, called with the
task's recorded inference context (`task_context`: HAT's gate scale, masks at their deterministic
values), wrapped so that its only input is the batch: ``program(x) -> logits``. The batch
dimension is dynamic (any size >= 1); the other dimensions are the task's input shape.

Every export is checked before the file is written: the exported program runs on a seeded
example batch and must give the compiled module's outputs (``torch.export``: within `ATOL`, in
practice bit-identical on CPU; ONNX: within `ONNX_ATOL`, checked with onnxruntime when it is
installed, else the result says it was not checked). Files are written atomically (a temporary
file beside the target, then a rename).

A compiled module itself cannot be pickled (``torch.save(module)``): its forward is generated
code, and loading pickles would run code. Save the net with `jointnet.save` or export a task.

>>> import tempfile, torch
>>> from jointnet import backbones
>>> from jointnet.execution.store import ParamStore
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> with tempfile.TemporaryDirectory() as d:
...     r = export_task(net, ParamStore().realize(net), "t1", d + "/t1.pt2")
...     program = torch.export.load(d + "/t1.pt2").module()
...     print(r.format, r.input_shape, r.checked, tuple(program(torch.zeros(3, 4)).shape))
pt2 (4,) True (3, 2)
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import attrs
import torch
from torch import nn

from jointnet.errors import JointNetError
from jointnet.execution.compile import CompiledNet, compile_net
from jointnet.execution.program import Context, task_context
from jointnet.execution.store import ParamStore
from jointnet.graph.net import JointNet
from jointnet.persistence.fileio import write_bytes_atomically

__all__ = ["ATOL", "ONNX_ATOL", "FORMATS", "ExportResult", "TaskInference", "example_input", "export_task",
           "task_module"]

ATOL = 1e-6
"""Largest absolute difference allowed between the torch.export program and the compiled module."""
ONNX_ATOL = 1e-5
"""Largest absolute difference allowed between onnxruntime's outputs and the compiled module's."""
FORMATS = {".pt2": "pt2", ".onnx": "onnx"}
"""File suffix -> export format."""
EXTRA = "pip install 'jointnet[export]'"


class TaskInference(nn.Module):
    """A compiled task module called with a fixed `Context`: ``forward(x) -> logits``."""

    def __init__(self, compiled: CompiledNet, context: Context):
        super().__init__()
        self.compiled = compiled
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x, self.context)


@attrs.frozen
class ExportResult:
    """What `export_task` wrote: the file, its format, the task, the input shape (without the
    batch), whether the outputs were checked and the largest absolute difference seen."""

    path: Path
    format: str
    task: str
    input_shape: tuple[int, ...]
    checked: bool
    max_abs_diff: float | None
    note: str = ""


def _fail(task: str, message: str) -> JointNetError:
    return JointNetError(f"export(task={task!r}): {message}")


def _input_shape(net: JointNet, task: str) -> tuple[int, ...]:
    spec = net.node(net.tasks[task].input).spec
    return tuple(int(d) for d in spec.shape)


def task_module(net: JointNet, store: ParamStore, task: str) -> TaskInference:
    """`task`'s network for inference: a fresh compiled module (not the store's cached one) in
    eval mode with the task's inference context.

    Raises:
        JointNetError: `task` is not a task of the net or has no head yet.
    """
    if task not in net.tasks:
        raise _fail(task, f"no such task; tasks are {', '.join(net.tasks) or 'none'}")
    if net.tasks[task].head is None:
        raise _fail(task, "the task has no head yet, so its network is not complete")
    module = compile_net(net, store, task, cache=False)
    return TaskInference(module, task_context(net, task)).eval()


def example_input(net: JointNet, task: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded batch of `batch` uniform inputs of `task`'s input shape (the export's example)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *_input_shape(net, task)), generator=g)


def _target(path: str | os.PathLike, task: str) -> tuple[Path, str]:
    path = Path(path)
    if path.is_dir():
        raise _fail(task, f"{str(path)!r} is a directory; give a file name")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise _fail(task, f"cannot export to {str(path)!r}: the file name must end in "
                    + " or ".join(FORMATS))
    if not path.parent.is_dir():
        raise _fail(task, f"the folder of {str(path)!r} does not exist")
    return path, fmt


def export_task(net: JointNet, store: ParamStore, task: str, path: str | os.PathLike, *,
                batch: int = 2, seed: int = 0) -> ExportResult:
    """Export `task`'s network (`task_module`) to `path`: ``.pt2`` (`torch.export`, loaded back
    with ``torch.export.load(path).module()``) or ``.onnx`` (needs ``onnx`` and ``onnxscript``:
    ``pip install 'jointnet[export]'``; checked with ``onnxruntime`` when it is installed).

    Args:
        batch: size of the example batch traced and checked (>= 2, so that the batch dimension
            stays dynamic).
        seed: seeds the example batch (`example_input`).

    Raises:
        JointNetError: unknown or incomplete task, a bad file name, a missing optional package,
            an export the exporter refuses, or outputs that differ from the compiled module's.
    """
    path, fmt = _target(path, task)
    if type(batch) is not int or batch < 2:
        raise _fail(task, f"batch must be an int >= 2 (got {batch!r})")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise _fail(task, f"ONNX export needs the optional packages onnx and onnxscript ({e.name} "
                        f"is missing): {EXTRA}") from None
    module = task_module(net, store, task)
    x = example_input(net, task, batch, seed)
    with torch.no_grad():
        want = module(x)
    dims = {"x": {0: torch.export.Dim("batch", min=1)}}
    if fmt == "pt2":
        try:
            program = torch.export.export(module, (x,), dynamic_shapes=dims)
        except Exception as e:  # the exporter's own errors are many kinds; say which, in one line
            raise _fail(task, f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        with torch.no_grad():
            got = program.module()(x)
        diff = float((got - want).abs().max()) if want.numel() else 0.0
        if not diff <= ATOL:
            raise _fail(task, f"the exported program's outputs differ from the compiled module's by {diff:g} "
                        f"(> {ATOL:g}); nothing written")
        buf = io.BytesIO()
        torch.export.save(program, buf)
        write_bytes_atomically(path, buf.getvalue())
        return ExportResult(path, fmt, task, _input_shape(net, task), True, diff)
    return _export_onnx(module, x, want, dims, path, task, _input_shape(net, task))


def _export_onnx(module, x, want, dims, path: Path, task: str, shape) -> ExportResult:
    import logging
    import warnings

    # torch's ONNX registry logs one warning per torchvision op when torchvision is missing (it is
    # optional here, and a jointnet net uses none of those ops): quiet for the call only.
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(module, (x,), None, dynamo=True, dynamic_shapes=dims,
                                             input_names=["x"], output_names=["logits"], verbose=False)
    except Exception as e:
        raise _fail(task, f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        registry.setLevel(level)
    buf = io.BytesIO()
    onnx_program.save(buf)
    data = buf.getvalue()
    try:
        import onnxruntime
    except ImportError:
        checked, diff, note = False, None, f"outputs not checked: onnxruntime is not installed ({EXTRA})"
    else:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        diff = float((got - want).abs().max()) if want.numel() else 0.0
        if not diff <= ONNX_ATOL:
            raise _fail(task, f"onnxruntime's outputs differ from the compiled module's by {diff:g} "
                        f"(> {ONNX_ATOL:g}); nothing written")
        checked, note = True, ""
    write_bytes_atomically(path, data)
    return ExportResult(path, "onnx", task, shape, checked, diff, note)
