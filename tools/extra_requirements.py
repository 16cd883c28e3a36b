"""Prints the requirements of one extra of the installed lazywritercache (lazycache), one a line, for pip -r.

    python tools/extra_requirements.py release > requirements.txt

Read from the installed package's metadata (pyproject.toml is the source), so the Makefile
can install an extra's tools without reinstalling (and recompiling) the package itself.
Requirements whose markers do not hold on this machine (e.g. Linux-only tools) are left out.
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement


def extra_requirements(extra: str, distribution: str = "lazywritercache") -> list[str]:
    lines = []
    for line in requires(distribution) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            continue  # not part of any extra
        if req.marker.evaluate({"extra": extra}):
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            lines.append(f"{req.name}{extras}{req.specifier}")
    return lines


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lines = extra_requirements(sys.argv[1])
    if not lines:
        print(
            f"lazywritercache has no extra {sys.argv[1]!r} (or it is not installed)",
            file=sys.stderr,
        )
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
