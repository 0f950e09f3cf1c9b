"""The README's test command is exactly what CI runs, and its graph-API snippet runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "python -m pytest" in command
    assert f"\n{command}\n" in README


def test_graph_api_snippet_runs():
    start = README.index("```python") + len("```python")
    code = README[start : README.index("```", start)]
    env: dict = {}
    exec(compile(code.replace("print(", "str("), "README.md", "exec"), env)
    assert env["net"].version == 14 + 3
    assert env["net3"].version == env["net"].version + 2
    assert set(env["both"].tasks) == {"t1", "t2"}
