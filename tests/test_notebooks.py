"""The Colab notebooks run top to bottom (on the built-in data: the kernel gets no
S2GR_DATA_DIR, so each notebook takes its synthetic branch and stays quick)."""

import json
import pathlib

import nbformat
from nbclient import NotebookClient
import pytest

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"


@pytest.mark.parametrize("name", ["quickstart.ipynb", "inspect_codebooks.ipynb"])
def test_notebook_executes(name, monkeypatch, tmp_path):
  monkeypatch.delenv("S2GR_DATA_DIR", raising=False)
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  nb = nbformat.read(COLAB / name, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(COLAB.parent)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, errors
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
  assert "data: synthetic" in text and images >= 2
  if name == "quickstart.ipynb":
    assert "top 10:" in text and "thought → cluster" in text
  else:
    assert "collision rate before de-dup" in text and "items per level-0 cluster" in text


def test_saved_outputs_come_from_a_run():
  """The notebooks in the repository carry the outputs of a real execution."""
  for name in ("quickstart.ipynb", "inspect_codebooks.ipynb"):
    nb = json.loads((COLAB / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), name
    assert any(o.get("output_type") == "display_data" for c in code for o in c["outputs"])
