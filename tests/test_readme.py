"""The README's commands are the ones CI and users run, and its code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0].strip() for block in text.split("```bash\n")[1:]]


def test_ci_runs_the_readme_test_command():
    commands = _bash_blocks((ROOT / "README.md").read_text())
    assert len(commands) == 2, "the README has exactly two set-up commands"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == commands[1]
    assert commands[0].endswith("jaxsched demo")


def test_example_prints_falling_reconstruction_errors(capsys):
    from jaxsched.cli import main

    main(["example", "--steps", "10", "100", "--num-samples", "64", "--dim", "4"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]
    errors = [float(row[1]) for row in rows]
    assert len(errors) == 2 and errors[1] < errors[0]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    """One session, as a reader would paste them: each block sees the names the earlier ones
    defined, and nothing else."""
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)  # the blocks write out_dir/ and grid.json
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:  # name the block: the traceback points into it
            pytest.fail(f"README python block {number} failed: {error!r}\n{block}")
