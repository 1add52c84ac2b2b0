"""docs/conf.py: the API pages it generates cover every public name.

The site itself is built by .ci/run (`python -m sphinx -W ...`, about a
minute with the notebook's execution), not here. These tests import conf.py's
page generator, which needs only optax_rms and the standard library.
"""

import importlib.util
import pathlib
import re
import sys
import types

import pytest

import optax_rms

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def conf():
  spec = importlib.util.spec_from_file_location(
    "optax_rms_docs_conf", ROOT / "docs" / "conf.py"
  )
  module = importlib.util.module_from_spec(spec)
  path = list(sys.path)
  try:
    spec.loader.exec_module(module)  # writes nothing: that is at builder-inited
  finally:
    sys.path[:] = path
  return module


def _public_objects():
  """(page name, object) for every name in the __all__ lists."""
  for name in optax_rms.__all__:
    obj = getattr(optax_rms, name)
    yield f"optax_rms.{name}", obj
    if isinstance(obj, types.ModuleType):
      for sub in obj.__all__:
        yield f"optax_rms.{name}.{sub}", getattr(obj, sub)


def _toctree_entries(text):
  """The entries of the page's toctree directives (not of its tables)."""
  entries = set()
  for block in text.split("\n.. ")[1:]:
    if block.startswith("toctree::"):
      entries |= set(
        re.findall(r"^   (?:[\w.]+ <)?(optax_rms[\w.]*)>?$", block, flags=re.MULTILINE)
      )
  return entries


def test_a_page_for_every_public_name(conf):
  pages = conf.api_pages()
  expected = dict(_public_objects())
  assert "compat" in optax_rms.__all__ and "sharding" in optax_rms.__all__
  assert set(pages) == {f"{q}.rst" for q in expected} | {"index.rst"}
  for qualname, obj in expected.items():
    text = pages[f"{qualname}.rst"]
    if isinstance(obj, types.ModuleType):
      directive = "automodule"
    elif isinstance(obj, type):
      directive = "autoclass"
    else:
      directive = "autofunction"
    assert f".. {directive}:: {qualname}\n" in text, text


def test_every_page_is_in_a_toctree(conf):
  """Sphinx -W fails on a page no toctree reaches; index + module pages."""
  pages = conf.api_pages()
  listed = set()
  for text in pages.values():
    listed |= _toctree_entries(text)
  assert listed == {name.removesuffix(".rst") for name in pages} - {"index"}


def test_a_new_public_name_gets_a_page(conf, monkeypatch):
  """What other helpers' new names rely on: no edit to docs/ needed."""

  def new_wrapper(inner):
    """A wrapper added to the package later."""
    return inner

  monkeypatch.setattr(optax_rms, "new_wrapper", new_wrapper, raising=False)
  monkeypatch.setattr(optax_rms, "__all__", [*optax_rms.__all__, "new_wrapper"])
  pages = conf.api_pages()
  assert (
    ".. autofunction:: optax_rms.new_wrapper\n" in pages["optax_rms.new_wrapper.rst"]
  )
  assert "optax_rms.new_wrapper" in _toctree_entries(pages["index.rst"])


def test_copied_pages_keep_their_links(conf):
  """README.md and benchmarks/README.md are copied under docs/ at build time;
  their relative links must then point at the copies (or docs/'s pages)."""
  readme, bench = ROOT / "README.md", ROOT / "benchmarks" / "README.md"
  docs = ROOT / "docs"
  text = "[a](docs/numerics.md) [b](benchmarks/results/H200/step.md#run) [c](https://x.org/a.md)"
  assert conf._fix_links(text, readme, docs / "readme.md") == (
    "[a](numerics.md) [b](benchmarks/results/H200/step.md#run) [c](https://x.org/a.md)"
  )
  text = "[a](results/H200/step.md) [b](../docs/porting.md) [c](../README.md)"
  assert conf._fix_links(text, bench, docs / "benchmarks" / "README.md") == (
    "[a](results/H200/step.md) [b](../porting.md) [c](../readme.md)"
  )
  # Not pages: a Markdown file becomes a download (myst's path:), another file
  # is linked by its path (myst makes it a download); a folder with a README
  # stands for it; a missing target is left for myst to report under -W.
  text = "[a](CHANGELOG.md) [b](examples/quickstart.py) [c](benchmarks/) [d](no.md)"
  assert conf._fix_links(text, readme, docs / "readme.md") == (
    "[a](path:../CHANGELOG.md) [b](../examples/quickstart.py) "
    "[c](benchmarks/README.md) [d](no.md)"
  )
  # docs/'s own pages are rewritten in place (the source-read hook).
  numerics = docs / "numerics.md"
  text = (
    "[a](../benchmarks/results/H200/step.md#x) [b](porting.md) "
    "[c](../examples/quickstart.py)"
  )
  assert conf._fix_links(text, numerics, numerics) == (
    "[a](benchmarks/results/H200/step.md#x) [b](porting.md) "
    "[c](../examples/quickstart.py)"
  )


def _toctree_blocks(text):
  """The entries of each ```{toctree} block of a Markdown page."""
  blocks = re.findall(r"```\{toctree\}\n(.*?)```", text, flags=re.S)
  return [
    [line for line in b.splitlines() if line and not line.startswith(":")]
    for b in blocks
  ]


def _tree(root, names):
  for name in names:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {path.stem}\n")


@pytest.mark.parametrize("layout", ["by-machine", "flat"])
def test_one_benchmarks_section_lists_every_results_page(
  conf, tmp_path, monkeypatch, layout
):
  """The sidebar has one Benchmarks entry: its page's toctrees reach the
  README and every results page, grouped by machine (benchmarks/results/
  <machine>/), or, in the older flat layout, every RESULTS*.md."""
  if layout == "by-machine":
    results = [
      "results/H200/step.md",
      "results/cpu-2core/step.md",
      "results/cpu-2core/accuracy.md",
    ]
  else:
    results = ["RESULTS.md", "RESULTS_H200.md"]
  notes = ["train_step/README.md"]
  _tree(tmp_path / "benchmarks", ["README.md", *results, *notes])
  monkeypatch.setattr(conf, "ROOT", tmp_path)
  text = conf.benchmarks_index()
  entries = [e for block in _toctree_blocks(text) for e in block]
  expected = [
    "How the suites measure <README>",
    *(r.removesuffix(".md") for r in [*results, *notes]),
  ]
  assert sorted(entries) == sorted(expected)
  if layout == "by-machine":
    assert "## H200\n" in text and "## cpu-2core\n" in text


def test_api_math_pages_belong_to_public_names(conf):
  """docs/_api_math/<name>.rst is appended to <name>'s API page: every such
  file names a public callable (a renamed function would lose its math)."""
  pages = conf.api_pages()
  files = sorted(conf.API_MATH.glob("*.rst"))
  assert files, "no math files: the API pages would show no formulas"
  for path in files:
    assert f"{path.stem}.rst" in pages, path.name
    assert ".. math::" in path.read_text()
  lines = ["docstring"]
  conf._append_math(None, "function", "optax_rms.rmsprop", None, None, lines)
  assert ".. math::" in lines and lines[0] == "docstring"
