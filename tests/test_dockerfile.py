"""The Dockerfile, without a Docker engine: the image installs every package the wheel is made of."""

from __future__ import annotations

import re
import tomllib

from tests.support import REPO_ROOT


def test_the_image_copies_every_package_of_the_project() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.removesuffix("*") for pattern in patterns}
    assert packages and all((REPO_ROOT / package / "__init__.py").is_file() for package in packages)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1$", dockerfile, flags=re.MULTILINE))
    # `pip install .` would build a wheel without the missing ones, and `bertpt` would fail to import.
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
