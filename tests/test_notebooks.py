"""The notebooks run: every code cell, in order, in one namespace (what a kernel would do,
without needing one), with a non-interactive matplotlib backend."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_four_notebooks():
    names = {path.stem for path in NOTEBOOKS}
    assert names == {"quickstart", "inversion_and_editing", "schedule_sweeps", "flow_matching"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_is_stored_without_outputs(path):
    matplotlib.use("Agg")
    cells = json.loads(path.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] for cell in code), "commit notebooks stripped"
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(code):
        exec(compile("".join(cell["source"]), f"{path.name}[{index}]", "exec"), namespace)
    import matplotlib.pyplot as plt

    assert plt.get_fignums(), "the notebook draws its figures"
    plt.close("all")
