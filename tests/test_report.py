"""``jointnet report``: one self-contained HTML page of runs (`jointnet.report`).

Real runs of the synthetic stream are made once per module (a few seconds). The page is checked
as text (sections, numbers from `jointnet.experiments.stats.summary`, nothing loaded from the
network, every string escaped), hostile run directories are refused before anything is written,
and the page is opened in a real headless browser: Debian's ``chromium`` must load it without a
console message from the page and draw a screenshot that is not blank. The browser tests FAIL,
never skip, when chromium is missing (CI installs it: ``apt-get install -y chromium``), as the
Fashion-MNIST tests do without their data package. Charts drawn with matplotlib (the optional
extra ``jointnet[plots]``) are tested when matplotlib is installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from jointnet.cli import main
from jointnet.errors import JointNetError
from jointnet.experiments import runner
from jointnet.experiments.stats import summary
from jointnet.report import build_report, load_run, write_report
from jointnet.report import runs as report_runs
from jointnet.report.svg import png

torch.set_num_threads(1)

STREAM = {"n_tasks": 3, "input_shape": [8], "n_train_per_class": 10, "n_val_per_class": 4, "n_test_per_class": 6}
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _run(out: Path, strategy: str, seed: int, **config) -> Path:
    spec = runner.RunSpec(strategy, "synthetic", seed=seed, stream_options=dict(STREAM),
                          config={"epochs": 1, **config})
    runner.run(spec, out, echo=lambda _msg: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {
        "ft0": _run(d / "ft0", "finetune", 0),
        "ft1": _run(d / "ft1", "finetune", 1),
        "pk": _run(d / "pk", "packnet", 0),
        "hat": _run(d / "hat", "hat", 0, lr=0.05),
    }


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# ---- the page as text ---------------------------------------------------------------------------


def test_report_sections_and_numbers(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    argv = ["report", str(runs["ft0"]), str(runs["ft1"]), str(runs["pk"]), str(runs["hat"]), str(runs["ft0"]),
            "-o", str(out), "--charts", "svg"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (4 run(s) in 3 group(s), ")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for section in ("Summary across runs", "Parameters per task", "Architecture per task", "Rewrite log",
                    "accuracy matrix", "accuracy per task", "Capacity (mask methods)"):
        assert section in page, section
    assert page.count('<h2 id="run-') == 4  # ft0 given twice: shown once
    # the two fine-tuning seeds are one group: mean ± sd and the Student-t CI of stats.summary
    aps = [_results(runs[k])["metrics"]["AP"] for k in ("ft0", "ft1")]
    s = summary(aps)
    assert f"{s.mean:.4f} ± {s.sd:.4f}" in page
    assert f"95% CI [{s.ci95[0]:.4f}, {s.ci95[1]:.4f}]" in page
    # F (forgetting) is a column exactly when results.json has it
    has_f = "F" in _results(runs["ft0"])["metrics"]
    assert ("<th>F</th>" in page) == has_f
    # parameters: the final totals
    assert f"{_results(runs['pk'])['params'][-1]['total']:,}" in page
    # the condensed log: one short line per rewrite, maps summarised
    assert "annotate(key=hat, value={s_max: 400, tasks: [t1, t2, t3]})" in page
    # capacity of PackNet's masks and owner maps, HAT's gates
    assert "masks+owners" in page and "gates" in page


def test_report_loads_nothing_and_runs_nothing(runs, tmp_path):
    out = tmp_path / "r.html"
    write_report([runs["pk"]], out, charts="svg")
    page = out.read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attr.startswith(("data:", "#")), attr
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # an XML namespace name, never fetched


def test_report_is_bounded_for_many_tasks():
    """200 tasks: the heat map is one PNG, 12 architectures are drawn, the page stays small."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cli import many_tasks

    from jointnet.execution.store import ParamStore
    from jointnet.report.runs import RunData

    net = many_tasks(200)
    store = ParamStore(seed=0).realize(net)
    names = list(net.tasks)
    R = [[0.5 + 0.5 * ((i * 7 + j) % 10) / 10 for j in range(i + 1)] for i in range(200)]
    results = {"tasks": names, "done": 200, "matrix": R, "metrics": {"AP": 0.7, "BWT": -0.1, "AF": -0.1},
               "params": [{"total": 10, "shared": 0, "owned": {}}] * 200, "wall_time": [0.1] * 200,
               "snapshots": [f"snapshots/task_{i:02d}_{t}.jn" for i, t in enumerate(names)]}
    spec = runner.RunSpec("demo", "synthetic", config={"epochs": 1})
    run = RunData(Path("demo"), spec, results, net, store, Path("demo/snap.jn"))
    page = build_report([run], charts="svg")
    assert len(page) < 4_000_000
    assert page.count("data:image/png;base64,") == 1
    assert page.count("<figure>") == 12 and "12 of 200 tasks drawn" in page


