"""pyproject.toml declares version ranges, not this machine's builds, and what is installed here
satisfies them."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared() -> list[Requirement]:
    """Every requirement: the dependencies and each extra's (the extras naming f2llm left out)."""
    lines = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values()
                                       for r in extra]
    return [r for r in map(Requirement, lines) if r.name != PROJECT["name"]]


def test_torch_is_a_range_so_a_gpu_node_keeps_its_cuda_build() -> None:
    (torch,) = [r for r in declared() if r.name == "torch"]
    assert not any(s.operator in {"==", "==="} for s in torch.specifier), torch
    assert torch.specifier.contains("2.6.0") and torch.specifier.contains("2.13.0+cu128")
    assert not torch.specifier.contains("2.5.1")  # no public fully_shard


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    wrong = []
    for req in declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            wrong.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            wrong.append(f"{req}: {installed} installed")
    assert not wrong, wrong
