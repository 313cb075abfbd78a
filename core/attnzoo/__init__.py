"""attnzoo: compare attention normalizations in Vision Transformers; every variant is a plugin.

The layout, lowest layer first (nothing imports from a layer above it; CI checks this):

    errors, values, version   what every layer may use
    contract/                 the plugin contract: hookspecs, variant, registry, kit
    config/                   recipes as data
    model/, data/             the network; images in, batches out
    run/                      one run: assembly, trainer, checkpoints, evaluation, cost
    study/                    many runs compared: plan, report, statistics
    cli                       the ``attnzoo`` command
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING

from attnzoo.contract.hookspecs import Option, Variant, hookimpl, hookspec
from attnzoo.errors import AttnzooError, PluginError, RecipeError
from attnzoo.version import __version__

if TYPE_CHECKING:
    from attnzoo.contract.registry import create_attention, list_variants, load_registry
    from attnzoo.contract.variant import AttentionVariant, l2_normalize, standardize
    from attnzoo.model.timm_bridge import swap_attention

# Names that need torch load on first use, so `import attnzoo` stays light: pytest
# imports attnzoo's kit (a pytest plugin) in every session of an environment that
# has attnzoo installed, including projects that never touch it.
_LAZY = {
    "create_attention": "contract.registry", "list_variants": "contract.registry",
    "load_registry": "contract.registry", "AttentionVariant": "contract.variant",
    "standardize": "contract.variant", "l2_normalize": "contract.variant",
    "swap_attention": "model.timm_bridge",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"attnzoo.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Modules that lived at the top of the package before it was arranged by concept. Importing
# one by its old name still works (it is the same module object) and warns once.
MOVED_MODULES = {
    "hookspecs": "contract.hookspecs", "variant": "contract.variant", "registry": "contract.registry",
    "plugins": "contract.requirements", "cuda_autocast": "contract.cuda_autocast",
    "template": "contract.template", "recipe": "config.recipe", "compile": "model.compile",
    "datasets": "data.datasets", "streaming": "data.streaming", "augment": "data.augment",
    "corruptions": "data.corruptions", "export": "data.export", "assembly": "run.assembly",
    "trainer": "run.trainer", "checkpoint": "run.checkpoint", "rundir": "run.rundir",
    "extend": "run.extend", "eta": "run.eta", "metrics": "run.metrics", "analysis": "run.analysis",
    "evaluate": "run.evaluate", "robustness": "run.robustness", "cost": "run.cost", "bench": "run.bench",
    "report": "study.report", "tradeoffs": "study.tradeoffs", "stats": "study.stats",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("attnzoo.")
        if fullname.startswith("attnzoo.") and old in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"attnzoo.{MOVED_MODULES[spec.name.removeprefix('attnzoo.')]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the module it stands for is already executed


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())

__all__ = [
    "AttentionVariant", "AttnzooError", "Option", "PluginError", "RecipeError", "Variant", "__version__",
    "create_attention", "hookimpl", "hookspec", "l2_normalize", "list_variants", "load_registry", "standardize",
    "swap_attention",
]
