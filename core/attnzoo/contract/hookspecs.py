"""The attnzoo plugin contract: everything a plugin author needs is in this file.

A plugin is a Python module exposed through the ``attnzoo`` entry-point group::

    [project.entry-points.attnzoo]
    sigmoid = "attnzoo_sigmoid"

It implements one hook, ``register_attention_variants(register)``, and calls
``register(...)`` once per variant::

    from attnzoo import hookimpl, Option

    @hookimpl
    def register_attention_variants(register):
        register(
            name="sigmoid",
            description="sigmoid(q.k/sqrt(d) + b) with b = -log(N)",
            factory=SigmoidAttention,          # called as factory(head_dim=..., num_heads=..., **options)
            options=[Option("bias", float, default=None)],
        )

The factory returns a ``torch.nn.Module`` (usually a subclass of
``attnzoo.AttentionVariant``) with

* ``forward(q, k, v)``: tensors (batch, heads, tokens, head_dim) -> same shape;
* ``attention_weights(q, k)``: the (batch, heads, tokens, tokens) weights it applies,
  for analysis and as the reference the fast path is tested against;
* ``values(v)``: what the weights multiply (identity unless the variant transforms v).

The explicit path ``attention_weights(q, k) @ values(v)`` must equal ``forward``
within floating-point tolerance; ``attnzoo.testing.check_variant`` verifies that. The
explicit path is exactly that product (``attnzoo.contract.variant.explicit_attention``),
never a method to override: the load-time check, the kit, ``attnzoo bench``'s naive
implementation and the FLOP count all run it, so the weights a variant reports are the
ones it is tested against. ``AttentionVariant.explicit`` remains as a deprecated alias to
call; a variant that overrides it is refused at load (put the math in
``attention_weights``, and in ``values`` for a transform of v).

Checked when the plugin loads (a failure is reported with the plugin's name, and the
plugin is skipped): forward's output shape; that ``attention_weights`` exists and
returns (batch, heads, tokens, tokens); and that the explicit path agrees with
``forward`` (at the default options). What the variant can do is derived from its code,
not declared: ``fast_path`` is whether the module overrides ``AttentionVariant.forward``,
``has_parameters`` whether it has parameters for the default or any single choice of an
option. ``register`` still accepts ``fast_path=`` / ``has_parameters=``; a value that
contradicts the code is an error.

What the model does with a variant's own parameters and layers:

* **Weight decay**: none. Parameters inside the kernel (temperatures, gains, norms, small
  mixing layers) are trained without weight decay, unless the module defines
  ``weight_decay_parameters()`` returning the names (as in its ``named_parameters()``,
  e.g. ``["mix.weight"]``) that should be decayed like the ViT's own matrices.
* **Initialisation**: the ViT initialises its own layers only; whatever the factory set
  up (e.g. an identity mixing matrix) is what training starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pluggy

PROJECT = "attnzoo"  # pluggy project name and entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

OPTION_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """One option a recipe may set for a variant, e.g. ``attention.scale: inv_sqrt_d``."""

    name: str
    type: type  # one of bool, int, float, str
    default: Any
    choices: tuple | None = None  # allowed values, or None for any value of `type`
    help: str = ""

    def __post_init__(self):
        if self.type not in OPTION_TYPES:
            raise TypeError(f"Option {self.name!r}: type must be one of bool, int, float, str")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))


@dataclass(frozen=True)
class Variant:
    """A registered attention variant (what ``attnzoo.list_variants()`` returns)."""

    name: str
    description: str
    factory: Callable[..., Any]
    options: tuple[Option, ...] = ()
    fast_path: bool = False  # forward() is its own, not the explicit weights @ values (derived)
    has_parameters: bool = False  # the module has learnable parameters for some options (derived)
    plugin: str = ""  # entry-point name of the plugin that registered it
    distribution: str = ""  # pip distribution that provides that plugin
    version: str = ""  # its version

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


class Hookspecs:
    @hookspec
    def register_attention_variants(self, register: Callable[..., None]) -> None:
        """Register attention variants by calling ``register(name=..., description=...,
        factory=..., options=[Option(...)])`` once per variant (``fast_path`` and
        ``has_parameters`` are derived; see the module docstring)."""
