"""House rules the code keeps, checked on its source (no import needed)."""

import ast
import functools
import io
import pathlib
import tokenize

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "optax_rms"
MAX_LINES = 80  # of code, per function (STYLE.md: optax's largest is < 90)


def _code_lines(source: str, node: ast.AST) -> int:
  """Lines of code of `node`: no docstring, blank or comment-only lines;
  nested functions count in their parent."""
  body = getattr(node, "body", [])
  doc = set()
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    if isinstance(body[0].value.value, str):
      doc = set(range(body[0].lineno, body[0].end_lineno + 1))
  lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
  code = set()
  tokens = tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline)
  for tok in tokens:
    if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT):
      continue
    if tok.type in (tokenize.DEDENT, tokenize.ENDMARKER):
      continue
    for row in range(tok.start[0], tok.end[0] + 1):
      code.add(row + node.lineno - 1)
  return len(code - doc)


@functools.cache
def function_sizes() -> dict[str, int]:
  """{"module.py:function": lines of code} of every top-level function and
  method (nested functions counted in them) under optax_rms/."""
  sizes = {}
  for path in sorted(PACKAGE.glob("*.py")):
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.ClassDef | ast.Module):
        for child in node.body:
          if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            sizes[f"{path.name}:{child.name}"] = _code_lines(source, child)
  return sizes


@pytest.mark.parametrize("module", [p.name for p in sorted(PACKAGE.glob("*.py"))])
def test_no_function_over_80_lines_of_code(module):
  """STYLE.md and issue 23: a reader holds one function beside the math."""
  long = {
    name: n
    for name, n in function_sizes().items()
    if name.startswith(f"{module}:") and n > MAX_LINES
  }
  assert not long, long


if __name__ == "__main__":  # the longest functions, for a report
  for name, n in sorted(function_sizes().items(), key=lambda kv: -kv[1])[:15]:
    print(f"{n:4d}  {name}")
