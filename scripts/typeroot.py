"""Builds build/typeroot/quicnprotochat/* as symlinks to the source folders, for mypy.

The distribution maps folders (server/, client/, ...) to quicnprotochat.* through setuptools' package-dir;
the editable install resolves that with an import hook that mypy does not follow. A symlink tree gives mypy the
same names, pointing at the same files.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPEROOT = ROOT / "build" / "typeroot"


def main() -> None:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    package = TYPEROOT / "quicnprotochat"
    package.mkdir(parents=True, exist_ok=True)
    for name, folder in mapping.items():
        link = package / name.removeprefix("quicnprotochat.")
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / folder, target_is_directory=True)
    print(TYPEROOT)


if __name__ == "__main__":
    main()
