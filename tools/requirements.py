"""Print the requirements of pyproject.toml's extras, one a line, for scripts that carry wheels.

    python tools/requirements.py ranker                 # keras==..., keras-rs==...
    python tools/requirements.py encoder --skip torch   # without what the host already has

An extra that names another of this project (``saviorrec[tensorflow]``) is expanded; ``base``
stands for the dependencies every install gets.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    own = project["name"]
    out: list[str] = []

    def add(extra: str) -> None:
        if extra == "base":
            found = project.get("dependencies", [])
        elif extra in optional:
            found = optional[extra]
        else:
            raise SystemExit(f"no extra {extra!r} in {pyproject} (extras: {sorted(optional)})")
        for requirement in found:
            nested = re.fullmatch(rf"{re.escape(own)}\[([^\]]+)\]", requirement.strip())
            if nested:
                for name in nested.group(1).split(","):
                    add(name.strip())
            elif requirement not in out:
                out.append(requirement)

    for extra in extras:
        add(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("extras", nargs="+", help="extra names, or base")
    parser.add_argument("--skip", nargs="*", default=[], help="distributions to leave out")
    args = parser.parse_args(argv)
    skip = {_name(s) for s in args.skip}
    print("\n".join(r for r in requirements(args.extras) if _name(r) not in skip))
    return 0


if __name__ == "__main__":
    sys.exit(main())
