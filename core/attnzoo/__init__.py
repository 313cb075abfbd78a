"""attnzoo: compare attention normalizations in Vision Transformers; every variant is a plugin."""

from .errors import AttnzooError, PluginError, RecipeError
from .hookspecs import Option, Variant, hookimpl, hookspec
from .registry import create_attention, list_variants, load_registry
from .variant import AttentionVariant, standardize

__version__ = "0.1.0"

__all__ = [
    "AttentionVariant", "AttnzooError", "Option", "PluginError", "RecipeError", "Variant",
    "create_attention", "hookimpl", "hookspec", "list_variants", "load_registry", "standardize",
]
