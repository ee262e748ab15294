"""constraints.txt, the lock `make install` uses: it pins everything exactly, agrees with pyproject.toml, and is
what this environment holds (so `make install` used it)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, metadata, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DECLARED = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]]


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin `name==version`"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(match[2])
    return pins


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    pins = locked()
    for req in DECLARED:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in constraints.txt: run `make lock`"
        assert pins[name] in req.specifier, f"constraints.txt has {name}=={pins[name]}, pyproject.toml {req}"


def test_the_lock_holds_no_build_of_one_machine() -> None:
    """torch is locked by its public version, so the CPU, CUDA 12.6 and CUDA 13.0 builds all satisfy it."""
    pins = locked()
    assert all(not v.local for v in pins.values()), [f"{n}=={v}" for n, v in pins.items() if v.local]
    assert not any(n.startswith("nvidia-") for n in pins), "CUDA libraries belong to torch's build, not the lock"


def test_this_environment_is_the_lock() -> None:
    """Every locked package is installed at its locked version (a local build label such as +cpu aside)."""
    pins = locked()
    wrong = {}
    for name, pinned in pins.items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            wrong[name] = (str(pinned), None)
            continue
        if installed.public != pinned.public:
            wrong[name] = (str(pinned), str(installed))
    assert not wrong, f"locked vs installed: {wrong}; `make install` installs the lock"


def test_install_and_the_image_use_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := constraints.txt" in makefile
    installs = [line for line in makefile.splitlines() if re.search(r"\$\(BIN\)/pip install .*(torch|-e)", line)]
    assert installs and all("-c $(LOCK)" in line for line in installs), installs
    assert "pip install -c constraints.txt ." in (ROOT / "infra" / "docker" / "Dockerfile").read_text()


def test_every_extra_asked_for_exists_in_the_locked_version() -> None:
    """An extra the locked version does not provide installs nothing and only warns (``s3fs[boto3]`` did, once
    s3fs dropped that extra): each one asked for must be one the installed distribution declares."""
    missing = []
    for req in DECLARED:
        provided = {canonicalize_name(e) for e in metadata(req.name).get_all("Provides-Extra") or []}
        missing += [f"{req.name}[{extra}]" for extra in req.extras if canonicalize_name(extra) not in provided]
    assert not missing, f"extras the locked versions do not provide: {missing}; drop them from pyproject.toml"


def test_the_resolve_check_names_a_bad_line_or_python() -> None:
    """infra/resolve-check.sh (docs/install.md) refuses, before any network access, what it cannot check."""
    script = ROOT / "infra" / "resolve-check.sh"
    for args, said in ((["cu118", "3.11"], "not 'cu118'"), (["cu126", "3.10"], "not '3.10'")):
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr, (args, done.returncode, done.stderr)
