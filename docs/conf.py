"""Sphinx configuration of the optax_rms documentation site.

Build (from the repository root; add ``-E`` to rebuild after a docstring
change, which Sphinx's cache does not see):

  pip install -e ".[docs]" && python -m sphinx -W -b html docs docs/_build/html

What this file does beyond plain settings, at ``builder-inited`` (so that
importing it, as tests/test_docs_conf.py does, writes nothing):

- **API pages from ``__all__``.** :func:`api_pages` lists one page per name in
  ``optax_rms.__all__``, and for each public submodule in it (``compat``,
  ``sharding``) one page per name in that module's ``__all__``; they are
  written to ``docs/api/`` (generated, git-ignored). A name added to an
  ``__all__`` appears on the site without an edit here.
- **Pages that live outside docs/.** ``README.md`` is copied to
  ``docs/readme.md``, every Markdown file under ``benchmarks/`` to
  ``docs/benchmarks/`` and the notebook ``examples/rmsprop_variants.ipynb`` to
  ``docs/examples/`` (generated, git-ignored). :func:`_fix_links` rewrites
  their relative links (and, through ``source-read``, those of docs/'s own
  pages) so that they land where they did on GitHub: on the copied page, or
  on a download of a file that is not a page.
- **One Benchmarks section.** :func:`benchmarks_index` writes
  ``docs/benchmarks/index.md``: the benchmarks' README, then every results
  page by machine (``benchmarks/results/<machine>/*.md``, or the older flat
  ``benchmarks/RESULTS*.md``), then any other page under benchmarks/, each in
  a toctree below that one entry of the sidebar.
- **Math beside the docstrings.** ``help()`` shows a docstring as plain text,
  so the public docstrings write their formulas in plain text, and the
  LaTeX version of a name's update lives in ``docs/_api_math/<name>.rst``,
  appended to its API page (:func:`_append_math`).
- **The notebook is executed at every build** by myst-nb (its outputs are
  stripped in git), in the notebook's folder, with the ``python3`` kernel: the
  interpreter of this environment, as in tests/test_notebook.py. A failing
  cell fails the build.

**Math without network.** The docstrings' ``.. math::`` blocks and
``:math:`` roles, and ``$...$`` in the Markdown pages (myst's ``dollarmath``),
are typeset by MathJax in the browser. Sphinx would load MathJax from a CDN;
the machines that build and read this site may have no network beyond the
package registries, so MathJax 3.2.2 comes from the PyPI package
``sphinx-mathjax-offline`` (its ``tex-chtml.js`` and woff fonts, copied into
``_static/mathjax/`` of the built site; ``mathjax_path`` points there). The
site then renders math from ``file://`` or any server, offline.
``python docs/check_math.py`` checks, in headless Chromium, that every
formula of the built site is typeset (docs/images/api_rmsprop.png is its
screenshot of the rmsprop page); ``python docs/check_layout.py`` that every
page's tables, text and sidebar names fit a 1280 px window
(``_static/custom.css`` makes them).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import pathlib
import re
import shutil
import sys
import types
from typing import Any

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the optax_rms of this checkout

PACKAGE = "optax_rms"

# -- Project -----------------------------------------------------------------

project = "optax_rms"
author = "the optax_rms authors"
copyright = "the optax_rms authors"  # noqa: A001 (Sphinx's name)
release = version = importlib.import_module(PACKAGE).__version__

# -- General -----------------------------------------------------------------

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.autosummary",  # the tables of names; the pages are api_pages()
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_nb",  # Markdown (it includes myst-parser) and notebooks
]

# _api_math/: the API pages' math (appended by _append_math), not pages.
exclude_patterns = ["_build", "_api_math", "images/README*", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
default_role = "py:obj"  # `name` in a docstring links where it can, else code
pygments_style = "sphinx"

# autodoc + napoleon: the docstrings are Google style (Args:, Returns:,
# Attributes:, Examples:).
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Type aliases as written, not expanded into their unions
# ("Array | ndarray | bool | number | ..." for jax.typing.ArrayLike).
autodoc_type_aliases = {
  "jax.typing.ArrayLike": "jax.typing.ArrayLike",
  "optax.ScalarOrSchedule": "optax.ScalarOrSchedule",
  "optax.Schedule": "optax.Schedule",
  "optax.Params": "optax.Params",
  "optax.Updates": "optax.Updates",
  "optax.OptState": "optax.OptState",
  # The package's private aliases, spelled out.
  "ScalarOrSchedule": "optax.ScalarOrSchedule",
  "WeightDecayMode": "Literal['coupled', 'decoupled']",
  "Initable": "optax.GradientTransformation | Callable[[optax.Params], Any]",
}
autodoc_preserve_defaults = True  # `learning_rate=1e-3`, not a repr of a schedule
autosummary_generate = False  # api_pages() writes the pages
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# myst: $...$ and $$...$$ math in Markdown; headings get anchors so that
# `page.md#section` links resolve.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# myst-nb: run the notebook at every build; an error in a cell fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# -- HTML ----------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "optax_rms"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}
html_show_sourcelink = False

# MathJax offline (see the module docstring): set in setup() once the package's
# files are found; sphinx.ext.mathjax adds the <script> tag to pages with math.
mathjax_path = "mathjax/tex-chtml.js"
# textmacros: `\_` and other text-mode macros inside \text{} / \texttt{}, as in
# rmsprop's "\texttt{weight\_decay\_mode}" (without it MathJax shows the
# backslash). MathJax loads it from _static/mathjax/input/tex/extensions/.
mathjax3_config = {
  "loader": {"load": ["[tex]/textmacros"]},
  "tex": {"packages": {"[+]": ["textmacros"]}},
}


# -- API pages -----------------------------------------------------------------


def _public_names(module: types.ModuleType) -> list[str]:
  names = getattr(module, "__all__", None)
  if names is None:
    raise ValueError(f"{module.__name__} has no __all__: its API pages need one.")
  return list(names)


def _title(text: str) -> str:
  return f"{text}\n{'=' * len(text)}\n"


def _object_page(qualname: str, obj: Any) -> str:
  """The rst of one public name's page, documented under its public path."""
  if inspect.isclass(obj):
    if issubclass(obj, tuple):
      # A NamedTuple: its fields are in the docstring's Attributes: section;
      # autodoc's members would repeat them as "Alias for field number N".
      directive = f".. autoclass:: {qualname}\n   :show-inheritance:\n"
    else:
      directive = f".. autoclass:: {qualname}\n   :members:\n   :show-inheritance:\n"
  elif callable(obj):
    directive = f".. autofunction:: {qualname}\n"
  else:
    directive = f".. autodata:: {qualname}\n"
  return f"{_title(qualname)}\n{directive}"


