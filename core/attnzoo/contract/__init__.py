"""The plugin contract and what checks it.

hookspecs (the hook a plugin implements, Option, Variant), variant (AttentionVariant, the
base class with the explicit path), registry (loads plugins one by one, checks each variant,
resolves a name and options into a kernel factory), requirements (a recipe's
requires_plugins), kit (the conformance checks, also a pytest plugin), cuda_autocast (CUDA's
autocast policy emulated on the CPU, for the kit), template (``attnzoo new-plugin``).
Nothing here knows about recipes, models, data or runs.
"""
