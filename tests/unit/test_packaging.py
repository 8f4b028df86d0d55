"""Packaging metadata: one licence (MIT) everywhere, the typing marker, the PyPI-facing fields.

The built wheel itself (LICENSE under *.dist-info/licenses, multiwrite/py.typed) is checked with
``pip wheel --no-build-isolation --no-deps . -w DIR`` + ``unzip -l`` (too slow for a unit test)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER_LICENCE = "Apa" + "che"          # spelled in two pieces so that this file does not match itself


def _pyproject():
    try:
        import tomllib
    except ImportError:                # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _tracked_files():
    """The repository's files (git ls-files), else every file outside build/ and hidden directories."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
        return [os.path.join(ROOT, p) for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("build", "__pycache__")]
            files += [os.path.join(d, n) for n in names]
        return files


def _text(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return ""
    if b"\0" in data:
        return ""                      # binary
    return data.decode("utf-8", "replace")


def test_license_file_is_mit_and_matches_pyproject():
    path = os.path.join(ROOT, "LICENSE")
    assert os.path.isfile(path), "no LICENSE file"
    text = _text(path)
    assert text.startswith("MIT License"), text[:80]
    assert "Copyright (c) 2026 the multiwrite authors" in text
    assert "Permission is hereby granted, free of charge" in text
    project = _pyproject()["project"]
    lic = project["license"]
    declared = lic if isinstance(lic, str) else lic.get("text")
    assert declared == "MIT", lic
    assert "License :: OSI Approved :: MIT License" in project.get("classifiers", []) or isinstance(lic, str)


def test_no_other_licence_in_tree():
    spdx = re.compile(r"SPDX-License-Identifier:[ \t]*([A-Za-z0-9][\w.+-]*)")
    wrong, other = [], []
    for path in _tracked_files():
        text = _text(path)
        rel = os.path.relpath(path, ROOT)
        for m in spdx.finditer(text):
            if m.group(1) != "MIT":
                wrong.append(f"{rel}: {m.group(0)}")
        if OTHER_LICENCE in text:
            other.append(rel)
    assert not wrong, f"SPDX headers other than MIT: {wrong}"
    assert not other, f"files naming the {OTHER_LICENCE} licence: {other}"


def test_py_typed_marker():
    assert os.path.isfile(os.path.join(ROOT, "multiwrite", "py.typed"))
    tool = _pyproject()["tool"]["scikit-build"]
    assert "multiwrite" in tool["wheel"]["packages"]       # the marker ships with the package directory


def test_pyproject_user_facing_metadata():
    data = _pyproject()
    project = data["project"]
    readme = project.get("readme")
    assert readme, "pyproject has no readme"
    readme_file = readme if isinstance(readme, str) else readme.get("file")
    assert readme_file and os.path.isfile(os.path.join(ROOT, readme_file))
    classifiers = project.get("classifiers", [])
    assert classifiers, "pyproject has no classifiers"
    assert "Typing :: Typed" in classifiers
    assert "LICENSE" in data["tool"]["scikit-build"]["wheel"].get("license-files", ["LICENSE"])
    # The torch range that keeps pip on the local CPU build (see the comment in pyproject.toml)
    assert "torch>=2.3,<2.14" in project["dependencies"]
