"""The attnzoo conformance kit on every variant of this plugin, with its notable options.

``attnzoo_check`` is a pytest fixture that attnzoo installs; it runs
``attnzoo.testing.check_variant`` on the installed variant of that name.
"""

import pytest

from attnzoo import list_variants

CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"bias": -2.0}),
    ("scaled_cosine", {}),
    ("scaled_cosine", {"init_scale": 1.0, "learnable": False}),
    ("qk_layernorm", {}),
    ("qk_layernorm", {"affine": False}),
]


def test_variants_are_registered():
    found = {v.name: v.distribution for v in list_variants()}
    for name in ("sigmoid", "scaled_cosine", "qk_layernorm"):
        assert found.get(name) == "attnzoo-extra", f"{name} not registered by attnzoo-extra: pip install -e ."


@pytest.mark.parametrize("name, options", CASES, ids=lambda x: str(x) if x else "defaults")
def test_conformance(attnzoo_check, name, options):
    attnzoo_check(name, **options).raise_if_failed()
