"""Checks that the built site fits a 1280 px window: no table, text or
sidebar link runs past its column.

Opens every page of docs/_build/html in headless Chromium at 1280x1400 with a
small script added that, once the page is laid out, measures

- each table's scrolling container (the theme hides what does not fit
  behind a horizontal scrollbar): its content must not be wider than it;
- the article: nothing in it may run past its right edge (a long inline
  code span without a break);
- each link of the two sidebars: a name cut or overflowing its column.

and writes what it found into the DOM, which ``--dump-dom`` returns. A page
fails with the list of what overflows (table index and widths, or the link's
text). The copy of each page with the script is written beside it and removed.

Usage (after the build; needs ``chromium``, e.g. ``apt-get install chromium``):

  python docs/check_layout.py [docs/_build/html]

Not part of the test suite (it needs a browser); run it after changing
docs/_static/custom.css, the theme options or a wide table.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

from check_math import CHROMIUM_ARGS, HTML, _chromium

WINDOW = "--window-size=1280,1400"
_MEASURE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const found = [];
  const wider = (e) => e.scrollWidth > e.clientWidth + 1;
  document.querySelectorAll(".bd-article table").forEach((t, i) => {
    const box = t.closest(".pst-scrollable-table-container") || t.parentElement;
    if (wider(box)) found.push(`table ${i}: ${box.scrollWidth} > ${box.clientWidth}`);
  });
  const article = document.querySelector(".bd-article-container");
  if (article && wider(article)) {
    found.push(`article: ${article.scrollWidth} > ${article.clientWidth} px`);
  }
  document.querySelectorAll(".bd-sidebar-primary a, .bd-sidebar-secondary a")
    .forEach((a) => { if (wider(a)) found.push(`link: ${a.textContent.trim()}`); });
  document.body.setAttribute("data-layout", JSON.stringify(found));
}, 500));</script>"""
_RESULT = re.compile(r'data-layout="([^"]*)"')


def overflows(page: pathlib.Path) -> list[str]:
  """What runs past its column on ``page`` at 1280 px (empty: it fits)."""
  probe = page.with_name(f"_layout_{page.name}")
  probe.write_text(page.read_text().replace("</body>", f"{_MEASURE}</body>"))
  try:
    dom = subprocess.run(
      [
        _chromium(),
        *CHROMIUM_ARGS,
        WINDOW,
        "--virtual-time-budget=4000",
        "--dump-dom",
        probe.resolve().as_uri(),
      ],
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
    ).stdout
  finally:
    probe.unlink()
  match = _RESULT.search(dom)
  if match is None:
    return ["the measuring script did not run"]
  text = match.group(1).replace("&quot;", '"').replace("&gt;", ">")
  return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("html", nargs="?", type=pathlib.Path, default=HTML)
  args = parser.parse_args()
  pages = [
    p
    for p in sorted(args.html.rglob("*.html"))
    if not {"_sources", "_static"} & set(p.parts)
  ]
  failed = 0
  for page in pages:
    found = overflows(page)
    if found:
      failed += 1
      print(f"{page.relative_to(args.html)}: {'; '.join(found)}")
  print(f"{len(pages) - failed} of {len(pages)} pages fit 1280 px")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
