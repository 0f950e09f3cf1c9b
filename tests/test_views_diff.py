"""Views (param counts, summary, history, sharing), diff and DOT rendering on tiny nets.

Every expected number is computed by hand in the test from the layer shapes.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jointnet import backbones
from jointnet.persistence.diff import NetDiff, diff
from jointnet.errors import JointNetError
from jointnet.execution.store import ParamStore
from jointnet.persistence.render import PALETTE, SHARED_FILL, render, task_colors, to_dot
from jointnet.graph import (
    add_head,
    add_task,
    annotate,
    attach_mask,
    bind,
    clone_node,
    freeze,
    own_param,
    prune,
    remove_task,
    set_lr_scale,
    widen,
)
from jointnet.persistence.capacity import capacity
from jointnet.persistence.views import (
    call_summary, history, param_counts, sharing, short_value, summary, task_params, task_runs, usage,
)

# mlp(4, [8]) with a 2-class head for t1:
FC1 = 8 * 4 + 8  # fc1: Linear(4->8) weight + bias = 40
HEAD1 = 2 * 8 + 2  # head.t1: Head(8->2) = 18
HEAD2 = 3 * 8 + 3  # head.t2: Head(8->3) = 27


def one_task():
    return backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)


def two_tasks():
    """t2 bound to t1 (shares fc1, relu1) with its own 3-class head."""
    net = add_task(one_task(), task="t2")
    net = bind(net, task="t2", to="t1")
    return add_head(net, task="t2", n_classes=3)


def assert_adds_up(c):
    assert c["total"] == c["shared"] + sum(c["owned"].values()) + c["unowned"]
    assert sum(c["by_node"].values()) == c["total"]


# ---- param_counts -------------------------------------------------------------------------------


def test_counts_one_task():
    c = param_counts(one_task())
    assert (FC1, HEAD1) == (40, 18)
    assert c["total"] == FC1 + HEAD1 == 58
    assert c["shared"] == 0 and c["unowned"] == 0
    assert c["owned"] == {"t1": 58}
    assert c["masks"] == {"t1": 0} and c["buffers"] == 0
    assert c["by_node"] == {"input": 0, "fc1": 40, "relu1": 0, "head.t1": 18}


def test_counts_bound_tasks_share_the_trunk():
    c = param_counts(two_tasks())
    assert c["total"] == FC1 + HEAD1 + HEAD2 == 85
    assert c["shared"] == FC1 == 40
    assert c["owned"] == {"t1": HEAD1, "t2": HEAD2}
    assert_adds_up(c)


def test_counts_after_clone():
    net = clone_node(two_tasks(), node="fc1", task="t2")
    c = param_counts(net)
    assert c["total"] == 2 * FC1 + HEAD1 + HEAD2 == 125
    assert c["shared"] == 0
    assert c["owned"] == {"t1": FC1 + HEAD1, "t2": FC1 + HEAD2}  # 58, 67
    assert_adds_up(c)


def test_counts_widen_are_owned_by_the_widening_task():
    net = widen(two_tasks(), node="fc1", k=2, task="t2")
    c = param_counts(net)
    grown_fc1 = 2 * 4 + 2  # new rows of fc1's weight + bias
    grown_heads = 2 * 2 + 3 * 2  # new input columns of head.t1 (2 classes) and head.t2 (3)
    assert c["shared"] == FC1  # the base channels stay shared
    assert c["owned"] == {"t1": HEAD1, "t2": HEAD2 + grown_fc1 + grown_heads}
    assert c["total"] == 85 + 20
    assert_adds_up(c)


def test_counts_unowned_after_remove_task_then_prune():
    net = remove_task(clone_node(two_tasks(), node="fc1", task="t2"), task="t2")
    c = param_counts(net)
    assert c["owned"] == {"t1": FC1 + HEAD1}
    assert c["unowned"] == FC1 + HEAD2  # fc1.t2 and head.t2 are routed by no task
    assert c["total"] == 125
    assert_adds_up(c)
    c2 = param_counts(prune(net))
    assert c2["unowned"] == 0 and c2["total"] == 58


def test_counts_masks_apart():
    net = attach_mask(two_tasks(), node="fc1", task="t1", granularity="channel")
    net = attach_mask(net, node="fc1", task="t2")  # per element: 8 x 4
    c = param_counts(net)
    assert c["masks"] == {"t1": 8, "t2": 32} and c["masks_total"] == 40
    assert c["total"] == 85  # masks are not parameters


def test_counts_per_task_variants_and_buffers():
    layers = [{"kind": "linear", "out_f": 8}, {"kind": "bn"}, {"kind": "relu"}]
    net = backbones.build(layers, input_shape=(4,), task="t1", n_classes=2)
    bn = 8 + 8  # weight + bias; running mean / var are buffers
    c = param_counts(net)
    assert c["total"] == FC1 + bn + HEAD1 == 74 and c["buffers"] == 16
    net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=3)
    net = own_param(net, node="bn1", task="t2")
    c = param_counts(net)
    assert c["shared"] == FC1 + bn
    assert c["owned"] == {"t1": HEAD1, "t2": HEAD2 + bn}
    assert c["buffers"] == 32
    assert c["total"] == FC1 + 2 * bn + HEAD1 + HEAD2 == 117
    assert_adds_up(c)


def test_counts_check_store_shapes():
    net = one_task()
    store = ParamStore().realize(net)
    assert param_counts(net, store)["total"] == 58
    key = net.node("fc1").params[0].key
    store._tensors[key] = torch.zeros(3, 3)  # a store damaged behind its API
    with pytest.raises(JointNetError, match="shape"):
        param_counts(net, store)


# ---- summary, history, sharing ------------------------------------------------------------------


def test_summary():
    net = freeze(clone_node(two_tasks(), node="fc1", task="t2"), nodes="relu1", task="t2")
    net = annotate(net, key="note", value={"a": [1, 2]}, node="fc1")
    s = summary(net)
    json.dumps(s)  # plain data
    assert s["version"] == net.version
    assert [t["name"] for t in s["tasks"]] == ["t1", "t2"]
    t2 = s["tasks"][1]
    assert t2["head"] == "head.t2" and t2["route_length"] == 4 and t2["added_at"] == 6
    nodes = {n["id"]: n for n in s["nodes"]}
    assert nodes["fc1.t2"]["cloned_from"] == "fc1" and nodes["fc1.t2"]["users"] == ["t2"]
    assert nodes["fc1.t2"]["created_by"] == "t2" and nodes["fc1.t2"]["params"] == 40
    assert nodes["relu1"]["users"] == ["t1", "t2"]
    assert nodes["relu1"]["policy"] == [{"task": "t2", "frozen": True, "lr_scale": 1.0}]
    assert nodes["fc1"]["annotations"] == {"note": {"a": [1, 2]}}
    assert nodes["fc1"]["spec"] == "Linear(4->8)" and nodes["fc1"]["kind"] == "Linear"
    assert s["params"]["owned"] == {"t1": 58, "t2": 67}


def test_summary_groups_and_masks():
    net = attach_mask(widen(two_tasks(), node="fc1", k=2, task="t2"), node="fc1", task="t1")
    nodes = {n["id"]: n for n in summary(net)["nodes"]}
    (g,) = nodes["fc1"]["groups"]
    assert g["owner"] == "t2" and g["size"] == 2
    (m,) = nodes["fc1"]["masks"]
    assert m["task"] == "t1" and m["state"] == "live" and m["shape"] == [8, 4]  # t1 sees 8 rows


def test_history():
    net = clone_node(two_tasks(), node="fc1", task="t2")
    h = history(net)
    assert len(h) == net.version
    assert [r["version"] for r in h] == list(range(1, net.version + 1))
    assert h[0] == {"version": 1, "name": "add_input", "kwargs": {"node": "input", "shape": [4]}}
    assert h[-1]["name"] == "clone_node"
    assert h[-1]["kwargs"]["node"] == "fc1" and h[-1]["kwargs"]["task"] == "t2"
    json.dumps(h)


def test_sharing():
    net = two_tasks()
    assert sharing(net) == [{"tasks": ["t1", "t2"], "nodes": ["fc1", "relu1"]}]
    net = add_head(bind(add_task(net, task="t3"), task="t3", to="t2"), task="t3", n_classes=2)
    net = clone_node(net, node="fc1", task="t3")
    assert sharing(net) == [
        {"tasks": ["t1", "t2"], "nodes": ["fc1"]},
        {"tasks": ["t1", "t2", "t3"], "nodes": ["relu1"]},
    ]
    assert sharing(one_task()) == []


# ---- diff ---------------------------------------------------------------------------------------


def test_diff_of_a_net_with_itself_is_empty():
    net = two_tasks()
    d = diff(net, net)
    assert isinstance(d, NetDiff)
    assert bool(d) is False
    assert "no differences" in str(d)
    assert d.to_dict()["empty"] is True
    store = ParamStore().realize(net)
    assert bool(diff(net, net, store, store)) is False


def test_diff_clone_moves_ownership():
    a = two_tasks()
    b = clone_node(a, node="fc1", task="t2")
    d = diff(a, b)
    assert d
    assert dict(d.nodes_added) == {
        "fc1.t2": {"kind": "Linear", "spec": "Linear(4->8)", "users": ("t2",), "cloned_from": "fc1",
                   "params": 40},
    }
    assert not d.nodes_removed and not d.tasks_added
    assert d.ownership == {"fc1": (("t1", "t2"), ("t1",))}
    assert dict(d.edges_added) == {("input", "fc1.t2"): ("t2",), ("fc1.t2", "relu1"): ("t2",)}
    assert dict(d.routes) == {("input", "fc1"): ((), ("t2",)), ("fc1", "relu1"): ((), ("t2",))}
    # fc1 becomes t1's alone (+40), t2 gets its own copy (+40); nothing is shared any more
    assert dict(d.params_added) == {"t1": 40, "t2": 40}
    assert dict(d.params_delta) == {"total": 40, "shared": -40}
    assert d.rewrites == ("clone_node(node='fc1', task='t2', init='copy', new_id=None)",)
    text = str(d)
    assert "+ fc1.t2" in text and "fc1  {t1,t2} -> {t1}" in text
    json.dumps(d.to_dict())


def test_diff_widen_adds_params_to_the_widening_task():
    a = two_tasks()
    b = widen(a, node="fc1", k=2, task="t2")
    d = diff(a, b)
    assert dict(d.params_added) == {"t2": (2 * 4 + 2) + (2 * 2 + 3 * 2)}  # 20
    assert dict(d.params_delta) == {"total": 20}
    assert set(d.nodes_changed) == {"fc1", "head.t1", "head.t2"}
    fc1 = d.nodes_changed["fc1"]
    assert fc1.spec == ("Linear(4->8)", "Linear(4->10)")
    assert len(fc1.params_added) == 2 and not fc1.params_removed
    assert len(fc1.groups_added) == 1 and "(t2, +2)" in fc1.groups_added[0]
    assert d.nodes_changed["head.t1"].spec == ("Head(8->2)", "Head(10->2)")
    assert not d.ownership and not d.edges_added and not d.routes  # routes are untouched
    assert "owned: t2 +20" in str(d)


def test_diff_bind_changes_routes():
    a = add_task(one_task(), task="t2")
    b = bind(a, task="t2", to="t1")
    d = diff(a, b)
    assert dict(d.routes) == {("input", "fc1"): (("t2",), ()), ("fc1", "relu1"): (("t2",), ())}
    assert not d.edges_added and not d.nodes_added
    assert d.ownership == {"fc1": (("t1",), ("t1", "t2")), "relu1": (("t1",), ("t1", "t2"))}
    assert dict(d.params_added) == {"t1": -40}  # fc1 is no longer t1's alone
    assert dict(d.params_delta) == {"shared": 40}
    assert "input -> fc1  +{t2}" in str(d)


def test_diff_tasks_added_and_removed():
    a = one_task()
    b = two_tasks()
    d = diff(a, b)
    assert d.tasks_added == ("t2",) and "head.t2" in d.nodes_added
    assert dict(d.params_added) == {"t1": -40, "t2": 27}
    back = diff(b, a)
    assert back.tasks_removed == ("t2",) and "head.t2" in back.nodes_removed


def test_diff_freeze_and_lr_scale_are_policy_changes():
    a = two_tasks()
    b = freeze(a, nodes=["fc1"], task="t2")
    d = diff(a, b)
    assert dict(d.policy) == {("t2", "fc1"): (None, {"frozen": True, "lr_scale": 1.0})}
    assert not d.nodes_changed and not d.params_added
    assert "fc1 [t2]  default -> frozen" in str(d)
    c = set_lr_scale(freeze(a, nodes="relu1"), nodes="fc1", scale=0.1, task="t2")
    d2 = diff(b, c)
    assert d2.policy[("t2", "fc1")] == ({"frozen": True, "lr_scale": 1.0}, {"frozen": False, "lr_scale": 0.1})
    assert d2.policy[(None, "relu1")] == (None, {"frozen": True, "lr_scale": 1.0})
    assert d2.to_dict()["policy"][0]["task"] == "t2"


def test_diff_masks_and_annotations():
    a = two_tasks()
    b = annotate(attach_mask(a, node="fc1", task="t1"), key="imp", value=[0.5], node="fc1")
    b = annotate(b, key="stage", value="grow")
    d = diff(a, b)
    ch = d.nodes_changed["fc1"]
    assert ch.masks_added == ("t1:weight (live)",)
    assert ch.annotations == (("imp", None, (0.5,)),)
    assert d.annotations == (("stage", None, "grow"),)
    assert dict(d.masks_added) == {"t1": 32}
    assert ch.to_dict()["annotations"] == [{"key": "imp", "before": None, "after": [0.5]}]


def test_diff_tensors_moved():
    net = two_tasks()
    sa = ParamStore(seed=1).realize(net)
    sb = ParamStore(seed=1).realize(net)
    assert not diff(net, net, sa, sb)  # same seed: identical tensors
    key = net.node("fc1").param("weight").key
    with torch.no_grad():
        sb[key][0, 0] += 3.0
        sb[key][1, 1] -= 4.0
    d = diff(net, net, sa, sb)
    assert d  # only tensors differ
    assert set(d.moved) == {key}
    m = d.tensors[key]
    assert m.l2 == pytest.approx(5.0) and m.max_abs == pytest.approx(4.0) and m.numel == 32
    assert len(d.tensors) == 6  # fc1 w/b, head.t1 w/b, head.t2 w/b
    assert all(d.tensors[k].l2 == 0.0 for k in d.tensors if k != key)
    assert "1 of 6 shared tensors moved" in str(d)
    assert d.to_dict()["tensors"][key]["max_abs"] == pytest.approx(4.0)


def test_diff_tensors_only_for_keys_both_sides_have():
    a = two_tasks()
    b = clone_node(a, node="fc1", task="t2")
    sa = ParamStore().realize(a)
    sb = ParamStore().realize(b)
    d = diff(a, b, sa, sb)
    assert set(d.tensors) == sa.keys_of(a) & sb.keys_of(b)
    assert not d.moved  # the clone's new keys are not compared


# ---- render -------------------------------------------------------------------------------------


def test_to_dot_colours_and_labels():
    net = clone_node(two_tasks(), node="fc1", task="t2")
    text = to_dot(net)
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    lines = {line.split(" [")[0].strip(): line for line in text.splitlines() if " [" in line}
    t1, t2 = PALETTE[0], PALETTE[1]
    # owned nodes are filled with their task's colour, shared ones grey and bold
    assert f'fillcolor="{t1}"' in lines['"fc1"'] and "{t1}" in lines['"fc1"']
    assert f'fillcolor="{t2}"' in lines['"fc1.t2"'] and "clone of fc1" in lines['"fc1.t2"']
    assert f'fillcolor="{SHARED_FILL}"' in lines['"relu1"'] and "bold" in lines['"relu1"']
    assert "relu1\\nReLU\\n{t1,t2}" in lines['"relu1"']
    assert "Linear(4->8)" in lines['"fc1"']
    # edges: coloured and labelled by their tasks (after the clone no edge is shared)
    assert f'label="t1", color="{t1}"' in lines['"input" -> "fc1"']
    assert f'label="t2", color="{t2}"' in lines['"fc1.t2" -> "relu1"']
    assert f'label="t2", color="{t2}"' in lines['"relu1" -> "head.t2"']
    assert "doubleoctagon" in lines['"head.t1"'] and "ellipse" in lines['"input"']


def test_to_dot_shared_edge_and_task_filter():
    net = two_tasks()
    text = to_dot(net)
    t1, t2 = PALETTE[0], PALETTE[1]
    assert f'"input" -> "fc1" [label="t1,t2", color="{t1}:{t2}"' in text
    only = to_dot(net, task="t2")
    assert '"head.t2"' in only and '"head.t1"' not in only
    assert '"relu1" -> "head.t1"' not in only
    assert f'"input" -> "fc1" [label="t2", color="{t2}"' in only
    with pytest.raises(JointNetError, match="no task 't9'"):
        to_dot(net, task="t9")


def test_to_dot_quotes_odd_ids():
    net = add_head(add_task(one_task(), task="t-x:1"), task="t-x:1", n_classes=2, after="input")
    text = to_dot(net)
    assert '"head.t-x:1"' in text


def test_render_dot_file(tmp_path):
    net = two_tasks()
    out = render(net, tmp_path / "sub" / "net.dot")
    assert out == [tmp_path / "sub" / "net.dot"]
    assert out[0].read_text() == to_dot(net)
    with pytest.raises(JointNetError, match=r"\.dot"):
        render(net, tmp_path / "net.txt")


def test_render_svg_needs_dot(tmp_path, monkeypatch):
    import jointnet.persistence.render as r

    monkeypatch.setattr(r.shutil, "which", lambda name: None)
    with pytest.raises(JointNetError, match="'dot'"):
        render(two_tasks(), tmp_path / "net.svg")
    assert (tmp_path / "net.dot").exists()  # the DOT text is written anyway


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_render_svg(tmp_path):
    out = render(two_tasks(), tmp_path / "net.svg", task="t1")
    assert out == [tmp_path / "net.dot", tmp_path / "net.svg"]
    svg = (tmp_path / "net.svg").read_text()
    assert "<svg" in svg and "fc1" in svg


def test_dot_colours_channel_groups_by_owner():
    net = add_head(bind(add_task(one_task(), task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    net = widen(net, node="fc1", k=2, task="t2")
    colors = task_colors(net)
    line = next(x for x in to_dot(net).splitlines() if x.strip().startswith('"fc1"'))
    assert f'<TD BGCOLOR="{colors["t2"]}">+2 ch (t2)</TD>' in line
    assert "Linear(4-&gt;10)" in line  # HTML-escaped


def test_method_views_come_from_entry_points(monkeypatch):
    from jointnet.persistence import views

    def fake(group):
        if group == views.INSPECT_VIEWS:
            return [("demo", lambda net, store: {"tasks": len(net.tasks)}), ("quiet", lambda net, store: None)]
        return [("demo", lambda a, b, sa, sb: ["moved"])]

    monkeypatch.setattr(views, "_plugins", fake)
    assert views.method_views(two_tasks()) == {"demo": {"tasks": 2}}
    assert views.method_diffs(one_task(), two_tasks()) == {"demo": ["moved"]}


# ---- condensed views: task runs, usage, parameters per task, capacity, summarised records --------


def _expand_runs(order: list[str], runs: list[str]) -> set[str]:
    out: set[str] = set()
    for r in runs:
        if ".." in r:
            a, b = r.split("..")
            out.update(order[order.index(a): order.index(b) + 1])
        else:
            out.add(r)
    return out


@given(st.sets(st.integers(0, 59)))
def test_task_runs_round_trip(picked):
    order = [f"t{i + 1}" for i in range(60)]
    tasks = {order[i] for i in picked}
    runs = task_runs(order, tasks)
    assert _expand_runs(order, runs) == tasks
    # a run of three or more consecutive tasks is one entry; nothing shorter is merged
    for r in runs:
        if ".." in r:
            a, b = (order.index(x) for x in r.split(".."))
            assert b - a >= 2
    capped = task_runs(order, tasks, max_runs=3)
    assert len(capped) <= 4 and (len(runs) <= 3 or capped[-1] == f"+{len(runs) - 3} more")


def test_usage_partitions_every_node():
    net = clone_node(two_tasks(), node="fc1", task="t2")
    groups = usage(net)
    nodes = [n for g in groups for n in g["nodes"]]
    assert sorted(nodes) == sorted(net.nodes) and len(nodes) == len(set(nodes))
    assert {tuple(g["tasks"]): tuple(g["nodes"]) for g in groups} == {
        ("t1", "t2"): ("input", "relu1"), ("t1",): ("fc1", "head.t1"), ("t2",): ("fc1.t2", "head.t2")}
    # a node no task routes through is its own group, with no tasks
    dead = remove_task(net, task="t2")
    assert {"tasks": [], "nodes": ["fc1.t2", "head.t2"]} in usage(dead)


def test_task_params_owned_shared_reused():
    net = two_tasks()
    tp = task_params(net)
    assert tp["t1"] == {"owned": HEAD1, "shared": FC1, "reused": 0, "total": HEAD1 + FC1, "from": {}}
    # t3 routes through t2's clone of fc1, which t2 owns: t3 reuses it
    net = clone_node(net, node="fc1", task="t2")
    net = add_head(bind(add_task(net, task="t3"), task="t3", to="t2"), task="t3", n_classes=2)
    tp = task_params(net)
    assert tp["t3"]["reused"] == 0 and tp["t3"]["shared"] == FC1  # fc1.t2 is now used by t2 and t3
    assert tp["t2"]["owned"] == HEAD2 and tp["t3"]["owned"] == 2 * 8 + 2
    for row in tp.values():
        assert row["total"] == row["owned"] + row["shared"] + row["reused"]


def test_capacity_none_without_masks_owner_maps_or_gates():
    net = two_tasks()
    assert capacity(net, ParamStore(seed=0).realize(net)) is None
    masked = attach_mask(net, node="fc1", task="t2")
    with pytest.raises(JointNetError, match="needs the snapshot's tensors"):
        capacity(masked, None)
    c = capacity(masked, ParamStore(seed=0).realize(masked))  # a fresh mask of ones: all used
    assert c["tensors"][0]["used"] == {"t2": 1.0} and c["free"] == 0.0 and c["tasks"]["t1"]["used"] == 0.0


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
                    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=12), inner, max_size=8),
                    max_leaves=40).filter(lambda v: v is not None))
def test_call_summary_is_one_bounded_line(value):
    line = call_summary("annotate", {"key": "k", "value": value, "node": "fc1"})
    assert "\n" not in line and len(line) <= 160
    assert line.startswith("annotate(key=k, value=") and line.endswith(")")
    assert "\n" not in short_value(value)
    assert call_summary("annotate", {"key": "k", "value": None}) == "annotate(key=k)"  # None: left out


def test_capacity_skips_what_it_cannot_measure(tmp_path, monkeypatch):
    """A mask whose transform nobody registered (its plugin not imported) is listed, not fatal."""
    from jointnet.execution import masks
    from jointnet.graph.net import MASK_TRANSFORMS
    from jointnet.persistence import snapshot

    monkeypatch.setattr(masks, "_DETERMINISTIC", dict(masks._DETERMINISTIC))
    monkeypatch.setattr(masks, "_TRAIN", dict(masks._TRAIN))
    monkeypatch.setattr(masks, "RUNTIME", dict(masks.RUNTIME))
    masks.register_transform("plugin_only", lambda m, ctx, s: m, lambda m: m)
    net = attach_mask(two_tasks(), node="fc1", task="t2", transform="plugin_only")
    path = snapshot.save(tmp_path / "p.jn", net, ParamStore(seed=0).realize(net))
    monkeypatch.delitem(masks._DETERMINISTIC, "plugin_only")
    MASK_TRANSFORMS.discard("plugin_only")
    net, store = snapshot.load(path)
    c = capacity(net, store)
    assert c["tensors"] == [] and c["skipped"] == [{"node": "fc1", "param": "weight", "why": (
        "mask transform 'plugin_only' is not registered (import the method that defines it)")}]
