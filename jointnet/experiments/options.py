"""Every option of a run, described and checked: a strategy's (its attrs fields), a stream's (its
function's keyword arguments) and the trainer's (`TrainConfig` fields).

`describe(name)` lists the options of a strategy, a stream or ``"trainer"`` as `Option` values
(name, type, default, one line of doc), which ``jointnet options NAME`` prints. The doc line
comes from the field's ``metadata["doc"]`` when it has one, else from the docstrings: a bullet
item starting with ````name```` (the "Options" sections of strategies and of `TrainConfig`), an
``Args:`` entry (streams), or the first sentence that mentions ````name````.

The checks (`check_strategy_options`, `check_stream_options`, `check_train_options`,
`check_device`) run before a run writes anything. Each raises a one-line `JointNetError` naming
the option, the flag that sets it (``-O``, ``-S``, ``-T``) and what it accepts; an unknown key
gets the closest known ones ("did you mean"). Types are checked against the annotations (a
JSON number for ``float``, not a bool for ``int``, a list for sequences); ranges by the field's
own attrs validators, plus `TRAIN_LIMITS` for the trainer fields that have none.

>>> [o.name for o in describe("trainer")[2]][:3]
['epochs', 'batch_size', 'lr']
>>> check_train_options({"lr": -1})
Traceback (most recent call last):
...
jointnet.errors.JointNetError: trainer option 'lr' (-T) must be a number > 0 (got -1)
>>> check_train_options({"lrr": 0.1})
Traceback (most recent call last):
...
jointnet.errors.JointNetError: unknown trainer option 'lrr' (-T); did you mean 'lr'? Options: epochs, batch_size, lr, optimizer, momentum, weight_decay, schedule, step_size, lr_factor, lr_patience, min_lr, patience, clip_grad, device, amp, progress, eval_batch_size, seed, allow_nonfinite, threads
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from jointnet.errors import JointNetError

__all__ = [
    "Option", "describe", "strategy_options", "stream_options", "trainer_options", "did_you_mean",
    "check_strategy_options", "check_stream_options", "check_train_options", "check_device",
    "effective_strategy_options", "json_safe", "same_value", "TRAIN_LIMITS",
]


@attrs.frozen
class Option:
    """One option: its name, type (as annotated), default (JSON-safe; `REQUIRED` when there is
    none) and one line of doc ("" when nothing documents it)."""

    name: str
    type: str
    default: Any
    doc: str


REQUIRED = "(required)"

#: Ranges of the `TrainConfig` fields without a validator of their own (attrs validators).
TRAIN_LIMITS: dict[str, Any] = {
    "momentum": attrs.validators.ge(0),
    "weight_decay": attrs.validators.ge(0),
    "step_size": attrs.validators.gt(0),
    "lr_factor": attrs.validators.gt(0),
    "lr_patience": attrs.validators.ge(1),
    "min_lr": attrs.validators.ge(0),
    "patience": attrs.validators.optional(attrs.validators.ge(1)),
    "clip_grad": attrs.validators.optional(attrs.validators.gt(0)),
    "eval_batch_size": attrs.validators.gt(0),
    "seed": attrs.validators.ge(0),
}


# ---- JSON values ---------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data: tuples become lists, mapping keys strings, non-finite floats
    and other objects their ``repr`` (so a record never holds NaN or a Python object)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return repr(value)


def same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (``100 == 100.0``), but a bool only equals a bool,
    and a list equals a tuple with the same items."""
    a, b = json_safe(a), json_safe(b)
    if _number(a) and _number(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- doc lines -----------------------------------------------------------------------------------

_BULLET = re.compile(r"^(\s*)[-*]\s+")
_ARG = re.compile(r"^(\s*)(\w+(?:\s*,\s*\w+)*)\s*:(?:\s+(.*))?$")
_SECTION = re.compile(r"^\s*\**(Args|Arguments|Parameters|Options|Keyword Args)\b.*:\**\s*$")


def _items(doc: str) -> list[tuple[str, str]]:
    """A docstring cut into items, each ``(kind, text)`` with whitespace collapsed: ``"arg"`` for
    an entry of an Args/Parameters section (``names: text``), ``"bullet"`` for a bullet item
    (marker removed), ``"text"`` for a paragraph."""
    items: list[tuple[str, str, int]] = []  # kind, text, indent of the item's first line
    section = False
    for line in inspect.cleandoc(doc).splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            items.append(("gap", "", 0))
            continue
        if _SECTION.match(line) and not _BULLET.match(line):
            section = line.strip().rstrip(":*").strip("*") in ("Args", "Arguments", "Parameters", "Keyword Args")
            items.append(("gap", "", 0))
            continue
        if section and indent == 0:
            section = False
        arg = _ARG.match(line) if section else None
        prev = items[-1] if items else ("gap", "", 0)
        if arg and (prev[0] != "arg" or indent <= prev[2]):
            items.append(("arg", line.strip(), indent))
        elif _BULLET.match(line):
            items.append(("bullet", _BULLET.sub("", line, count=1).strip(), indent))
        elif prev[0] == "gap" or (prev[0] != "arg" and indent < prev[2]):
            items.append(("text", line.strip(), indent))
        else:
            items[-1] = (prev[0], f"{prev[1]} {line.strip()}", prev[2])
    return [(k, t) for k, t, _ in items if k != "gap"]


def _outside(text: str, target: str) -> int:
    """Index of the first `target` in `text` outside parentheses, brackets and ``literals``, or -1."""
    depth, literal = 0, False
    for i in range(len(text)):
        if text.startswith("``", i):
            literal = not literal
        if literal:
            continue
        ch = text[i]
        depth += ch in "(["
        depth -= ch in ")]"
        if depth <= 0 and text.startswith(target, i):
            return i
    return -1


def _skip_default(rest: str) -> str:
    """The text after an option's name without its default marker: ``(default): text``,
    ``= default: text`` or ``: text``; ``= a | b`` with no text after keeps the choices."""
    rest = rest.strip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                after = rest[i + 1:].lstrip()
                after = after[1:].lstrip() if after[:1] in (":", ",") else after
                return after if len(after.strip(" .;")) > 2 else rest[1:i]
        return rest
    if rest.startswith("="):
        cut = _outside(rest, ": ")
        return rest[cut + 2:] if cut >= 0 else rest[1:]
    return rest[1:] if rest.startswith(":") else rest


def _clean(text: str, width: int = 110) -> str:
    """One line: markup gone, the first sentence, at most `width` characters."""
    text = " ".join(text.replace("``", "").replace("`", "").replace("**", "").split()).strip(" ;,")
    m = re.search(r"(?<=[a-z0-9)\]'\"])\. (?=[A-Z\"'])", text)
    if m:
        text = text[: m.start() + 1]
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0].rstrip(" ,;:") + "..."
    return text


