"""``attnzoo new-plugin NAME``: writes a ready-to-install plugin package.

The package is a distribution ``attnzoo-<name>`` with a module ``attnzoo_<name>``
holding one working variant named ``<name>``, conformance tests that use the kit, and
a README. The texts live in ``templates/`` and are filled with ``string.Template``
(``${name}`` placeholders), which leaves Python's braces alone.
"""

from __future__ import annotations

import keyword
import re
import shutil
import string
from importlib import resources
from pathlib import Path

from attnzoo.errors import AttnzooError
from attnzoo.version import __version__

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

# file written in the package -> template it comes from (in attnzoo/templates/)
FILES = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "{module}/__init__.py": "plugin.py.tmpl",
    "tests/test_conformance.py": "test_conformance.py.tmpl",
}


def check_name(name: str) -> None:
    """Raise AttnzooError unless `name` can be a variant name, a module suffix and a
    distribution suffix all at once: lowercase letters, digits, single underscores."""
    if name.lower().startswith(("attnzoo_", "attnzoo-")):
        raise AttnzooError(
            f"plugin name {name!r}: leave out the 'attnzoo' prefix; "
            f"`attnzoo new-plugin {name[8:]}` writes attnzoo-{name[8:]} with the module attnzoo_{name[8:]}."
        )
    if NAME_PATTERN.fullmatch(name) and not keyword.iskeyword(name) and "__" not in name and not name.endswith("_"):
        return
    suggestion = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", name.lower())).strip("_")
    hint = f" Try {suggestion!r}." if suggestion and NAME_PATTERN.fullmatch(suggestion) else ""
    raise AttnzooError(
        f"plugin name {name!r} is not valid: use lowercase letters, digits and underscores, starting with a "
        f"letter (e.g. 'sigmoid' or 'qk_norm'). It becomes the variant name, the module attnzoo_<name> and the "
        f"distribution attnzoo-<name>.{hint}"
    )


def _check_not_registered(name: str) -> None:
    """A variant name already taken would make the new plugin fail to load next to the other one."""
    from attnzoo.contract.registry import default_registry

    variant = default_registry().variants.get(name)
    if variant is not None:
        raise AttnzooError(
            f"a variant named {name!r} already exists (from {variant.distribution}, plugin {variant.plugin!r}); "
            "variant names are global, so pick another name."
        )


def render(template: str, **values: str) -> str:
    text = resources.files(__package__).joinpath("templates").joinpath(template).read_text(encoding="utf-8")
    return string.Template(text).substitute(values)


def write_plugin(name: str, dest: Path | str = ".") -> Path:
    """Write the package ``attnzoo-<name>/`` inside `dest` and return its path.

    Refuses to touch an existing folder; if writing fails midway, the folder it
    created is removed again, so nothing half-written is left behind.
    """
    check_name(name)
    _check_not_registered(name)
    distribution = "attnzoo-" + name.replace("_", "-")
    target = Path(dest) / distribution
    values = dict(
        name=name,
        module=f"attnzoo_{name}",
        distribution=distribution,
        class_name="".join(part.capitalize() for part in name.split("_")) + "Attention",
        attnzoo_version=".".join(__version__.split(".")[:2]),
    )
    try:
        target.mkdir(parents=True)  # exist_ok=False: the refusal and the creation are one step
    except FileExistsError:
        raise AttnzooError(f"{str(target)!r} already exists; remove it or choose another destination folder.") from None
    try:
        for relative, template in FILES.items():
            path = target / relative.format(module=values["module"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(template, **values), encoding="utf-8")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target

