"""Docstrings of sepmeasure are written for NumPy-style tools with reStructuredText roles; the
site renders them as Markdown. This griffe extension rewrites, in every docstring it loads:

* ``:math:`x``` to ``$x$`` and ``.. math::`` blocks to ``$$ ... $$`` (rendered by
  pymdownx.arithmatex and MathJax),
* ``:func:`name```, ``:class:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``, ``:exc:``,
  ``:obj:`` to code spans (``~`` shortening honoured),
* ``.. note::`` style directives to a bold label.
"""
from __future__ import annotations

import re

import griffe

_INLINE_MATH = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"^(\s*)\.\. (note|warning|seealso|versionadded|versionchanged)::\s*(.*)$")


def _math_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body = [stripped[len(".. math::"):].strip()] if stripped[len(".. math::"):].strip() else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                if lines[i].strip():
                    body.append(lines[i].strip())
                i += 1
            while body and not body[-1]:
                body.pop()
            out += [indent + "$$", *(indent + b for b in body), indent + "$$", ""]
            continue
        m = _DIRECTIVE.match(line)
        if m:
            out.append(f"{m.group(1)}**{m.group(2).capitalize()}.** {m.group(3)}")
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with reStructuredText math, roles and directives as Markdown."""
    text = _math_blocks(text)
    text = _INLINE_MATH.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded docstring with :func:`rst_to_markdown`."""

    def on_object(self, *, obj, **kwargs) -> None:  # griffe >= 1.0 hook, called for every object
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