def _doc_line(name: str, docs: Iterable[str | None]) -> str:
    """The one line that documents option `name` in `docs`, best first: an Args entry or an item
    that starts with ````name```` (``- ``name`` = default: text``, ``Options: ``name`` (...)``),
    then a clause after ``; `` that starts with it, then the sentence that mentions it; ""
    when none does."""
    items = [it for d in docs if d for it in _items(d)]
    literal = f"``{name}``"
    for kind, text in items:  # an entry or a bullet of its own
        if kind == "arg":
            names, _, rest = text.partition(":")
            if name in [n.strip() for n in names.split(",")]:
                return _clean(rest)
        elif kind == "bullet" and text.startswith(literal):
            clause = text[len(literal):]
            cut = _outside(clause, "; ``")  # where the next option of the same bullet starts
            return _clean(_skip_default(clause[:cut] if cut >= 0 else clause))
    for _, text in items:  # "Options: ``name`` (...)" in a paragraph
        if re.sub(r"^\**options\b[^:]*:\**\s*", "", text, flags=re.I).startswith(literal):
            return _clean(_skip_default(text[text.index(literal) + len(literal):]))
    for _, text in items:  # a clause after "; "
        for m in re.finditer(re.escape(literal), text):
            before = text[: m.start()]
            if before.rstrip().endswith(";") and before.count("(") == before.count(")"):
                clause = text[m.end():]
                cut = min([i for i in (_outside(clause, "; ``"), _outside(clause, ", ``")) if i >= 0] or [len(clause)])
                if clause[:cut].strip(" .;,"):
                    return _clean(_skip_default(clause[:cut]))
    word = re.compile(rf"\b{re.escape(name)}\b")
    for _, text in items:  # the sentence that mentions it in a ``literal``
        m = next((lit for lit in re.finditer(r"``(.+?)``", text) if word.search(lit.group(1))), None)
        if m:
            starts = [b.end() for b in re.finditer(r"\. (?=[A-Z(\"'`])", text[: m.start() + 1])]
            return _clean(text[starts[-1] if starts else 0:])
    return ""


