"""The dashboard's files: uPlot exactly as published (the hashes its README records), a page that
loads nothing from elsewhere and runs no inline code."""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files

from berth_api.dashboard.assets import PAGE, SECURITY_HEADERS, STATIC, STATIC_FILES, login_page

# npm `uplot` 1.6.32: `dist/uPlot.iife.min.js`, `dist/uPlot.min.css` and `LICENSE`
UPLOT_SHA256 = {
    "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    "LICENSE": "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd",
}


def test_uplot_is_the_published_release_with_its_licence() -> None:
    uplot = STATIC / "uplot"
    readme = uplot.joinpath("README.md").read_text(encoding="utf-8")
    assert "**1.6.32**" in readme
    for name, digest in UPLOT_SHA256.items():
        assert hashlib.sha256(uplot.joinpath(name).read_bytes()).hexdigest() == digest, name
        assert digest in readme, name
    assert uplot.joinpath("LICENSE").read_text(encoding="utf-8").startswith("The MIT License")
    assert b"(v1.6.32)" in uplot.joinpath("uPlot.iife.min.js").read_bytes()[:80]


def test_the_pages_load_only_files_of_this_origin_and_run_no_inline_code() -> None:
    for page in (PAGE.body.decode(), login_page("a <b>message</b>").decode()):
        assert "<style" not in page
        assert " style=" not in page
        assert re.search(r"<script(?![^>]*\bsrc=)", page) is None  # every script is a file
        assert re.search(r"\bon[a-z]+=", page) is None  # no inline handlers
        for url in re.findall(r'(?:src|href)="([^"]+)"', page):
            assert url.startswith("/dashboard/"), url
            path = url.removeprefix("/dashboard/static/")
            assert path in STATIC_FILES or url == "/dashboard/login", url
    assert "a &lt;b&gt;message&lt;/b&gt;" in login_page("a <b>message</b>").decode()
    assert "default-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]


def test_every_served_file_is_package_data() -> None:
    package = files("berth_api.dashboard") / "static"
    for path, asset in STATIC_FILES.items():
        assert package.joinpath(*path.split("/")).read_bytes() == asset.body
