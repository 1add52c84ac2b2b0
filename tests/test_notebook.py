"""examples/rmsprop_variants.ipynb: committed without outputs, and it runs.

The notebook is executed top to bottom with nbclient in a fresh ipykernel,
with a cell injected after its ``parameters`` cell to shorten the run. The
kernel is a separate process: the root conftest's JAX settings do not reach it.

The kernel must be this interpreter (the venv with optax_rms and its test
dependencies): the ``python3`` kernelspec is the one in the venv's
``share/jupyter/kernels`` (first on Jupyter's data path), whose command is
``python``, which jupyter_client replaces by ``sys.executable``; failing that,
ipykernel's built-in spec, which names ``sys.executable`` itself. An appended
cell prints the kernel's ``sys.prefix``, so the test fails loudly if some other
kernelspec wins.
"""

import importlib.util
import json
import pathlib
import sys

import pytest

NOTEBOOK = (
  pathlib.Path(__file__).resolve().parent.parent / "examples" / "rmsprop_variants.ipynb"
)
EPOCHS = 2  # the notebook's default is 8
PREFIX_MARKER = "kernel sys.prefix: "


def _is_parameters(cell):
  return "parameters" in cell.get("metadata", {}).get("tags", [])


def test_committed_notebook_has_no_outputs():
  """Plain JSON, so that this check needs no Jupyter package."""
  nb = json.loads(NOTEBOOK.read_text())
  dirty = [
    cell.get("id", i)
    for i, cell in enumerate(nb["cells"])
    if cell["cell_type"] == "code"
    and (cell["outputs"] or cell["execution_count"] is not None)
  ]
  assert not dirty, (
    f"{NOTEBOOK.name}: cells {dirty} have outputs or execution counts; strip them "
    "(e.g. jupyter nbconvert --clear-output --inplace) before committing."
  )
  tagged = [c for c in nb["cells"] if _is_parameters(c)]
  assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
  assert "EPOCHS = " in "".join(tagged[0]["source"])


def _stream(cell, name="stdout"):
  return "".join(
    o.text for o in cell.outputs if o.output_type == "stream" and o.name == name
  )


def test_notebook_executes(monkeypatch, tmp_path):
  # Older jupyter_core 5.x warns, when jupyter_client is imported, about a move
  # to platformdirs paths (a DeprecationWarning: an error under filterwarnings
  # = error) unless this is set; jupyter/jupyter_core#447 dropped the warning.
  # So set it before the Jupyter packages are imported.
  monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
  # The kernel's connection file goes here, not under ~/.local/share/jupyter.
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  # Needed by the kernel only: looked up, not imported here.
  for module in ("ipykernel", "matplotlib", "sklearn"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"the notebook needs {module}")
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")

  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  index = next(i for i, c in enumerate(nb.cells) if _is_parameters(c))
  nb.cells.insert(
    index + 1,
    nbformat.v4.new_code_cell(
      f"EPOCHS = {EPOCHS}", metadata={"tags": ["injected-parameters"]}
    ),
  )
  nb.cells.append(
    nbformat.v4.new_code_cell(f"import sys\nprint({PREFIX_MARKER!r} + sys.prefix)")
  )

  client = nbclient.NotebookClient(
    nb,
    timeout=300,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK.parent)}},
  )
  client.execute()  # raises CellExecutionError on the first failing cell

  cells = {c.get("id"): c for c in nb.cells if c.cell_type == "code"}
  errors = [o for c in cells.values() for o in c.outputs if o.output_type == "error"]
  assert not errors
  # No warnings from the notebook's own code (the kernel does not run under
  # pytest's filterwarnings = error).
  stderr = "".join(_stream(c, "stderr") for c in cells.values())
  assert "Warning" not in stderr, stderr

  kernel_prefix = _stream(nb.cells[-1]).split(PREFIX_MARKER)[1].strip()
  assert kernel_prefix == sys.prefix, (
    f"the python3 kernel ran {kernel_prefix}, not this interpreter ({sys.prefix})"
  )

  variants = [
    "optax.rmsprop",
    "plain",
    "centered",
    "momentum",
    "bias_correction",
    "eps_in_sqrt=False",
    "compat.pytorch",
    "compat.keras",
  ]
  # The parity cell ran its assert_allclose for every optax_rms variant
  # against optax.rmsprop of the same arguments, and lists the differences
  # from the plain reference apart, as differences by design.
  parity, by_design = _stream(cells["parity"]).split("Differences by design")
  ours = [v for v in variants if v != "optax.rmsprop"]
  for v in ours:
    (line,) = [x for x in parity.splitlines() if x.split()[:1] == [v]]
    assert "vs optax.rmsprop(" in line and float(line.split()[1]) < 1e-5, line
  assert sorted(x.split()[0] for x in by_design.splitlines()[1:] if x.strip()) == (
    sorted(v for v in ours if v != "plain")
  ), by_design

  table = _stream(cells["accuracy"])
  assert f"Final test accuracy after {EPOCHS} epochs" in table, table
  rows = {}
  for line in table.splitlines():
    name, *rest = line.split()
    if name in variants:
      rows[name] = float(rest[0].rstrip("%")) / 100
  assert sorted(rows) == sorted(variants), table
  # Two epochs of any of these variants reach ~85%+; 10% is chance.
  assert all(0.5 < acc <= 1.0 for acc in rows.values()), rows

  for cell_id in ("curves", "accuracy", "steps"):
    images = [o for o in cells[cell_id].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, f"cell {cell_id!r}: expected one PNG figure"
