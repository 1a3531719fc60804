"""A griffe extension for the API reference (mkdocs.yml): geoptim's docstrings are written in
reStructuredText (``:class:`X```, ``.. math::``, double backticks); this turns the constructs they
use into the Markdown and arithmatex math that mkdocstrings renders."""

import re
import textwrap
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|obj|exc):`~?([^`]+)`")
DIRECTIVE = re.compile(r"^( *)\.\. (math|code-block)::(.*)$")


def _blocks(text: str) -> str:
    """``.. math::`` and ``.. code-block::`` (one line or an indented body) -> $$ or a fence."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, kind, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        body = [rest] if kind == "math" and rest else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)).strip("\n")
        pad = " " * indent
        fence = ("$$", "$$") if kind == "math" else (f"```{rest or 'text'}", "```")
        out += [pad + fence[0], *(pad + line for line in code.splitlines()), pad + fence[1], ""]
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    text = _blocks(text)
    text = re.sub(r":math:`([^`]+)`", r"$\1$", text)
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


class RstDocstrings(Extension):
    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
