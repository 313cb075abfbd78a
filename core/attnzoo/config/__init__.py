"""Recipes as data: the schema, validation that lists every problem, key=value overrides.

A recipe is plain data. What a run builds from it (the kernel factory, the registry, the
plugins to record) is resolved separately, in ``attnzoo.config.recipe.resolve``.
"""