def _summary(entries: list[str]) -> str:
  """A table of the names with their docstrings' first lines, linked."""
  lines = "\n".join(f"   {e}" for e in entries)
  return f".. autosummary::\n   :nosignatures:\n\n{lines}\n"


def _toctree(entries: list[str], parent: str = PACKAGE) -> str:
  """The pages below this one, for the navigation (the table shows them).

  Each is titled by its name relative to ``parent`` (``rmsprop``,
  ``compat``, ``keras``): the sidebar then shows whole names, where the
  full ``optax_rms.StochasticRoundingState`` would break mid-word.
  """
  lines = "\n".join(f"   {e.removeprefix(parent + '.')} <{e}>" for e in entries)
  return f".. toctree::\n   :hidden:\n\n{lines}\n"


def _module_page(qualname: str, module: types.ModuleType) -> str:
  names = _public_names(module)
  # automodule makes `qualname` the current module: the table names its
  # members relative to it (autosummary warns on full names there).
  return (
    f"{_title(qualname)}\n"
    f".. automodule:: {qualname}\n   :no-members:\n\n"
    f"{_summary(names)}\n{_toctree([f'{qualname}.{n}' for n in names], qualname)}"
  )


def api_pages(package: str = PACKAGE) -> dict[str, str]:
  """The API pages: file name under docs/api/ -> its reStructuredText.

  One page per name in ``package.__all__`` (``autofunction`` / ``autoclass``
  / ``autodata``), and for a name that is a submodule of the package with an
  ``__all__`` of its own a module page (its docstring and a table of its
  names) plus one page per name in that ``__all__``. ``index.rst`` tables
  them all. Pure: it imports the package and returns text;
  :func:`write_api_pages` writes it.
  """
  root = importlib.import_module(package)
  pages: dict[str, str] = {}
  top: list[str] = []
  modules: dict[str, list[str]] = {}
  for name in _public_names(root):
    obj = getattr(root, name)
    qualname = f"{package}.{name}"
    if isinstance(obj, types.ModuleType):
      pages[f"{qualname}.rst"] = _module_page(qualname, obj)
      modules[qualname] = []
      for sub in _public_names(obj):
        subname = f"{qualname}.{sub}"
        modules[qualname].append(subname)
        pages[f"{subname}.rst"] = _object_page(subname, getattr(obj, sub))
    else:
      top.append(qualname)
      pages[f"{qualname}.rst"] = _object_page(qualname, obj)

  def section(title: str, text: str) -> str:
    return f"{title}\n{'-' * len(title)}\n\n{text}"

  index = [
    _title("API reference"),
    f"Every public name of ``{package}``, generated from its ``__all__`` (and "
    "its submodules' ``__all__``) at build time.\n",
    section(package, _summary(top)),
  ]
  for module, names in modules.items():
    index.append(section(module, _summary([module, *names])))
  index.append(_toctree([*top, *modules]))
  pages["index.rst"] = "\n".join(index)
  return pages


