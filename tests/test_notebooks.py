"""Executes every notebook in notebooks/ (so they never rot), at small sizes on the CPU.

Each notebook runs top to bottom in a fresh `python3` kernel (the interpreter running pytest),
from its own directory (as Jupyter would), with `JATTN_SMALL=1` in the environment (notebooks
read it to pick small sizes) and the repository root on `PYTHONPATH` (for `examples`). The
notebooks on disk are not modified.
"""

from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JATTN_SMALL", "1")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, errors


def test_notebooks_folder_is_not_empty():
  assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)