def _type_name(t: Any) -> str:
    if t is None or t is inspect.Parameter.empty:
        return "Any"
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _first_line(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not doc or not doc.strip():
        return ""
    return _clean(inspect.cleandoc(doc).split("\n\n", 1)[0], width=100)


# ---- what there is -------------------------------------------------------------------------------


def _strategy_class(name: str) -> type:
    """The class of strategy `name`, loading that one plugin only (one that fails to import
    does not hide the others)."""
    from jointnet.experiments import strategy

    if name in strategy._REGISTERED:
        return strategy._REGISTERED[name]
    eps = strategy._entry_points()
    if name not in eps:
        strategy.get(name)  # the registry's own "no strategy ...; did you mean" error
    return strategy._load(name, eps[name])


def strategy_options(name: str) -> list[Option]:
    """Every option of strategy `name` (its attrs fields, in order)."""
    cls = _strategy_class(name)
    docs = []  # the class's and its module's, then its bases' (an option a base class defines)
    for c in cls.__mro__[:-1]:
        docs += [c.__doc__, getattr(sys.modules.get(c.__module__), "__doc__", None)]
    out = []
    for a in attrs.fields(cls):
        if not a.init:
            continue
        default = a.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else REQUIRED
        elif default is attrs.NOTHING:
            default = REQUIRED
        doc = a.metadata.get("doc") or _doc_line(a.name, docs)
        out.append(Option(a.name, _type_name(a.type), json_safe(default), _clean(doc) if doc else ""))
    return out


def _stream_fn(name: str):
    from jointnet.experiments.streams import STREAMS, get_stream

    if name not in STREAMS:
        get_stream(name)  # the registry's own "unknown stream ...; did you mean" error
    return STREAMS[name]


_STREAM_FIXED = ("seed", "data_dir")  # set by --seed and --data-dir, not by -S


def stream_options(name: str) -> list[Option]:
    """Every option of stream `name` (its function's arguments other than seed and data_dir)."""
    from jointnet.experiments.streams import STREAMS

    fn = _stream_fn(name)
    target = inspect.unwrap(fn)
    module_doc = getattr(sys.modules.get(target.__module__), "__doc__", None)
    docs = [target.__doc__, module_doc]
    # what those docs point to: "options as `split_fmnist`", "see `jointnet.experiments.streams`"
    fns = {inspect.unwrap(f).__name__: inspect.unwrap(f) for f in STREAMS.values()}
    for ref in re.findall(r"(?<!`)`([\w.]+)`(?!`)", f"{target.__doc__}\n{module_doc}"):
        other = fns.get(ref) or (sys.modules.get(ref) if "." in ref else None)
        if other is not None and other is not target and other.__doc__ not in docs:
            docs.append(other.__doc__)
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in _STREAM_FIXED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = REQUIRED if p.default is p.empty else json_safe(p.default)
        out.append(Option(p.name, _type_name(p.annotation), default, _doc_line(p.name, docs)))
    return out


def trainer_options() -> list[Option]:
    """Every `TrainConfig` field (``-T key=value``)."""
    from jointnet.experiments.trainer import TrainConfig

    docs = [TrainConfig.__doc__]
    return [Option(a.name, _type_name(a.type), json_safe(a.default), a.metadata.get("doc") or _doc_line(a.name, docs))
            for a in attrs.fields(TrainConfig)]


def describe(name: str) -> tuple[str, str, list[Option]]:
    """``(kind, summary, options)`` of a strategy, a stream, or the trainer (``"trainer"``);
    kind is ``"strategy"``, ``"stream"`` or ``"trainer"``.

    Raises:
        JointNetError: no strategy or stream has that name (with the closest names).
    """
    from jointnet.experiments.streams import STREAMS
    from jointnet.experiments.strategy import strategy_names

    if name in ("trainer", "train", "-T"):
        from jointnet.experiments.trainer import TrainConfig

        return "trainer", _first_line(TrainConfig.__doc__), trainer_options()
    if name in strategy_names():
        cls = _strategy_class(name)
        return "strategy", _first_line(cls.__doc__), strategy_options(name)
    if name in STREAMS:
        return "stream", _first_line(inspect.unwrap(STREAMS[name]).__doc__), stream_options(name)
    known = [*strategy_names(), *STREAMS, "trainer"]
    raise JointNetError(f"no strategy or stream named {name!r}{did_you_mean(name, known)} "
                        f"Strategies: {', '.join(strategy_names())}; streams: {', '.join(STREAMS)}; or 'trainer'")


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` with the closest of `known` (up to three), or ``";"``."""
    close = difflib.get_close_matches(str(word), list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ";"


# ---- checks --------------------------------------------------------------------------------------

_SEQUENCES = {"list", "tuple", "Sequence", "MutableSequence", "Iterable", "Collection"}
_MAPPINGS = {"dict", "Mapping", "MutableMapping"}


def _accepts(annotation: str, value: Any) -> str | None:
    """None when `value` fits `annotation` (or the annotation is not one we can check), else
    what it must be ("a float", "an int or None", ...)."""
    members = [m.strip() for m in _split_union(annotation)]
    want, ok = [], False
    for m in members:
        base = m.split("[", 1)[0].strip().rsplit(".", 1)[-1]
        if base in ("Any", "object") or not base:
            return None
        if base in ("None", "NoneType"):
            want.append("None")
            ok |= value is None
        elif base == "bool":
            want.append("true or false")
            ok |= isinstance(value, bool)
        elif base == "int":
            want.append("an int")
            ok |= isinstance(value, int) and not isinstance(value, bool)
        elif base == "float":
            want.append("a number")
            ok |= _number(value) and math.isfinite(value)
        elif base == "str":
            want.append("a string")
            ok |= isinstance(value, str)
        elif base in _SEQUENCES:
            want.append("a list")
            ok |= isinstance(value, (list, tuple))
        elif base in _MAPPINGS:
            want.append("a map")
            ok |= isinstance(value, Mapping)
        else:  # a class or a type we do not know: the owner's own validation decides
            return None
    if ok:
        return None
    return " or ".join(dict.fromkeys(want))


def _split_union(annotation: str) -> list[str]:
    """Top-level members of ``A | B[C | D] | None``; ``Optional[X]`` / ``Union[...]`` too."""
    a = annotation.strip()
    m = re.fullmatch(r"(?:typing\.)?Optional\[(.*)\]", a)
    if m:
        return [*_split_union(m.group(1)), "None"]
    m = re.fullmatch(r"(?:typing\.)?Union\[(.*)\]", a)
    if m:
        a = m.group(1).replace(",", "|")  # only for simple unions; nested brackets stay checked below
    parts, depth, cur = [], 0, ""
    for ch in a:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _describe_validator(v: Any) -> tuple[str | None, bool]:
    """What an attrs validator accepts, in words (``> 0``, ``one of 'a', 'b'``), and whether it
    lets None through (`attrs.validators.optional`)."""
    name = type(v).__name__
    if name == "_NumberValidator":
        return f"{v.compare_op} {v.bound}", False
    if name == "_InValidator":
        return "one of " + ", ".join(repr(o) for o in v.options), False
    if name == "_OptionalValidator":
        return _describe_validator(v.validator)[0], True
    if name == "_AndValidator" or isinstance(v, (list, tuple)):
        parts = [_describe_validator(x)[0] for x in (v._validators if name == "_AndValidator" else v)]
        return " and ".join(p for p in parts if p) or None, False
    return None, False


_KIND = {"int": "an int", "float": "a number", "str": "a string", "bool": "true or false"}


def _allowed(annotation: str, validators: Iterable[Any]) -> str:
    """What an option accepts, from its annotation and validators: ``a number > 0``, ``one of
    'sgd', 'adam'``, ``an int >= 1 or None``."""
    members = [m.split("[", 1)[0].strip() for m in _split_union(annotation)]
    none = any(m in ("None", "NoneType") for m in members)
    kinds = [_KIND.get(m, "a list" if m in _SEQUENCES else "a map" if m in _MAPPINGS else m)
             for m in members if m not in ("None", "NoneType")]
    rules = []
    for v in validators:
        rule, optional = _describe_validator(v)
        none |= optional
        if rule:
            rules.append(rule)
    rule = " and ".join(rules)
    text = rule if rule.startswith("one of") else " ".join(p for p in (" or ".join(kinds), rule) if p)
    return f"{text} or None" if none else text


def _check_fields(what: str, flag: str, cls: type, values: Mapping[str, Any],
                  limits: Mapping[str, Any] = {}) -> None:
    fields = {a.name: a for a in attrs.fields(cls) if a.init}
    for key, value in values.items():
        if key not in fields:
            raise JointNetError(f"unknown {what} option {key!r} ({flag}){did_you_mean(key, fields)} "
                                f"Options: {', '.join(fields)}")
        a = fields[key]
        validators = [v for v in (a.validator, limits.get(key)) if v is not None]
        bad = _accepts(_type_name(a.type), value) is not None
        for v in validators:
            if bad:
                break
            try:
                v(None, a, value)
            except (TypeError, ValueError):
                bad = True
        if bad:
            raise JointNetError(f"{what} option {key!r} ({flag}) must be "
                                f"{_allowed(_type_name(a.type), validators)} (got {value!r:.60})")


def check_train_options(values: Mapping[str, Any], *, flag: str = "-T") -> None:
    """Check `TrainConfig` fields given by name: known keys, types, ranges, device.

    Raises:
        JointNetError: the first bad one, named, with what it accepts.
    """
    from jointnet.experiments.trainer import TrainConfig

    _check_fields("trainer", flag, TrainConfig, values, TRAIN_LIMITS)
    if "device" in values:
        check_device(values["device"], flag=f"{flag} device")


def check_device(device: Any, *, flag: str = "--device") -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA ones only where torch sees such a device.

    >>> check_device("tpu")
    Traceback (most recent call last):
    ...
    jointnet.errors.JointNetError: --device must be cpu, cuda or cuda:N (got 'tpu')
    """
    import torch

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d{1,3})?", device):
        raise JointNetError(f"{flag} must be cpu, cuda or cuda:N (got {device!r:.40})")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JointNetError(f"{flag} {device}: this machine has no CUDA device that torch can use "
                                f"(torch {torch.__version__}); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise JointNetError(f"{flag} {device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                                f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def _check_typed(kind: str, name: str, flag: str, values: Mapping[str, Any], annotations: dict[str, str]) -> None:
    """Every key of `values` is one of `annotations` (else "did you mean") and its value fits."""
    for key, value in values.items():
        if key not in annotations:
            raise JointNetError(f"unknown option {key!r} of {kind} {name!r} ({flag}){did_you_mean(key, annotations)} "
                                f"Options: {', '.join(annotations)} (jointnet options {name})")
        want = _accepts(annotations[key], value)
        if want is not None:
            raise JointNetError(f"option {key!r} of {kind} {name!r} ({flag}) must be {want} (got {value!r:.60})")


def check_strategy_options(name: str, values: Mapping[str, Any], *, flag: str = "-O") -> None:
    """Check options of strategy `name` by key and type (its own validators check ranges when
    it is built: `jointnet.experiments.strategy.get`)."""
    cls = _strategy_class(name)
    _check_typed("strategy", name, flag, values, {a.name: _type_name(a.type) for a in attrs.fields(cls) if a.init})


def check_stream_options(name: str, values: Mapping[str, Any], *, flag: str = "-S") -> dict[str, Any]:
    """Check options of stream `name` by key and type; returns every option with its effective
    value (defaults filled in). Ranges are the stream function's to check when it builds."""
    fn = _stream_fn(name)
    params = {p.name: p for p in inspect.signature(fn).parameters.values()
              if p.name not in _STREAM_FIXED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for key, flag_of_its_own in (("data_dir", "--data-dir DIR"), ("seed", "--seed N")):
        if key in values:
            raise JointNetError(f"the stream's {key} is set with {flag_of_its_own}, not {flag} {key}")
    _check_typed("stream", name, flag, values, {k: _type_name(p.annotation) for k, p in params.items()})
    out = {}
    for key, p in params.items():
        if key in values:
            out[key] = values[key]
        elif p.default is not p.empty:
            out[key] = p.default
    return out


def effective_strategy_options(strategy: Any) -> dict[str, Any]:
    """Every option of a built strategy (``attrs.asdict``), as JSON data."""
    return json_safe({a.name: getattr(strategy, a.name) for a in attrs.fields(type(strategy)) if a.init})
