"""`help()` of every public callable reads well in an 80x24 terminal.

What a user sees first is `pydoc`'s plain-text page: the signature, printed
from the annotations' values, then the docstring. These tests render that page
for every name in `optax_rms.__all__`, `optax_rms.compat.__all__` and
`optax_rms.sharding.__all__`, and check what made it unreadable before:
type aliases expanded into their unions (a 1,900-character signature that
filled the first screen), LaTeX in the text (it belongs to the documentation
site, which renders it), and pointers to sections of the README or of
docs/ that do not exist.
"""

import inspect
import pathlib
import pydoc
import re
import types

import optax
import pytest

import optax_rms
from optax_rms import _types

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCREEN_COLUMNS, SCREEN_ROWS = 80, 24
# A signature of up to 320 characters is four terminal rows. A callable with
# many parameters (rmsprop has 22: their names and defaults alone take 400
# characters) may take more, up to half the first screen, but no annotation
# may be long: an expanded union is what made the signatures unreadable.
SIGNATURE_CHARS, MANY_PARAMETERS = 320, 10
ANNOTATION_CHARS = 60
# One exception: optax's contract tests (optax/contrib/_common_test.py,
# optax/schedules/_schedule_test.py) run their schedule checks only on an
# optimizer whose learning rate is annotated with optax.ScalarOrSchedule
# itself (tests/test_hardening.py keeps that), which prints as its union.
OPTAX_CONTRACT = ("learning_rate", "lr")

def _public_callables():
  modules = [optax_rms, optax_rms.compat, optax_rms.sharding]
  for module in modules:
    for name in module.__all__:
      obj = getattr(module, name)
      if callable(obj) and not isinstance(obj, types.ModuleType):
        yield pytest.param(obj, id=f"{module.__name__}.{name}")


CALLABLES = list(_public_callables())


def _plain_help(obj) -> str:
  return pydoc.render_doc(obj, renderer=pydoc.plaintext)


def _screen_rows(text: str) -> list[str]:
  """The rows a terminal of SCREEN_COLUMNS shows, long lines wrapped."""
  rows = []
  for line in text.splitlines():
    rows.extend([line[i : i + SCREEN_COLUMNS] for i in range(0, len(line), 80)] or [""])
  return rows


def test_every_public_name_is_checked():
  names = {p.id for p in CALLABLES}
  assert "optax_rms.rmsprop" in names and "optax_rms.compat.keras" in names
  assert "optax_rms.sharding.state_shardings" in names and len(names) >= 20


@pytest.mark.parametrize("obj", CALLABLES)
def test_signature_is_short_and_names_its_aliases(obj):
  sig = inspect.signature(obj)
  params = []
  for param in sig.parameters.values():
    if param.name in OPTAX_CONTRACT and param.annotation is optax.ScalarOrSchedule:
      param = param.replace(annotation=_types.ScalarOrSchedule)  # as if named
    params.append(param)
  text = str(sig.replace(parameters=params))
  for name in ("Union[", "ForwardRef(", "jaxlib", "numpy.ndarray", "Iterable["):
    assert name not in text, f"{name!r} in the signature: {text}"
  for param in params:
    if param.annotation is not inspect.Parameter.empty:
      shown = inspect.formatannotation(param.annotation)
      assert len(shown) <= ANNOTATION_CHARS, f"{param.name}: {shown}"
  if len(params) <= MANY_PARAMETERS:
    assert len(text) <= SIGNATURE_CHARS, text
  assert len(text) <= SCREEN_COLUMNS * SCREEN_ROWS // 2, text


@pytest.mark.parametrize("obj", CALLABLES)
def test_first_screen_shows_what_it_does(obj):
  """The docstring's first line is on the first 80x24 screen of help()."""
  summary = inspect.getdoc(obj).splitlines()[0].strip()
  first_screen = "\n".join(_screen_rows(_plain_help(obj))[:SCREEN_ROWS])
  # Compare without the layout: pydoc indents, the terminal wraps.
  squeeze = lambda s: re.sub(r"\s+", "", s)
  assert squeeze(summary[:60]) in squeeze(first_screen), first_screen


@pytest.mark.parametrize("obj", CALLABLES)
def test_no_latex_in_help(obj):
  """The math in LaTeX is rendered on the site (docs/conf.py adds it to the
  API pages); in a terminal it would be backslashes."""
  text = _plain_help(obj)
  for latex in ("\\begin", "\\\\", ".. math::", ":math:", "\\frac", "\\texttt"):
    assert latex not in text, f"{latex!r} in help({obj.__qualname__})"


def _anchors(path: pathlib.Path) -> set[str]:
  """The heading anchors of a Markdown page, as GitHub and myst make them."""
  anchors = set()
  for line in path.read_text().splitlines():
    if line.startswith("#"):
      title = line.lstrip("#").strip().lower().replace(" ", "-")
      anchors.add(re.sub(r"[^\w\-]", "", title))
  return anchors


def _headings(path: pathlib.Path) -> set[str]:
  return {
    line.lstrip("#").strip().strip("`").lower()
    for line in path.read_text().splitlines()
    if line.startswith("#")
  }


_PAGE = re.compile(r"((?:docs/|benchmarks/)?[\w/]*\.md)(#[\w\-]+)?")
_README_SECTION = re.compile(r'README(?:\.md)?[,:]?\s+(?:section\s+)?"([^"]+)"')


@pytest.mark.parametrize("obj", CALLABLES)
def test_references_to_pages_exist(obj):
  """A docstring naming a page (``docs/numerics.md``, with an anchor or a
  quoted section) names one that exists, with that section."""
  doc = inspect.getdoc(obj)
  for section in _README_SECTION.findall(doc):
    assert section.lower() in _headings(ROOT / "README.md"), section
  for page, anchor in _PAGE.findall(doc):
    path = ROOT / page
    assert path.exists(), f"{page} (in {obj.__qualname__}'s docstring)"
    if anchor:
      assert anchor[1:] in _anchors(path), f"{page}{anchor}"


def test_the_checks_catch_what_they_are_for():
  """The checks above fail on the faults they exist for."""

  def bad(x: "Union[int, float]" = 0):  # noqa: F821, UP007
    r"""See README, "no such section", and docs/none.md.

    .. math:: \begin{cases} 1 \end{cases}
    """

  with pytest.raises(AssertionError):
    test_signature_is_short_and_names_its_aliases(bad)
  with pytest.raises(AssertionError):
    test_no_latex_in_help(bad)
  with pytest.raises(AssertionError):
    test_references_to_pages_exist(bad)
