"""Checks a recipe's ``requires_plugins`` (e.g. ``["attnzoo-foo>=0.2"]``) before training."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

from attnzoo.errors import AttnzooError


def check_requirements(requirements: list[str]) -> None:
    problems = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            problems.append(f"{text!r} is not a requirement like 'attnzoo-foo>=0.2'")
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (pip install '{text}')")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name} {version} is installed but the recipe needs {text} (pip install -U '{text}')")
    if problems:
        raise AttnzooError("requires_plugins: " + "; ".join(problems))