def write_api_pages(outdir: pathlib.Path = DOCS / "api") -> None:
  """Writes :func:`api_pages` to ``outdir``, removing stale pages."""
  pages = api_pages()
  outdir.mkdir(exist_ok=True)
  for stale in outdir.glob("*.rst"):
    if stale.name not in pages:
      stale.unlink()
  for name, text in pages.items():
    path = outdir / name
    if not path.exists() or path.read_text() != text:  # keep Sphinx's cache
      path.write_text(text)


# -- Pages from outside docs/ ----------------------------------------------------


# Copied under docs/ at build time (generated, git-ignored): the README, every
# Markdown file under benchmarks/ (README, RESULTS*.md, notes, subfolders'
# READMEs: index.md's toctree globs them) and the notebook.
COPIED_FOLDERS = ("benchmarks", "examples")


def _copies() -> dict[str, str]:
  """Repository path -> path under docs/ of the pages copied there."""
  copies = {
    "README.md": "readme.md",
    "examples/rmsprop_variants.ipynb": "examples/rmsprop_variants.ipynb",
  }
  for path in sorted((ROOT / "benchmarks").rglob("*.md")):
    name = path.relative_to(ROOT).as_posix()
    copies[name] = name
  return copies


_LINK = re.compile(r"\]\((?!https?:|#|mailto:|path:)([^)#\s]+)(#[^)\s]*)?\)")


def _fix_links(text: str, src: pathlib.Path, dst: pathlib.Path) -> str:
  """Rewrites the relative Markdown links of ``src``, read as page ``dst``.

  ``src`` is where the file lives in the repository, ``dst`` the page under
  docs/ (the same file for docs/'s own pages). A target that is a page of the
  site (copied, or under docs/; a folder stands for its README.md) is linked
  relative to ``dst``; another Markdown file of the repository (not a page)
  becomes a download link (myst's ``path:``); any other existing file is
  linked by its path, which myst turns into a download; a target that does
  not exist is left alone, for myst to report.
  """
  copies = {(ROOT / s).resolve(): DOCS / d for s, d in _copies().items()}

  def fix(match: re.Match[str]) -> str:
    target, anchor = match.group(1), match.group(2) or ""
    resolved = (src.parent / target).resolve()
    if resolved.is_dir() and resolved / "README.md" in copies:
      resolved = resolved / "README.md"
    prefix = ""
    if resolved in copies:
      resolved = copies[resolved]
    elif not resolved.exists():
      return match.group(0)
    elif resolved.suffix in (".md", ".ipynb") and not resolved.is_relative_to(DOCS):
      prefix = "path:"
    return f"]({prefix}{os.path.relpath(resolved, dst.parent)}{anchor})"

  return _LINK.sub(fix, text)


BENCHMARKS_INDEX = "benchmarks/index.md"  # generated: the one Benchmarks section


def _results_pages() -> dict[str, list[str]]:
  """The benchmark results pages, by machine: repository paths.

  Results live in ``benchmarks/results/<machine>/*.md``; before that layout
  they were ``benchmarks/RESULTS*.md`` side by side (one group).
  """
  folder = ROOT / "benchmarks" / "results"
  groups: dict[str, list[str]] = {}
  if folder.is_dir():
    for path in sorted(folder.glob("*/*.md")):
      groups.setdefault(path.parent.name, []).append(path.relative_to(ROOT).as_posix())
  else:
    flat = sorted((ROOT / "benchmarks").glob("RESULTS*.md"))
    if flat:
      groups["Results"] = [p.relative_to(ROOT).as_posix() for p in flat]
  return groups


