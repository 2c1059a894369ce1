"""The README's Install section as data: what ``make install-check`` applies, and what
``tests/unit/test_packaging_readme.py`` checks without installing anything.

A file's block is the fenced ``python`` block that follows a comment
``<!-- install: PATH -->`` (the whole file) or ``<!-- install: PATH append -->`` (added
to the end of a file ``startproject`` made); PATH is relative to the project directory
that ``django-admin startproject mysite`` creates. The comments do not render.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

_BLOCK = re.compile(
    r"^<!-- install: (?P<path>[\w./]+)(?P<append> append)? -->\n+```python\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
_SECTION = re.compile(r"^## Install\n(?P<body>.*?)^## ", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class InstallBlock:
    path: str
    append: bool
    code: str


def install_section(text: str | None = None) -> str:
    """The text of the README's ``## Install`` section."""
    match = _SECTION.search(README.read_text() if text is None else text)
    if match is None:
        raise LookupError("README.md has no '## Install' section")
    return match["body"]


def install_blocks(text: str | None = None) -> list[InstallBlock]:
    """The Install section's file blocks, in the order a reader pastes them."""
    return [
        InstallBlock(m["path"], bool(m["append"]), m["code"])
        for m in _BLOCK.finditer(install_section(text))
    ]


def commands(text: str | None = None) -> list[list[str]]:
    """The Install section's ``$ ...`` console lines, split as a shell would."""
    return [
        shlex.split(line.removeprefix("$ "))
        for line in install_section(text).splitlines()
        if line.startswith("$ ")
    ]


def pip_requirement(text: str | None = None) -> str:
    """What the Install section tells pip to install (``sagaflow[...]``)."""
    for argv in commands(text):
        if argv[:2] == ["pip", "install"]:
            return argv[2]
    raise LookupError("the Install section has no 'pip install' line")
