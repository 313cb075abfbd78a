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
* **Randomness**: the model calls the factory inside ``kernel_random_stream(run_seed,
  layer)``: torch's global generator is forked and seeded from the run's seed and the
  layer's index, and put back afterwards. A factory may draw its initial values from it
  (``torch.randn``, ``nn.init``): each layer and each run seed gets its own reproducible
  draw, and the stream the ViT's shared layers are initialised from is untouched, so under
  one seed every arm of a study starts from the same shared weights (the pairing by seed
  its statistics rely on). ``forward`` and ``attention_weights`` must not draw from the
  global generator (use a ``torch.Generator`` of the module's own): a draw there shifts the
  dropout masks of every later layer. The kit's ``random_stream`` check holds plugins to both.
"""

from __future__ import annotations

import contextlib
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


# Mixed into every kernel seed, so a layer's stream is never the run's own stream (seeded with run_seed).
KERNEL_STREAM = 0x6B65726E  # "kern"


def kernel_seed(run_seed: int, layer: int) -> int:
    """The seed of one layer's kernel stream: a hash of (run seed, layer) through numpy's SeedSequence,
    so nearby seeds and layers give unrelated streams."""
    import numpy as np

    state = np.random.SeedSequence([int(run_seed), int(layer), KERNEL_STREAM]).generate_state(1, np.uint64)
    return int(state[0])


@contextlib.contextmanager
def kernel_random_stream(run_seed: int, layer: int):
    """Build a kernel inside this: torch's global CPU generator is forked, seeded with
    kernel_seed(run_seed, layer), and restored on exit, whatever the factory drew."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(kernel_seed(run_seed, layer))
        yield