def benchmarks_index() -> str:
  """The Benchmarks section's page: the benchmarks' README, then every
  results page grouped by machine, then any other Markdown file under
  benchmarks/ (a suite's own README), each in a toctree: the sidebar shows
  one "Benchmarks" entry, and the pages below it."""
  groups = _results_pages()
  listed = {p for paths in groups.values() for p in paths}
  others = [
    name
    for name in _copies()
    if name.startswith("benchmarks/")
    and name not in listed
    and name != "benchmarks/README.md"
  ]

  def toctree(paths: list[str]) -> str:
    entries = "\n".join(p[len("benchmarks/") : -len(".md")] for p in paths)
    return f"```{{toctree}}\n:maxdepth: 1\n\n{entries}\n```\n"

  text = [
    "# Benchmarks\n",
    "What each suite answers, how it measures and the command that reruns it "
    "are in the [benchmarks' README](README.md); the results, by the machine "
    "they were measured on, are below (each page says its date and versions). "
    "[Memory and performance](../performance.md) reads the main figures.\n",
    "```{toctree}\n:hidden:\n\nHow the suites measure <README>\n```\n",
  ]
  for machine, paths in groups.items():
    text += [f"## {machine}\n", toctree(paths)]
  if others:
    text += ["## Notes of the suites\n", toctree(others)]
  return "\n".join(text)


# An API page is one object: no "Contents" column, more width for its math.
# porting.md's table compares six frameworks side by side, and the results
# pages hold the benchmarks' widest tables: they take that column's width too.
# (Page names, not a wildcard: the theme warns when two wildcards match.)
html_theme_options["secondary_sidebar_items"] = {
  "**": ["page-toc"],
  "porting": [],
  **{f"api/{name.removesuffix('.rst')}": [] for name in api_pages()},
  **{
    path.removesuffix(".md"): []
    for paths in _results_pages().values()
    for path in paths
  },
}


def copy_outside_pages() -> None:
  """Copies the README, the benchmark pages and the notebook under docs/,
  and writes the Benchmarks section's index."""
  copies = _copies()
  for folder in COPIED_FOLDERS:  # drop files no longer copied
    for stale in sorted((DOCS / folder).rglob("*"), reverse=True):
      name = stale.relative_to(DOCS).as_posix()
      if stale.is_file() and name not in (*copies.values(), BENCHMARKS_INDEX):
        stale.unlink()
  for src_name, dst_name in copies.items():
    src, dst = ROOT / src_name, DOCS / dst_name
    data = src.read_bytes()
    if src.suffix == ".md":
      text = _fix_links(data.decode(), src, dst)
      # Results pages share titles ("optax_rms step benchmark"): say which.
      if src.name.startswith("RESULTS"):
        text = re.sub(r"\A# (.*)", rf"# \1 ({src.name})", text, count=1)
      elif src.parent.parent == ROOT / "benchmarks" / "results":
        text = re.sub(r"\A# (.*)", rf"# \1 ({src.parent.name})", text, count=1)
      data = text.encode()
    _write_if_changed(dst, data)
  _write_if_changed(DOCS / BENCHMARKS_INDEX, benchmarks_index().encode())


def _write_if_changed(dst: pathlib.Path, data: bytes) -> None:
  dst.parent.mkdir(parents=True, exist_ok=True)
  if not dst.exists() or dst.read_bytes() != data:  # keep Sphinx's cache
    dst.write_bytes(data)


def _fix_own_links(app: Any, docname: str, source: list[str]) -> None:
  """docs/'s own Markdown pages: their links into the repository, as above."""
  path = DOCS / f"{docname}.md"
  own = not any(docname.startswith(f"{f}/") for f in (*COPIED_FOLDERS, "api"))
  if own and docname != "readme" and path.exists():
    source[0] = _fix_links(source[0], path, path)


# -- Sphinx hooks ------------------------------------------------------------------


def _mathjax_files() -> pathlib.Path:
  """MathJax 3 as shipped in the ``sphinx-mathjax-offline`` wheel."""
  from importlib import metadata

  try:
    dist = metadata.distribution("sphinx-mathjax-offline")
  except metadata.PackageNotFoundError as e:
    raise RuntimeError(
      "MathJax is served from the sphinx-mathjax-offline package: "
      'pip install -e ".[docs]"'
    ) from e
  for file in dist.files or ():
    if file.name == "tex-chtml.js" and file.parent.name == "mathjax":
      return pathlib.Path(str(dist.locate_file(file))).parent
  raise RuntimeError("sphinx-mathjax-offline has no mathjax/tex-chtml.js")


_FORWARD_REF = re.compile(r"TypeAliasForwardRef\('([^']*)'\)")


