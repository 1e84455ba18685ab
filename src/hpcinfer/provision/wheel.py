"""The hpcinfer wheel installed on a cluster's nodes: this very hpcinfer, built once.

From a source checkout (an editable install, a clone on a laptop) the wheel is built with
`pip wheel --no-deps --no-build-isolation` from a copy of the sources, so the checkout gets
no build/ or egg-info, and cached under ~/.hpcinfer/wheels/<version>-<source hash>/: edit a
file and the next command builds a new one, change nothing and none is built. The copy gets
a module `hpcinfer._build` holding that hash, so a node's hpcinfer says which sources it was
built from: another version or another hash there means install this one. Installed from a
wheel itself (no checkout), hpcinfer has no sources to build from: nodes then install the
same version from the index or the cluster's wheelhouse.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hpcinfer.errors import ProvisionError

WHEELS = Path(".hpcinfer") / "wheels"
BUILD_MODULE = "_build.py"
BUILD_TIMEOUT_S = 600
TOP_FILES = ("pyproject.toml", "README.md", "LICENSE")
"""The checkout's files beside src/hpcinfer that go into the wheel (those present)."""
_SKIP = ("__pycache__",)


@dataclass(frozen=True)
class Build:
    """Which hpcinfer this is: its version and the hash of the sources it came from."""

    version: str
    source: str  # "" when unknown (installed from a wheel built elsewhere)

    @property
    def label(self) -> str:
        return f"{self.version}+{self.source}" if self.source else self.version


PACKAGE = Path(__file__).resolve().parents[1]
"""The hpcinfer package this module belongs to."""


def source_checkout() -> Path | None:
    """The checkout this hpcinfer runs from (pyproject.toml beside src/hpcinfer), or None."""
    package = PACKAGE
    root = package.parents[1]
    if package.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def source_files(root: Path) -> list[Path]:
    """What the wheel is built from: src/hpcinfer without caches, and TOP_FILES."""
    package = root / "src" / "hpcinfer"
    files = [
        p
        for p in package.rglob("*")
        if p.is_file()
        and not any(part in _SKIP for part in p.parts)
        and p.suffix != ".pyc"
        and p.name != BUILD_MODULE
    ]
    top = [root / name for name in TOP_FILES if (root / name).is_file()]
    return sorted([*top, *files])


def source_hash(root: Path) -> str:
    """16 hex digits over every file the wheel is built from (paths and bytes)."""
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def checkout_version(root: Path) -> str:
    """The version a checkout's pyproject.toml gives hpcinfer."""
    with (root / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def this_build() -> Build:
    """This hpcinfer's build: from its checkout's sources, else what its wheel recorded."""
    root = source_checkout()
    if root is not None:
        return Build(checkout_version(root), source_hash(root))
    version = metadata.version("hpcinfer")
    try:
        recorded = importlib.import_module("hpcinfer._build")
    except ImportError:
        return Build(version, "")
    return Build(version, str(getattr(recorded, "SOURCE_HASH", "")))


def wheel_cache(home: Path | None = None) -> Path:
    return (home or Path.home()) / WHEELS


def build_wheel(home: Path | None = None) -> Path | None:
    """The wheel of this hpcinfer (built now unless cached); None without a checkout."""
    root = source_checkout()
    if root is None:
        return None
    build = Build(checkout_version(root), source_hash(root))
    folder = wheel_cache(home) / build.label
    found = sorted(folder.glob("hpcinfer-*.whl"))
    if found:
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hpcinfer-wheel-", dir=folder.parent) as temp:
        work = Path(temp)
        out = work / "wheel"
        wheel_of(root, out)
        out.rename(work / build.label)
        try:
            (work / build.label).rename(folder)
        except OSError:
            if not folder.is_dir():  # not another command's build landing first
                raise
    return sorted(folder.glob("hpcinfer-*.whl"))[0]


def wheel_of(root: Path, out: Path) -> Path:
    """Build the wheel of the checkout `root` into the folder `out`, from a copy of its
    sources (the checkout gets no build/ or egg-info); ProvisionError with pip's output."""
    build = Build(checkout_version(root), source_hash(root))
    with tempfile.TemporaryDirectory(prefix="hpcinfer-src-") as temp:
        copy = _copy_sources(root, Path(temp) / "src-copy", build)
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--quiet", "-w", str(out), str(copy)]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ProvisionError(
                f"could not build the hpcinfer wheel from {root}: `pip wheel` took over "
                f"{BUILD_TIMEOUT_S}s"
            ) from None
    built = sorted(out.glob("hpcinfer-*.whl"))
    if done.returncode != 0 or not built:
        raise ProvisionError(
            f"could not build the hpcinfer wheel from {root} (`pip wheel` exit "
            f"{done.returncode}):\n{(done.stdout + done.stderr).strip()[-3000:]}\n"
            "the build needs setuptools and wheel in this Python: pip install setuptools wheel"
        )
    return built[0]


def _copy_sources(root: Path, copy: Path, build: Build) -> Path:
    """What the wheel is built from: TOP_FILES and src/hpcinfer (no caches), plus the
    `_build` module naming the source hash."""
    copy.mkdir(parents=True)
    for name in TOP_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, copy / name)
    shutil.copytree(
        root / "src" / "hpcinfer",
        copy / "src" / "hpcinfer",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", BUILD_MODULE),
    )
    (copy / "src" / "hpcinfer" / BUILD_MODULE).write_text(
        '"""Written when this wheel was built: the hash of the sources it came from."""\n\n'
        f"SOURCE_HASH = {build.source!r}\n",
        encoding="utf-8",
    )
    return copy


PROBE = (
    "import hpcinfer\n"
    "try:\n"
    "    from hpcinfer.provision.wheel import this_build\n"
    "    build = this_build()\n"
    "    version, source = build.version, build.source\n"
    "except Exception:\n"
    "    version, source = hpcinfer.__version__, ''\n"
    "print('hpcinfer-build', version, source)\n"
)
"""Run by a node's Python: prints `hpcinfer-build VERSION HASH` (fails: none installed)."""


def parse_probe(output: str) -> Build | None:
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "hpcinfer-build":
            return Build(words[1], words[2] if len(words) > 2 else "")
    return None
