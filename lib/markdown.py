"""Generated sections of Markdown files (the README's settings table and benchmark results)."""

from __future__ import annotations

from pathlib import Path


def write_between_markers(path: Path, name: str, content: str) -> bool:
    """Replace what lies between `<!-- name:start -->` and `<!-- name:end -->` in `path`; False if no markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{content.strip()}\n{end}{after}")
    return True