# ---- hostile input ------------------------------------------------------------------------------


def _one_line(capsys, argv, *needles):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.startswith("jointnet: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_output_path_errors(runs, tmp_path, capsys):
    run = str(runs["ft0"])
    _one_line(capsys, ["report", run, "-o", str(tmp_path)], "is a directory")
    (tmp_path / "dir.html").mkdir()
    _one_line(capsys, ["report", run, "-o", str(tmp_path / "dir.html")], "is a directory")
    _one_line(capsys, ["report", run, "-o", str(tmp_path / "r.txt")], "must end in .html or .htm")
    _one_line(capsys, ["report", run, "-o", str(tmp_path / "nope" / "r.html")], "does not exist")
    _one_line(capsys, ["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")], "no such directory")
    _one_line(capsys, ["report", str(runs["ft0"] / "run.json"), "-o", str(tmp_path / "r.html")], "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.html"]  # nothing written


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_hostile_strings_are_escaped(runs, tmp_path):
    evil = '<img src=x onerror=alert(1)>"&'
    run = _copy(runs["ft0"], tmp_path / "evil")
    spec = json.loads((run / "run.json").read_text())
    spec["strategy"] = evil
    spec["strategy_options"] = {evil: evil}
    (run / "run.json").write_text(json.dumps(spec))
    res = _results(run)
    res["strategy"] = evil
    (run / "results.json").write_text(json.dumps(res))
    out = tmp_path / "r.html"
    write_report([run], out, charts="svg")
    page = out.read_text()
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&quot;&amp;" in page


def test_snapshot_outside_the_run_is_refused(runs, tmp_path):
    """A task name may hold '/' and '..' (a valid name): the snapshot path it makes must still
    lie inside the run directory."""
    run = _copy(runs["ft0"], tmp_path / "escape")
    res = _results(run)
    bad = "t1/../../../outside"
    res["tasks"] = [bad] + res["tasks"][1:]
    res["done"] = 1
    for key in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        res[key] = res[key][:1]
    res["snapshots"] = [f"snapshots/task_00_{bad}.jn"]
    (run / "results.json").write_text(json.dumps(res))
    (run / "snapshots" / "task_00_t1").mkdir()  # so that the path really opens, outside the run
    target = (run / res["snapshots"][0]).resolve()
    assert run not in target.parents
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "snapshots" / "task_00_t1.jn", target)  # exists, but outside the run
    with pytest.raises(JointNetError, match="not a regular file inside the run"):
        load_run(run)


def test_symlinked_snapshot_is_refused(runs, tmp_path):
    run = _copy(runs["ft0"], tmp_path / "link")
    last = run / _results(run)["snapshots"][-1]
    real = tmp_path / "elsewhere.jn"
    shutil.move(last, real)
    last.symlink_to(real)
    with pytest.raises(JointNetError, match="not a regular file inside the run"):
        load_run(run)