def _plain_aliases(
  app: Any, what: str, name: str, obj: Any, options: Any, signature: Any, ret: Any
) -> tuple[Any, Any]:
  """``X | None`` with X in ``autodoc_type_aliases`` reads as that, not as
  ``TypeAliasForwardRef('X') | None`` (Sphinx 9 reprs the alias in a union)."""

  def plain(text: str | None) -> str | None:
    if text is None:
      return None
    text = _FORWARD_REF.sub(r"\1", text)
    # Modules without `from __future__ import annotations` (their public
    # annotations are objects, as optax's tooling reads them) give Sphinx the
    # aliases' values: spell those back as the aliases' names.
    for expanded, alias in _expanded_aliases():
      text = text.replace(expanded, alias)
    return text

  return plain(signature), plain(ret)


def _expanded_aliases() -> list[tuple[str, str]]:
  """(how Sphinx prints an alias's value, the alias), longest first."""
  import jax
  import optax
  from sphinx.util.typing import stringify_annotation

  aliases = {
    "optax.ScalarOrSchedule": optax.ScalarOrSchedule,
    "optax.Schedule": optax.Schedule,
    "jax.typing.ArrayLike": jax.typing.ArrayLike,
  }
  pairs = []
  for alias, value in aliases.items():
    for mode in ("smart", "fully-qualified-except-typing"):
      pairs.append((stringify_annotation(value, mode), alias))
  return sorted(set(pairs), key=lambda pair: -len(pair[0]))


# -- A quiet build ---------------------------------------------------------------
#
# Two things printed at every build that are no news: myst-parser and myst-nb
# log their whole configuration at INFO (myst_parser/sphinx_ext/main.py,
# myst_nb/sphinx_ext.py: "myst v5.2.0: MdParserConfig(...)"), and ipykernel
# >= 7 warns on stderr that the notebook's kernel talks to Sphinx over TCP
# without encryption (ipykernel/kernelapp.py, init_sockets): it does, over
# localhost, as every kernel jupyter_client starts without CurveZMQ keys, and
# myst-nb offers no way to ask for another transport.


class _DropConfigDumps(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return not any(
      type(a).__name__ in ("MdParserConfig", "NbParserConfig") for a in args
    )


_CONFIG_LOGGERS = ("sphinx.myst_parser.sphinx_ext.main", "sphinx.myst_nb.sphinx_ext")

# Runs in the notebook's kernel at its start (IPython's profile config): drops
# that one warning, and only it.
_KERNEL_CONFIG = """\
import logging

logging.getLogger("IPKernelApp").addFilter(
  lambda record: "without encryption" not in record.getMessage()
)
"""


def _quiet_kernel(outdir: pathlib.Path) -> None:
  """Points the kernels this build starts at an IPython profile under the
  build folder holding _KERNEL_CONFIG (unless IPYTHONDIR is set already)."""
  if "IPYTHONDIR" in os.environ:
    return
  ipython_dir = outdir / "ipython"
  _write_if_changed(
    ipython_dir / "profile_default" / "ipython_kernel_config.py",
    _KERNEL_CONFIG.encode(),
  )
  os.environ["IPYTHONDIR"] = str(ipython_dir)


API_MATH = DOCS / "_api_math"


def _append_math(
  app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
  """The API page of ``name`` ends with ``_api_math/<name>.rst``: the update
  in mathematical notation, which the site renders and which a docstring
  would show as raw LaTeX in ``help()`` (tests/test_help.py)."""
  path = API_MATH / f"{name}.rst"
  if path.exists():
    lines += ["", ".. rubric:: In mathematical notation", ""]
    lines += path.read_text().splitlines()


def _on_builder_inited(app: Any) -> None:
  write_api_pages()
  copy_outside_pages()
  _quiet_kernel(pathlib.Path(app.outdir).parent)


def _copy_mathjax(app: Any, exception: Exception | None) -> None:
  if exception is None and app.builder.format == "html":
    target = pathlib.Path(app.outdir) / "_static" / "mathjax"
    source = _mathjax_files()
    # Only what tex-chtml.js loads: itself, its fonts and the TeX extensions
    # (textmacros, and those \require or the autoloader fetch), not the other
    # components the package ships (24 MB in all).
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "tex-chtml.js", target / "tex-chtml.js")
    for folder in ("output/chtml/fonts/woff-v2", "input/tex/extensions"):
      shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)


def setup(app: Any) -> dict[str, Any]:
  _mathjax_files()  # fail early, with the install command, if it is missing
  for name in _CONFIG_LOGGERS:
    logging.getLogger(name).addFilter(_DropConfigDumps())
  app.connect("builder-inited", _on_builder_inited)
  app.connect("source-read", _fix_own_links)
  app.connect("autodoc-process-signature", _plain_aliases)
  app.connect("autodoc-process-docstring", _append_math)
  app.connect("build-finished", _copy_mathjax)
  return {"parallel_read_safe": True}
