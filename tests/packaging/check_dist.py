"""``make release``: check that dist/ holds one sdist and one wheel with what they must ship.

Usage: ``python tests/packaging/check_dist.py DIST_DIR``. Exits 1 and says what is
missing; ``twine check`` has already validated the metadata and the README rendering.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

#: In the sdist, below its top directory.
SDIST_MUST_HAVE = ["LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "docs/outbox.md"]
#: In the wheel.
WHEEL_MUST_HAVE = [
    "sagaflow/__init__.py",
    "sagaflow/py.typed",
    "sagaflow/migrations/0001_initial.py",
    "sagaflow/templates/",
]


def main(dist: Path) -> int:
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(f"expected one sdist and one wheel in {dist}, found {sdists + wheels}")
        return 1
    with tarfile.open(sdists[0]) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel_names = wheel.namelist()
    problems = [f"sdist lacks {n}" for n in SDIST_MUST_HAVE if n not in names]
    problems += [
        f"wheel lacks {n}" for n in WHEEL_MUST_HAVE if not any(w.startswith(n) for w in wheel_names)
    ]
    if not any(w.endswith(".dist-info/licenses/LICENSE") for w in wheel_names):
        problems.append("wheel lacks its LICENSE in .dist-info/licenses/")
    for problem in problems:
        print(problem)
    if not problems:
        docs = sorted(n for n in names if n.startswith("docs/") and not n.endswith("/"))
        print(f"{sdists[0].name}: LICENSE, CHANGELOG.md and {len(docs)} files of docs/")
        print(f"{wheels[0].name}: {len(wheel_names)} files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
