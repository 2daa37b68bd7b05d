"""Write one benchmark's section into docs/benchmarks.md, leaving every other section as it is."""

from __future__ import annotations

import re
from pathlib import Path

from embedtune.io import write_text_atomic

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nSpeed and memory of embedtune's parts; each section is written by its script in "
          "`benchmarks/`.\n")


def splice(doc: Path, section: str, text: str) -> None:
    """Replace ``section`` (its ``## `` heading line, up to the next ``## `` heading) in ``doc`` by ``text``,
    or append ``text`` when there is no such section; the file is replaced atomically."""
    old = doc.read_text(encoding="utf-8") if doc.is_file() else HEADER
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip() + "\n\n", old, count=1).rstrip() + "\n"
    else:
        new = old.rstrip() + "\n\n" + text
    write_text_atomic(doc, new)
