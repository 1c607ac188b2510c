"""scripts/arm64_check.py reads its Debian mirror from the machine's apt sources (both formats), or the override.

Host names here are reserved example names (RFC 2606), not real mirrors.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "arm64_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("arm64_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("arm64_check", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


arm64_check = _load()
debian_mirror, apt_sources, CheckError = arm64_check.debian_mirror, arm64_check.apt_sources, arm64_check.CheckError


def machine(tmp_path: Path, files: dict) -> Path:
    """A root whose etc/apt and var/lib/apt/lists hold ``files`` (relative path -> text)."""
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    return tmp_path


DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://commented.example.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://one.example.org/debian/ bookworm main
deb http://one.example.org/debian-security bookworm-security main
"""

UBUNTU = """\
deb http://archive.example.com/ubuntu jammy main restricted
deb http://archive.example.com/ubuntu jammy-updates main restricted
deb http://security.example.com/ubuntu jammy-security main
"""


def test_deb822_sources(tmp_path):
    root = machine(tmp_path, {"etc/apt/sources.list.d/debian.sources": DEB822})
    sources = apt_sources(root)
    assert [s.suites for s in sources] == [("bookworm", "bookworm-updates"), ("bookworm-security",)]
    assert sources[0].components == ("main", "contrib")
    assert debian_mirror({}, root) == "http://mirror.example.org/debian"


def test_one_line_sources_with_options(tmp_path):
    root = machine(tmp_path, {"etc/apt/sources.list": ONE_LINE})
    assert [(s.uris, s.suites) for s in apt_sources(root)] == [
        (("http://one.example.org/debian/",), ("bookworm",)),
        (("http://one.example.org/debian-security",), ("bookworm-security",)),
    ]
    assert debian_mirror({}, root) == "http://one.example.org/debian"


def test_disabled_stanza_and_third_party_sources_are_skipped(tmp_path):
    root = machine(tmp_path, {
        "etc/apt/sources.list.d/a-vendor.list": "deb https://vendor.example.net/apt stable main\n"
                                                "deb https://vendor.example.net/apt cloud-sdk-bookworm main\n",
        "etc/apt/sources.list.d/b.sources": "Types: deb\nURIs: http://off.example.org/debian\nSuites: bookworm\n"
                                            "Components: main\nEnabled: no\n",
        "etc/apt/sources.list.d/c.sources": DEB822,
    })
    assert debian_mirror({}, root) == "http://mirror.example.org/debian"


def test_generic_suite_counts_only_with_a_debian_release(tmp_path):
    root = machine(tmp_path, {
        "etc/apt/sources.list": "deb https://vendor.example.net/apt stable main\n"
                                "deb http://generic.example.org/debian stable main\n",
        "var/lib/apt/lists/generic.example.org_debian_dists_stable_InRelease":
            "Origin: Debian\nSuite: stable\nArchitectures: all amd64 arm64\n",
    })
    assert debian_mirror({}, root) == "http://generic.example.org/debian"


def test_cached_release_without_arm64_is_skipped(tmp_path):
    root = machine(tmp_path, {
        "etc/apt/sources.list": "deb http://partial.example.org/debian bookworm main\n"
                                "deb http://full.example.org/debian bookworm main\n",
        "var/lib/apt/lists/partial.example.org_debian_dists_bookworm_InRelease":
            "Origin: Debian\nCodename: bookworm\nArchitectures: all amd64\n",
        "var/lib/apt/lists/full.example.org_debian_dists_bookworm_InRelease":
            "Origin: Debian\nCodename: bookworm\nArchitectures: all amd64 arm64 armhf\n",
    })
    assert debian_mirror({}, root) == "http://full.example.org/debian"


def test_override_wins(tmp_path):
    root = machine(tmp_path, {"etc/apt/sources.list": UBUNTU})
    assert debian_mirror({"CBNET_ARM64_MIRROR": "http://override.example.org/debian"}, root) == \
        "http://override.example.org/debian"


def test_ubuntu_sources_give_one_clear_line(tmp_path):
    root = machine(tmp_path, {"etc/apt/sources.list": UBUNTU})
    with pytest.raises(CheckError) as error:
        debian_mirror({}, root)
    message = str(error.value)
    assert "\n" not in message
    assert "no Debian archive that serves arm64" in message
    assert "archive.example.com/ubuntu jammy" in message
    assert "CBNET_ARM64_MIRROR" in message


def test_no_sources_at_all(tmp_path):
    with pytest.raises(CheckError, match="found: none"):
        debian_mirror({"CBNET_ARM64_MIRROR": "  "}, machine(tmp_path, {}))


def test_main_reports_the_error_in_one_line(tmp_path, monkeypatch, capsys):
    def no_mirror():
        raise CheckError("no Debian archive that serves arm64 in this machine's apt sources")

    monkeypatch.setattr(arm64_check, "debian_mirror", no_mirror)
    (tmp_path / "work").mkdir()
    monkeypatch.setattr(arm64_check.tempfile, "mkdtemp", lambda **_: str(tmp_path / "work"))
    assert arm64_check.main(["--cache-dir", str(tmp_path / "cache"), "--no-json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("arm64 check: no Debian archive")
    assert len(err.strip().splitlines()) == 1
