"""Where the dashboard's files come from: its own folder (by name only) and an installed package's file,
with a message naming what to install when the package is missing."""

from __future__ import annotations

import pytest

from app.errors import NotFound, ServiceUnavailable
from app.ui.assets import PLOTLY, STATIC_DIR, PackageFile, static_asset


def test_the_package_file_is_the_installed_one() -> None:
    asset = PLOTLY.asset()
    assert asset.path.name == "plotly.min.js" and asset.path.parent.name == "package_data"
    assert asset.path.read_bytes().startswith(b"/**\n* plotly.js v")


def test_a_missing_package_says_what_to_install() -> None:
    missing = PackageFile("no_such_package_bertpt", "x.js", "text/javascript", install="pip install it")
    with pytest.raises(ServiceUnavailable, match=r"no_such_package_bertpt/x\.js.*pip install it"):
        missing.asset()
    # Installed, but without the file.
    with pytest.raises(ServiceUnavailable, match=r"plotly/package_data/none\.js"):
        PackageFile("plotly", "package_data/none.js", "text/javascript", install="").asset()


def test_only_the_folders_own_files_of_known_types() -> None:
    assert static_asset("app.js").path == STATIC_DIR / "app.js"
    for name in ("../assets.py", "nothing.js", "..", "static"):
        with pytest.raises(NotFound):
            static_asset(name)
