"""An exponential moving average of a model's weights (train.ema_decay), the weights a strong
recipe validates, keeps and tests.

After every optimizer step, ``ema = decay * ema + (1 - decay) * weights`` for each floating-point
parameter and buffer (integer buffers are copied). The average lives on the model's device in
float32 or the weights' own dtype, is saved in every checkpoint beside the weights (keys prefixed
with ``ema.``), and is restored from it, so a resumed run averages exactly as the uninterrupted one.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

CHECKPOINT_PREFIX = "ema."  # the average's tensors in a checkpoint's model.safetensors


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the model's current weights."""
        live = self.model.state_dict()
        floats = [k for k, v in self.state.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.state[k] for k in floats], [live[k].detach() for k in floats], 1 - self.decay)
        for key, value in self.state.items():
            if not value.is_floating_point():
                value.copy_(live[key])

    @contextlib.contextmanager
    def swapped_in(self):
        """The average in the model's own tensors (in place: a compiled model keeps its graphs), the
        trained weights back afterwards, however the block ends."""
        live = self.model.state_dict()
        saved = {k: v.detach().clone() for k, v in live.items()}
        with torch.no_grad():
            for key, value in live.items():
                value.copy_(self.state[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in live.items():
                    value.copy_(saved[key])

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {CHECKPOINT_PREFIX + k: v for k, v in self.state.items()}

    @torch.no_grad()
    def load(self, model_state: dict[str, torch.Tensor]) -> None:
        """The average from a checkpoint's tensors; one saved without an average (train.ema_decay was
        then 0, a different run) starts it from the weights just restored."""
        for key, value in self.state.items():
            saved = model_state.get(CHECKPOINT_PREFIX + key)
            value.copy_(saved if saved is not None else self.model.state_dict()[key])


def split_checkpoint_state(model_state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the model's weights, the average's tensors) of a checkpoint's model.safetensors."""
    weights = {k: v for k, v in model_state.items() if not k.startswith(CHECKPOINT_PREFIX)}
    return weights, {k: v for k, v in model_state.items() if k.startswith(CHECKPOINT_PREFIX)}
