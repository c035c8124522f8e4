"""Builds build/typeroot/quicnprotochat/... as a tree of real folders holding symlinks to the source files, for mypy.

The distribution maps folders (server/, client/, ...) to quicnprotochat.* through setuptools' package-dir;
the editable install resolves that with an import hook that mypy does not follow. mypy does not walk into
symlinked folders either, so the tree has real folders and links each Python file (and stub) into them.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPEROOT = ROOT / "build" / "typeroot"
SKIP = {"target", "__pycache__", "tests"}


def _link_tree(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            # A subfolder that is a package of its own is mapped on its own entry; others are plain data.
            if entry.name not in SKIP and (entry / "__init__.py").exists():
                _link_tree(entry, destination / entry.name)
        elif entry.suffix in (".py", ".pyi") or entry.name == "py.typed":
            (destination / entry.name).symlink_to(entry)


def main() -> None:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TYPEROOT, ignore_errors=True)
    package = TYPEROOT / "quicnprotochat"
    for name, folder in sorted(mapping.items()):
        _link_tree(ROOT / folder, package / name.removeprefix("quicnprotochat."))
    # At run time quicnprotochat is a namespace package; mypy only walks a package given with -p when it is a
    # regular one.
    (package / "__init__.py").write_text("")
    print(TYPEROOT)


if __name__ == "__main__":
    main()
