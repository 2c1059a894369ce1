"""MkDocs hook: the README's sections on the site, and the README's link policy.

Pages include sections of the README with pymdownx.snippets (``--8<-- "README.md:install"``),
so the README stays the one copy of the Install steps, the saga guide and the
operations list. Its links are written for the repository (``docs/outbox.md``, relative
to the README); on a page under ``docs/`` they must be relative to that page, so a
Markdown preprocessor that runs after snippets rewrites them.

The policy (README.md, under the title): links from the README to ``docs/`` are relative,
which works in the repository and in an unpacked sdist but not on PyPI, so each one's text
is the path it opens. ``make docs`` fails when a relative link of the README points at a
file that does not exist or hides its path behind other text.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: ``[text](target)``, not an image; target without spaces.
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")
#: A link the README writes relative to itself, into the documentation folder.
_DOCS_LINK = re.compile(r"\]\(docs/(?P<path>[^)\s]*)\)")
#: snippets' preprocessor runs at priority 32; ours must see its output.
_AFTER_SNIPPETS = 31

_current_page = "index.md"


class _RebaseReadmeLinks(Preprocessor):
    """``](docs/x.md)`` written for the README becomes relative to the page being built."""

    def run(self, lines: list[str]) -> list[str]:
        here = posixpath.dirname(_current_page)

        def rebase(match: re.Match[str]) -> str:
            path, _, fragment = match["path"].partition("#")
            target = posixpath.relpath(path or ".", here or ".")
            return f"]({target}{'#' + fragment if fragment else ''})"

        return [_DOCS_LINK.sub(rebase, line) for line in lines]


class _ReadmeLinksExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # the name is Markdown's API
        md.preprocessors.register(_RebaseReadmeLinks(md), "sagaflow_readme_links", _AFTER_SNIPPETS)


def readme_link_problems(text: str) -> list[str]:
    """What breaks the README's link policy: missing targets, paths hidden behind text."""
    problems = []
    for match in _LINK.finditer(text):
        target, shown = match["target"], match["text"].strip("`")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute (https:, mailto:) or an anchor of the README itself
        path = target.partition("#")[0]
        if not (ROOT / path).exists():
            problems.append(f"README.md links to {target!r}, which does not exist")
        elif shown not in (path, posixpath.dirname(path) + "/"):
            problems.append(
                f"README.md links to {target!r} as {match['text']!r}: on PyPI relative links "
                f"do not open, so the link's text must be the path ({path!r})"
            )
    return problems


def on_config(config: Any) -> Any:
    config.markdown_extensions.append(_ReadmeLinksExtension())
    return config


def on_pre_build(config: Any) -> None:
    problems = readme_link_problems(README.read_text(encoding="utf-8"))
    if problems:
        raise PluginError("\n".join(problems))


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    global _current_page
    _current_page = page.file.src_uri
    return markdown
