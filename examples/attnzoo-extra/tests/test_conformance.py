"""The attnzoo conformance kit on every variant of this plugin, with its notable options,
and the variant's weights against its formula.

``attnzoo_check`` is a pytest fixture that attnzoo installs; it runs
``attnzoo.testing.check_variant`` on the installed variant of that name.
"""

import pytest
import torch

from attnzoo import list_variants
from attnzoo_extra import ReluSquaredAttention

CASES = [
    ("relu_squared", {}),
    ("relu_squared", {"bias": 0.5}),
]


def test_variants_are_registered():
    found = {v.name: v.distribution for v in list_variants()}
    assert found.get("relu_squared") == "attnzoo-extra", "relu_squared not registered by attnzoo-extra: pip install -e ."


@pytest.mark.parametrize("name, options", CASES, ids=lambda x: str(x) if x else "defaults")
def test_conformance(attnzoo_check, name, options):
    attnzoo_check(name, **options).raise_if_failed()


def test_relu_squared_hand_computed():
    # One query, three keys, N = 3: logits q.k / 3 = [6, -3, 1.5] / 3 = [2, -1, 0.5].
    q = torch.tensor([[[[3.0, 0.0]]]])
    k = torch.tensor([[[[2.0, 0.0], [-1.0, 0.0], [0.5, 0.0]]]])
    weights = ReluSquaredAttention(head_dim=2, num_heads=1).attention_weights(q.expand(1, 1, 3, 2), k)
    torch.testing.assert_close(weights[0, 0, 0], torch.tensor([4.0, 0.0, 0.25]))
