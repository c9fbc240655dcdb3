"""The README's Python example runs as written (documentation that cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out.splitlines()
    angles = {line.split()[0]: float(line.split()[2]) for line in out if line.endswith(" deg")}
    assert angles["dense1"] > 45 and angles["dense2"] > 45  # below the FA boundary
    assert all(angles[k] < 0.1 for k in ("dense3", "dense4", "dense5", "dense6", "output"))


def test_readme_first_lines_give_the_two_commands():
    head = README.read_text().splitlines()[:8]
    assert any("snakemake --cores all" in line for line in head)
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = next(line.split("#")[0].strip() for line in head if "pytest" in line)
    assert test_cmd in ci, "the CI script must run exactly the README's test command"
