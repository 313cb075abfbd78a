"""attnzoo: compare attention normalizations in Vision Transformers; every variant is a plugin."""

import importlib
from typing import TYPE_CHECKING

from .errors import AttnzooError, PluginError, RecipeError
from .hookspecs import Option, Variant, hookimpl, hookspec

if TYPE_CHECKING:
    from .registry import create_attention, list_variants, load_registry
    from .variant import AttentionVariant, l2_normalize, standardize

# Names that need torch load on first use, so `import attnzoo` stays light: pytest
# imports attnzoo.testing (a pytest plugin) in every session of an environment that
# has attnzoo installed, including projects that never touch it.
_LAZY = {
    "create_attention": "registry", "list_variants": "registry", "load_registry": "registry",
    "AttentionVariant": "variant", "standardize": "variant", "l2_normalize": "variant",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "AttentionVariant", "AttnzooError", "Option", "PluginError", "RecipeError", "Variant",
    "create_attention", "hookimpl", "hookspec", "l2_normalize", "list_variants", "load_registry", "standardize",
]
