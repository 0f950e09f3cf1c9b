"""Convolutions whose filters are generated from a shared tensor and task-owned tensors.

Two kinds, the transfer layers of LASEM's factorized base learners (LASEM spec §2.7). Each node
holds one *shared* tensor (every task routed through the node uses the same one) and *per-task*
generator tensors (`ParamInfo.per_task`: every task routed through the node gets its own, made
fresh by the rewrite that routes it there, and loses them when it is routed away):

- `TFConv2d` (tensor factorization, Yang & Hospedales 2017; Bulat et al. 2020): the shared core
  ``G`` (a full-size filter bank) and, per task, four square factors and a bias; the filter is
  ``W = G x1 U1 x2 U2 x3 U3 x4 U4`` (`tf_weight`).
- `DFConv2d` (the deconvolutional factorized CNN, Lee et al. 2019): the shared knowledge base
  ``K`` (a small ``c_kb``-channel image) and, per task, a deconvolution filter ``D`` and bias
  ``beta`` and a contraction tensor ``T`` and the conv bias; the filter is
  ``W = tensordot(conv_transpose(K, D, stride 2) + beta, T)`` (`df_weight`).

Both then convolve like `jointnet.graph.layers.Conv2d` (square kernel, stride, zero padding).
Channel growth cannot pass them (``channels = "none"``).

Initialisation: the spec's code draws these tensors from TensorFlow's default Glorot-uniform,
``U(-b, b)`` with ``b = sqrt(6 / (fan_in + fan_out))``. The store's fresh schemes draw
``U(-1/sqrt(f), 1/sqrt(f))`` for an integer ``f``; each tensor declares ``f = round((fan_in +
fan_out) / 6)`` (at least 1) with TensorFlow's fans of the tensor's TF shape, which is Glorot's
bound up to that rounding (a strategy may write exact values with `ParamStore.update`).

>>> TFConv2d(in_ch=4, out_ch=8, padding=1).out_shape([(4, 10, 10)])
(8, 10, 10)
>>> sorted(n for n, i in DFConv2d(in_ch=4, out_ch=8, padding=1, kb_ch=2, ts_ch=6).params().items() if i.per_task)
['bias', 'contract', 'deconv', 'deconv_bias']
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
import torch.nn.functional as F

from jointnet.errors import SpecError
from jointnet.graph.layers.base import Layer, ParamInfo, nonneg, pos, register_spec

__all__ = ["TFConv2d", "DFConv2d", "tf_weight", "df_weight", "glorot_fan"]


def glorot_fan(fan_in: int, fan_out: int) -> int:
    """The store's ``fan_in`` whose bound ``1/sqrt(f)`` is Glorot's ``sqrt(6/(fan_in+fan_out))``
    up to rounding ``f`` to an int (at least 1).

    >>> glorot_fan(3, 3), glorot_fan(144, 288)
    (1, 72)
    """
    return max(1, round((fan_in + fan_out) / 6))


def tf_weight(core: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, u3: torch.Tensor,
              u4: torch.Tensor) -> torch.Tensor:
    """``W = G x1 U1 x2 U2 x3 U3 x4 U4`` in torch's filter layout ``(out, in, kh, kw)``.

    The spec's modes are TensorFlow's ``[kh, kw, in, out]``: U1 acts on the kernel rows, U2 on
    its columns, U3 on the input channels, U4 on the output channels; each mode product
    contracts G's mode with the factor's first axis (``tensordot(G, U, [[m], [0]])``), keeping
    the mode's place.

    >>> g = torch.randn(2, 3, 3, 3); eye = torch.eye
    >>> torch.equal(tf_weight(g, eye(3), eye(3), eye(3), eye(2)), g)
    True
    """
    w = torch.einsum("abcd,ao->obcd", core, u4)
    w = torch.einsum("obcd,bi->oicd", w, u3)
    w = torch.einsum("oicd,ch->oihd", w, u1)
    return torch.einsum("oihd,dw->oihw", w, u2)


def df_weight(kb: torch.Tensor, deconv: torch.Tensor, deconv_bias: torch.Tensor,
              contract: torch.Tensor, padding: int) -> torch.Tensor:
    """DF-CNN's filter: ``Z = conv_transpose(K, D, stride 2) + beta`` (``c_ts x k x k``, no
    nonlinearity, as LASEM's ``cnn_para_activation_fn=None``), then ``W = tensordot(Z, T)`` over
    ``c_ts``, in torch's layout ``(out, in, k, k)``.

    `padding` is the transposed convolution's, ``(ts_kernel - 1) // 2``: with it the output is
    ``(h - 1) * 2 + 1 = k`` wide, as TensorFlow's SAME ``conv2d_transpose`` to ``k x k`` gives.
    """
    z = F.conv_transpose2d(kb.unsqueeze(0), deconv, deconv_bias, stride=2, padding=padding)[0]
    return torch.einsum("chw,cio->oihw", z, contract)


class _GeneratedConv(Layer):
    """What both kinds share: a conv of ``in_ch -> out_ch`` with a generated square filter."""

    in_field: ClassVar[str] = "in_ch"
    out_field: ClassVar[str] = "out_ch"
    channels: ClassVar[str] = "none"  # the filter is generated: no channel block to grow
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    padding: int

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if len(s) != 3 or s[0] != self.in_ch:
            raise SpecError(f"{self.short()} expects input ({self.in_ch}, H, W), got {s}")
        h, w = ((d + 2 * self.padding - self.kernel) // self.stride + 1 for d in s[1:])
        if h <= 0 or w <= 0:
            raise SpecError(f"{self.short()} maps input {s} to an empty output")
        return (self.out_ch, h, w)

    def _conv(self, x: str, weight: str, bias: str) -> str:
        return f"F.conv2d({x}, {weight}, {bias}, {self.stride}, {self.padding})"

    def _extra(self) -> str:
        extra = f", s{self.stride}" if self.stride != 1 else ""
        return extra + (f", p{self.padding}" if self.padding else "")


@register_spec
@attrs.frozen
class TFConv2d(_GeneratedConv):
    """A tensor-factorized conv: shared core ``G``, per-task factors ``U1..U4`` and bias.

    Parameters: ``core`` ``(out, in, k, k)`` (shared; full size, no rank reduction, LASEM spec
    §2.7); per task ``u1``, ``u2`` ``(k, k)``, ``u3`` ``(in, in)``, ``u4`` ``(out, out)`` and
    ``bias`` ``(out,)``. The filter is `tf_weight` of them.
    """

    kind: ClassVar[str] = "TFConv2d"
    aliases: ClassVar[tuple[str, ...]] = ("tfconv",)
    runtime: ClassVar[dict] = {"_tf_weight": tf_weight}
    in_ch: int = attrs.field(validator=pos)
    out_ch: int = attrs.field(validator=pos)
    kernel: int = attrs.field(default=3, validator=pos)
    stride: int = attrs.field(default=1, validator=pos)
    padding: int = attrs.field(default=0, validator=nonneg)

    def params(self):
        k, i, o = self.kernel, self.in_ch, self.out_ch
        return {
            "core": ParamInfo((o, i, k, k), init="kaiming", fan_in=glorot_fan(k * k * i, k * k * o)),
            "u1": ParamInfo((k, k), init="kaiming", fan_in=glorot_fan(k, k), per_task=True),
            "u2": ParamInfo((k, k), init="kaiming", fan_in=glorot_fan(k, k), per_task=True),
            "u3": ParamInfo((i, i), init="kaiming", fan_in=glorot_fan(i, i), per_task=True),
            "u4": ParamInfo((o, o), init="kaiming", fan_in=glorot_fan(o, o), per_task=True),
            "bias": ParamInfo((o,), init="fan_in_uniform", fan_in=glorot_fan(o, o), per_task=True),
        }

    def emit(self, ins, p):
        w = f"_tf_weight({p['core']}, {p['u1']}, {p['u2']}, {p['u3']}, {p['u4']})"
        return self._conv(ins[0], w, p["bias"])

    def short(self):
        return f"TFConv2d({self.in_ch}->{self.out_ch}, k{self.kernel}{self._extra()})"


def _odd(_inst, a, value) -> None:
    pos(_inst, a, value)
    if value % 2 == 0:
        raise SpecError(f"{a.name} must be odd (got {value!r})")


@register_spec
@attrs.frozen
class DFConv2d(_GeneratedConv):
    """A deconvolutional factorized conv: shared knowledge base, per-task generator tensors.

    Parameters: ``kb`` ``(kb_ch, h, h)`` with ``h = (kernel - 1) / 2 + 1`` (so ``kernel = (h - 1)
    * 2 + 1``, LASEM spec §2.7; the kernel must be odd), shared; per task ``deconv`` ``(kb_ch,
    ts_ch, ts_kernel, ts_kernel)`` (torch's `conv_transpose2d` layout), ``deconv_bias``
    ``(ts_ch,)``, ``contract`` ``(ts_ch, in, out)`` and ``bias`` ``(out,)``. The filter is
    `df_weight` of them.
    """

    kind: ClassVar[str] = "DFConv2d"
    aliases: ClassVar[tuple[str, ...]] = ("dfconv",)
    runtime: ClassVar[dict] = {"_df_weight": df_weight}
    in_ch: int = attrs.field(validator=pos)
    out_ch: int = attrs.field(validator=pos)
    kb_ch: int = attrs.field(validator=pos)
    ts_ch: int = attrs.field(validator=pos)
    kernel: int = attrs.field(default=3, validator=_odd)
    ts_kernel: int = attrs.field(default=3, validator=_odd)
    stride: int = attrs.field(default=1, validator=pos)
    padding: int = attrs.field(default=0, validator=nonneg)

    @property
    def kb_size(self) -> int:
        """``h``, the knowledge base's side: ``kernel = (h - 1) * 2 + 1``."""
        return (self.kernel - 1) // 2 + 1

    def params(self):
        h, s, kb, ts, i, o = self.kb_size, self.ts_kernel, self.kb_ch, self.ts_ch, self.in_ch, self.out_ch
        return {
            "kb": ParamInfo((kb, h, h), init="kaiming", fan_in=glorot_fan(h * h, kb * h)),
            "deconv": ParamInfo((kb, ts, s, s), init="kaiming", fan_in=glorot_fan(s * s * ts, s * s * kb),
                                per_task=True),
            "deconv_bias": ParamInfo((ts,), init="fan_in_uniform", fan_in=glorot_fan(ts, ts), per_task=True),
            "contract": ParamInfo((ts, i, o), init="kaiming", fan_in=glorot_fan(ts * i, ts * o), per_task=True),
            "bias": ParamInfo((o,), init="fan_in_uniform", fan_in=glorot_fan(o, o), per_task=True),
        }

    def emit(self, ins, p):
        w = (f"_df_weight({p['kb']}, {p['deconv']}, {p['deconv_bias']}, {p['contract']}, "
             f"{(self.ts_kernel - 1) // 2})")
        return self._conv(ins[0], w, p["bias"])

    def short(self):
        return (f"DFConv2d({self.in_ch}->{self.out_ch}, k{self.kernel}{self._extra()}, "
                f"kb {self.kb_ch}x{self.kb_size}x{self.kb_size}, ts {self.ts_ch}x{self.ts_kernel}x{self.ts_kernel})")
