"""The README's commands are the ones CI and users run."""

from __future__ import annotations

from pathlib import Path

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
