"""The lowest versions pyproject.toml allows are the ones ops/constraints-lowest.txt pins (and
`bash ops/test-lowest.sh` runs the suite on): a floor raised in one place is raised in both."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Pinned elsewhere than at its floor, with the reason in the constraints file.
NOT_AT_FLOOR = {"torch"}


def floors() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + extras["embed"] + extras["train"]
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?>=([0-9.]+)", requirement)
        assert match, f"{requirement!r} has no floor (>=): give it one"
        found[match[1].lower()] = match[2]
    return found


def pins() -> dict[str, str]:
    lines = (REPO / "ops" / "constraints-lowest.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def release(version: str) -> tuple[int, int, int]:
    """major.minor.patch, missing parts as 0: `6.4` is `6.4.0`."""
    major, minor, patch = ([int(part) for part in version.split(".")] + [0, 0, 0])[:3]
    return major, minor, patch


def test_every_floor_is_pinned_in_the_lowest_constraints():
    pinned = pins()
    assert set(floors()) == set(pinned)
    for name, floor in floors().items():
        if name not in NOT_AT_FLOOR:
            assert release(pinned[name]) == release(floor), (
                f"{name}: floor {floor}, constraints-lowest pins {pinned[name]}"
            )