def test_damaged_results_are_refused(runs, tmp_path, monkeypatch):
    run = _copy(runs["ft0"], tmp_path / "bad")
    good = (run / "results.json").read_text()
    res = json.loads(good)
    res["metrics"]["AP"] = float("nan")
    (run / "results.json").write_text(json.dumps(res))
    with pytest.raises(JointNetError, match="metric AP must be a finite number"):
        load_run(run)
    res = json.loads(good)
    res["tasks"][0] = "<b>"
    (run / "results.json").write_text(json.dumps(res))
    with pytest.raises(JointNetError, match="not a valid task name"):
        load_run(run)
    (run / "results.json").write_text("{not json")
    with pytest.raises(JointNetError, match="results.json is not readable JSON"):
        load_run(run)
    (run / "results.json").write_text(good)
    monkeypatch.setattr(report_runs, "MAX_RESULTS_BYTES", 100)
    with pytest.raises(JointNetError, match="more than the 100 a report reads"):
        load_run(run)
    monkeypatch.undo()
    (run / "results.json").unlink()
    (run / "results.json").symlink_to(runs["ft1"] / "results.json")
    with pytest.raises(JointNetError, match="results.json is not a regular file"):
        load_run(run)
    # a snapshot holding other tasks than results.json says
    run2 = _copy(runs["ft0"], tmp_path / "swapped")
    snaps = _results(run2)["snapshots"]
    shutil.copy(run2 / snaps[0], run2 / snaps[-1])
    with pytest.raises(JointNetError, match="its snapshot holds tasks"):
        load_run(run2)


def test_matplotlib_missing_is_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    _one_line(capsys, ["report", str(runs["ft0"]), "-o", str(tmp_path / "r.html"), "--charts", "matplotlib"],
              "pip install 'jointnet[plots]'")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib (optional extra jointnet[plots]) is not installed")
def test_matplotlib_charts_are_embedded_images(runs, tmp_path):
    out = tmp_path / "r.html"
    write_report([runs["ft0"], runs["ft1"]], out, charts="matplotlib")
    page = out.read_text()
    assert page.count('src="data:image/svg+xml;base64,') == 3 * 2  # heat map, curves, parameters per run
    assert "charts: matplotlib" in page


# ---- a real browser -----------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.fail("chromium is not installed: the report's browser test needs it (apt-get install -y chromium)")


def _screenshot(page: Path, tmp: Path) -> tuple[bytes, list[str]]:
    """Load `page` in headless chromium; return the screenshot PNG and the console lines the page
    caused (chromium logs each console message with its source)."""
    shot = tmp / "shot.png"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'profile'}", "--window-size=640,900", f"--screenshot={shot}",
         "--enable-logging=stderr", "--v=0", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    console = [line for line in proc.stderr.splitlines()
               if ("CONSOLE" in line or "Uncaught" in line) and page.as_uri() in line]
    assert shot.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return shot.read_bytes(), console


def _pixels(data: bytes) -> tuple[int, int, list[bytearray], int]:
    """Decode an 8-bit RGB / RGBA PNG (what chromium writes) with zlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = header
    assert depth == 8 and ctype in (2, 6) and interlace == 0, header
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, rows, bpp


def _variance(data: bytes) -> float:
    w, _, rows, bpp = _pixels(data)
    lum = [sum(row[x * bpp:x * bpp + 3]) / 3 for row in rows[::3] for x in range(0, w, 3)]
    mean = sum(lum) / len(lum)
    return sum((v - mean) ** 2 for v in lum) / len(lum)


def test_png_decoder_and_variance_on_known_images():
    flat = png([[(255, 255, 255, 255)] * 8] * 8)
    stripes = png([[(0, 0, 0, 255) if x % 2 else (255, 255, 255, 255) for x in range(8)]] * 8)
    assert _variance(flat) == 0.0 and _variance(stripes) > 1000


@pytest.mark.parametrize("charts", ["svg", pytest.param("matplotlib", marks=pytest.mark.skipif(
    not HAS_MPL, reason="matplotlib (optional extra jointnet[plots]) is not installed"))])
def test_report_in_headless_chromium(runs, tmp_path, charts):
    page = tmp_path / "report.html"
    write_report([runs["ft0"], runs["ft1"], runs["pk"], runs["hat"]], page, charts=charts)
    data, console = _screenshot(page, tmp_path)
    assert console == [], console
    assert _variance(data) > 100  # not blank: text, tables and charts on a white page


def test_the_browser_check_sees_page_errors(tmp_path):
    """The console check can fail: a page with a blocked load and a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'\"></head><body><p>x</p>"
                    '<img src="http://192.0.2.1/x.png"><script>undefinedFunction();</script></body></html>')
    _, console = _screenshot(page, tmp_path)
    assert len(console) >= 2 and any("img" in line.lower() or "image" in line.lower() for line in console)
