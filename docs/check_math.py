"""Checks that the built site's math renders: no raw LaTeX on any page.

Opens every page of docs/_build/html that has math in headless Chromium, lets
MathJax typeset it, and reads the resulting DOM. A page fails when

- a formula is left untypeset (its ``\\(...\\)`` / ``\\[...\\]`` text is still
  there),
- MathJax reports an error (``<mjx-merror>``, a TeX syntax error), or
- a formula shows a backslash or an undefined macro (MathJax's ``noundefined``
  prints the macro's name in red): LaTeX that MathJax did not understand,
  such as ``\\_`` inside ``\\texttt{}`` without the textmacros extension.

Usage (after the build; needs ``chromium``, e.g. ``apt-get install chromium``):

  python docs/check_math.py [docs/_build/html] [--screenshot PAGE.html OUT.png]

Not part of the test suite (it needs a browser); run it after changing
docstring math or docs/conf.py's MathJax settings.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys

HTML = pathlib.Path(__file__).resolve().parent / "_build" / "html"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
WAIT_MS = "10000"  # virtual time for MathJax to load and typeset

_MATH = re.compile(r'<(span|div) class="math[^"]*"[^>]*>\s*([^<]*)', re.S)
_BACKSLASH = re.compile(r'<mjx-c class="mjx-c5C[ "]')  # U+005C in a formula
_UNDEFINED = re.compile(r'<mjx-mtext[^>]*style="[^"]*color:\s*red')


def _chromium() -> str:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  sys.exit("check_math.py needs chromium (apt-get install chromium)")


def rendered_dom(page: pathlib.Path) -> str:
  out = subprocess.run(
    [
      _chromium(),
      *CHROMIUM_ARGS,
      f"--virtual-time-budget={WAIT_MS}",
      "--dump-dom",
      page.resolve().as_uri(),
    ],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  return out.stdout


def problems(dom: str) -> list[str]:
  found = []
  for match in _MATH.finditer(dom):
    if match.group(2).strip():
      found.append(f"untypeset: {match.group(2).strip()[:80]!r}")
  errors = dom.count("<mjx-merror")
  if errors:
    found.append(f"{errors} MathJax error(s)")
  if _BACKSLASH.search(dom):
    found.append("a backslash inside a formula (raw LaTeX)")
  if _UNDEFINED.search(dom):
    found.append("an undefined macro (shown in red)")
  return found


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("html", nargs="?", type=pathlib.Path, default=HTML)
  parser.add_argument("--screenshot", nargs=2, metavar=("PAGE", "PNG"))
  args = parser.parse_args()
  if args.screenshot:
    page, png = args.screenshot
    subprocess.run(
      [
        _chromium(),
        *CHROMIUM_ARGS,
        f"--virtual-time-budget={WAIT_MS}",
        "--window-size=1280,1400",
        f"--screenshot={pathlib.Path(png).resolve()}",
        (args.html / page).resolve().as_uri(),
      ],
      capture_output=True,
      timeout=120,
      check=True,
    )
  pages = [
    p
    for p in sorted(args.html.rglob("*.html"))
    if "_sources" not in p.parts and 'class="math' in p.read_text(errors="replace")
  ]
  failed = 0
  for page in pages:
    found = problems(rendered_dom(page))
    failed += bool(found)
    status = "; ".join(found) if found else "ok"
    print(f"{page.relative_to(args.html)}: {status}")
  print(f"{len(pages) - failed} passed, {failed} failed")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
