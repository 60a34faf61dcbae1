"""The YAML presets shipped inside the package (`deliberate/configs/`), found by name.

`deliberate run fmnist/dp --out DIR` and `deliberate run path/to/my.yaml --out DIR` both work,
from any folder, with the package installed from a wheel; `deliberate presets` lists the names.
In a source checkout the repository's `configs/` is a link to this folder: one copy, no drift.
"""

from __future__ import annotations

from pathlib import Path

from deliberate.errors import DeliberateError

ROOT = Path(__file__).resolve().parent / "configs"


def names() -> list[str]:
    """Every preset's name ("fmnist/dp"), sorted."""
    return sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.rglob("*.yaml"))


def describe(name: str) -> str:
    """The preset's first comment line (what it is)."""
    for line in (ROOT / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def resolve(config: str | Path) -> Path:
    """An existing file as it is; else a preset name ("fmnist/dp" or "fmnist/dp.yaml")."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml")
    candidate = ROOT / f"{name}.yaml"
    if not path.is_absolute() and ".." not in path.parts and candidate.is_file():
        return candidate
    raise DeliberateError(
        f"cannot read config {config}: no such file or preset; check the path "
        f"(`deliberate presets` lists the presets, e.g. {', '.join(names()[:2])})"
    )
