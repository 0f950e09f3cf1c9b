"""The snapshot format: the records' codec is derived from their attrs classes, and
docs/snapshot-format.md says exactly what the writer writes and the reader accepts.

The doc's tables are parsed and compared with the code: every key of every map a file holds (as
actually written), every record class with exactly its attrs fields and their types, the layer
specs, the value tags. A field added to a record class without a doc update fails here, and so
does a layout change without a new format version (`LAYOUTS`). The codec itself is tested on
record classes of this module, so that every kind of field it takes is covered.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import attrs
import msgpack
import pytest

from jointnet import backbones, snapshot
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_task, annotate, attach_mask, bind, set_lr_scale, widen
from jointnet.graph import net as net_module
from jointnet.graph.layers import SPECS, Layer
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.names import check_name
from jointnet.graph.net import Init, JointNet, TensorRef
from jointnet.persistence import schema
from jointnet.persistence.codec import Reading, decode_record, encode_record, field_types, record_classes, stored_fields
from jointnet.persistence.values import TAGS, Malformed, Unstorable

DOC = Path(__file__).resolve().parents[1] / "docs" / "snapshot-format.md"

# The digest of each format version's layout (see `layout`). Never edit an entry: a layout change
# is a new format version (docs/snapshot-format.md, "Versioning policy").
LAYOUTS = {1: "587da8910b6e72e4827dfb30", 2: "e4b2374a27f0162ea0c4ae15", 3: "2f549889f964673fb3d901b7"}


def tables() -> dict[str, list[list[str]]]:
    """The first markdown table under each heading of the doc: its body rows, as cells."""
    out: dict[str, list[list[str]]] = {}
    heading, rows, done = "", None, set()
    for line in DOC.read_text().splitlines() + [""]:
        if line.startswith("|") and heading not in done:
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if rows is None:
                rows = []  # the header row
            elif not set("".join(cells)) <= set("-: "):
                rows.append(cells)
            continue
        if rows is not None:
            out[heading], rows = rows, None
            done.add(heading)
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
    return out


def names(rows: list[list[str]], column: int = 0) -> list[str]:
    """The backticked names in `column` of `rows` (quotes stripped: `"format"` is format)."""
    return [re.fullmatch(r'`"?([^`"]*)"?`', r[column]).group(1) for r in rows]


def table(prefix: str) -> list[list[str]]:
    matches = [rows for heading, rows in tables().items() if heading.startswith(prefix)]
    assert len(matches) == 1, f"the doc needs exactly one table under a heading starting {prefix!r}"
    return matches[0]


def builtin(cls: type) -> bool:
    """A record class of jointnet itself (not a layer kind a user registered)."""
    return cls.__module__.startswith("jointnet.")


def documented_records() -> dict[type, list[tuple[str, str]]]:
    out = {}
    for heading, rows in tables().items():
        m = re.search(r"\(`net\.(\w+)`\)", heading)
        if m:
            cls = getattr(net_module, m.group(1), None)
            assert cls is not None, f"the doc documents net.{m.group(1)}, which does not exist"
            out[cls] = [(name, r[1]) for name, r in zip(names(rows), rows, strict=True)]
    return out


def stored_records() -> list[type]:
    return [c for c in record_classes(*schema.RECORDS) if not issubclass(c, Layer) and builtin(c)]


def test_every_record_class_has_a_table():
    missing = [c.__name__ for c in stored_records() if c not in documented_records()]
    stale = [c.__name__ for c in documented_records() if c not in stored_records()]
    assert not missing, f"docs/snapshot-format.md has no table for the record class(es) {missing}"
    assert not stale, f"docs/snapshot-format.md documents {stale}, which snapshots do not store"


@pytest.mark.parametrize("cls", stored_records(), ids=lambda c: c.__name__)
def test_record_table_lists_exactly_the_fields(cls):
    doc = documented_records().get(cls)
    if doc is None:
        pytest.skip("no table (test_every_record_class_has_a_table fails)")
    code = list(field_types(cls).items())
    missing = [f for f in code if f not in doc]
    extra = [f for f in doc if f not in code]
    assert doc == code, (f"docs/snapshot-format.md, {cls.__name__}: the table must list exactly the fields "
                         f"(key, type) {code}; it lacks {missing} and has {extra} (or the order differs)")


def test_layer_spec_table_lists_every_kind_with_its_fields():
    doc = {}
    for row in table("Layer specs"):
        fields = [f.strip() for f in row[1].split(";") if f.strip()]
        doc[names([row])[0]] = [tuple(re.fullmatch(r"`(\w+)` (.+)", f).groups()) for f in fields]
    code = {kind: list(field_types(cls).items())[1:] for kind, cls in SPECS.items() if builtin(cls)}
    assert list(doc) == list(code), "the layer spec table must list every built-in kind, in SPECS order"
    for kind in code:
        assert doc[kind] == code[kind], f"layer spec {kind}: the doc says {doc[kind]}, the class has {code[kind]}"


def test_every_jointnet_field_is_an_entry_of_the_net():
    fields = {a.alias for a in attrs.fields(JointNet)} - set(schema.UNSTORED)
    assert fields == set(schema.ENTRIES) - {"nodes", "edges"}, (
        "every JointNet field but graph, uid and cache must be an entry of the snapshot's net "
        "(one line in jointnet/persistence/schema.NET) or be listed in schema.UNSTORED")


def _sample() -> dict:
    """A written snapshot with at least one of every map, decoded."""
    net = backbones.build(backbones.mlp(3, [2]), task="t1", n_classes=2)
    net = add_task(net, task="t2")
    net = bind(net, task="t2", to="t1")
    net = add_head(net, task="t2", n_classes=2)
    net = widen(net, node="fc1", k=1, task="t2")
    net = attach_mask(net, node="fc1", task="t1", transform="sigmoid")
    net = set_lr_scale(net, nodes="fc1", scale=0.5, task="t1")
    net = annotate(net, key="r", value=TensorRef("imp"))
    store = ParamStore(seed=0).realize(net)
    store.put("imp", store[net.node("fc1").params[0].key].detach().clone())
    return msgpack.unpackb(snapshot.dumps(net, store))


def test_written_maps_have_the_documented_keys():
    obj = _sample()
    assert list(obj) == names(table("Layout"), 1) == list(snapshot._ENTRIES)
    assert list(obj["net"]) == names(table('`"net"`')) == list(schema.ENTRIES)
    for edge in obj["net"]["edges"]:
        assert list(edge) == names(table("edge")) == list(schema.EDGE_KEYS)
    policy = names(table("policy entry"))
    assert policy == list(schema.POLICY_KEYS)
    for entry in obj["net"]["policy"]:
        assert list(entry) == policy + list(stored_fields(net_module.NodePolicy))
    for entry in obj["tensors"]:
        assert list(entry) == names(table("Tensor index entry"))
    assert set(names(table("Tensor index entry"))) == snapshot._TENSOR_KEYS
    for node in obj["net"]["nodes"]:
        assert list(node) == list(stored_fields(net_module.Node))
        assert list(node["spec"]) == list(stored_fields(SPECS[node["spec"]["kind"]]))


def test_value_table_lists_every_tag():
    doc = set(re.findall(r'"(__\w+__)"', " ".join(c for row in table("Values") for c in row)))
    assert doc == set(TAGS)


def layout() -> str:
    """Every key and type of the format, as text: what the format version pins."""
    lines = [
        f"file {snapshot._ENTRIES}", f"net {schema.ENTRIES}", f"edge {schema.EDGE_KEYS}",
        f"policy {schema.POLICY_KEYS}", f"tensor {sorted(snapshot._TENSOR_KEYS)}", f"tags {TAGS}",
    ]
    for cls in record_classes(*schema.RECORDS):
        if builtin(cls):
            lines.append(f"{cls.__name__} {list(field_types(cls).items())}")
    return "\n".join(lines)


def test_a_layout_change_comes_with_a_new_format_version():
    digest = hashlib.blake2b(layout().encode(), digest_size=12).hexdigest()
    assert snapshot.FORMAT_VERSION in LAYOUTS and LAYOUTS[snapshot.FORMAT_VERSION] == digest, (
        f"the snapshot layout changed (a record class gained or lost a field, a type changed, ...) but "
        f"FORMAT_VERSION is still {snapshot.FORMAT_VERSION}: bump jointnet.persistence.snapshot.FORMAT_VERSION "
        f"and SUPPORTED_VERSIONS, update docs/snapshot-format.md, and add "
        f"LAYOUTS[{snapshot.FORMAT_VERSION + 1}] = {digest!r} in tests/test_snapshot_doc.py")
    assert snapshot.SUPPORTED_VERSIONS == tuple(sorted(LAYOUTS))


def test_doc_names_the_current_format_version():
    text = DOC.read_text()
    assert text.splitlines()[0] == f"# Snapshot format (version {snapshot.FORMAT_VERSION})"
    assert f"today `{snapshot.SUPPORTED_VERSIONS!r}`" in text


# ---- the derived codec --------------------------------------------------------------------------


@attrs.frozen
class Leaf:
    name: str = attrs.field(validator=lambda _i, a, v: check_name(v, a.name))
    size: int = 1  # no validator: the codec checks the annotation


@attrs.frozen
class Tree:
    leaf: Leaf
    leaves: tuple[Leaf, ...] = ()
    maybe: Leaf | None = None
    table: FrozenDict[str, Leaf] = FrozenDict()
    notes: FrozenDict = FrozenDict()
    tags: frozenset[str] = frozenset()
    pair: tuple[int, Init] = (0, Init.fresh("zeros"))
    spec: Layer | None = None


def _through_msgpack(record) -> dict:
    return msgpack.unpackb(msgpack.packb(encode_record(record)), use_list=False)


TREE = Tree(Leaf("a"), (Leaf("b", 2), Leaf("c")), Leaf("d"), FrozenDict(x=Leaf("e")),
            FrozenDict(n=[1, (2.5, None)]), frozenset({"u", "t"}), (3, Init.copy("k")), SPECS["Linear"](2, 3))


def test_any_attrs_record_round_trips_with_no_codec_edit():
    raw = _through_msgpack(TREE)
    assert list(raw) == list(stored_fields(Tree)) == [a.name for a in attrs.fields(Tree)]
    assert raw["tags"] == ("t", "u") and raw["spec"]["kind"] == "Linear"
    assert decode_record(Tree, raw) == TREE


@pytest.mark.parametrize("edit, says", [
    (lambda r: r["leaves"][1].update(name="no spaces"), "leaves[1].name: name must be a name"),
    (lambda r: r["leaves"][0].update(size=True), "leaves[0].size: size must be of type int (got True)"),
    (lambda r: r["table"]["x"].pop("size"), "table['x']: a Leaf map lacks size"),
    (lambda r: r["leaf"].update(colour=1), "leaf: a Leaf map has unexpected keys 'colour'"),
    (lambda r: r.update(leaves={}), "leaves: must be an array (got dict)"),
    (lambda r: r.update(tags=["t", "t"]), "tags: a set holds a value twice"),
    (lambda r: r["spec"].update(kind="Warp"), "spec.kind: unknown layer kind 'Warp'"),
    (lambda r: r["pair"][1].update(kind="magic"), "pair[1].kind: 'kind' must be in"),
])
def test_a_bad_field_is_named_by_its_path(edit, says):
    raw = msgpack.unpackb(msgpack.packb(encode_record(TREE)))  # lists: editable
    edit(raw)
    raw = msgpack.unpackb(msgpack.packb(raw), use_list=False)
    with pytest.raises(Malformed) as e:
        decode_record(Tree, raw)
    assert str(e.value).startswith(says), str(e.value)


def test_an_older_file_may_lack_a_field_with_a_default():
    raw = {"name": "a"}
    with pytest.raises(Malformed, match="a Leaf map lacks size"):
        decode_record(Leaf, raw)
    assert decode_record(Leaf, raw, Reading(older=True)) == Leaf("a")
    with pytest.raises(Malformed, match="a Leaf map lacks name"):
        decode_record(Leaf, {"size": 2}, Reading(older=True))


@attrs.frozen
class Loose:
    table: FrozenDict = FrozenDict()  # holds Leaf records, but does not say so


@attrs.frozen
class Unknown:
    table: dict[str, int] = attrs.Factory(dict)


def test_fields_the_format_cannot_hold_are_named():
    with pytest.raises(Unstorable, match=r"Loose.table: cannot store a value of type Leaf.*FrozenDict\[str, Leaf\]"):
        encode_record(Loose(FrozenDict(x=Leaf("a"))))
    with pytest.raises(TypeError, match=r"snapshots cannot store Unknown.table: no encoding for its type"):
        encode_record(Unknown())
