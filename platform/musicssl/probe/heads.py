"""The probe head: softmax-normalised learned layer weights, then a one-hidden-layer MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def select_states(num_states: int, layers: str | int) -> list[int]:
    """Hidden-state indices a probe reads: `all` (input + every layer), `transformer` (layers only), or one index."""
    if layers == "all":
        return list(range(num_states))
    if layers == "transformer":
        return list(range(1, num_states))
    if isinstance(layers, int) and 0 <= layers < num_states:
        return [layers]
    raise ValueError(f"probe.layers={layers!r}: expected 'all', 'transformer' or an index in [0, {num_states})")


class LayerWeightedMLP(nn.Module):
    """(B, S, D) stacked states -> weighted sum over S (softmax weights, zero init) -> MLP -> (B, n_out)."""

    states: Tensor
    """(S,) the hidden-state indices read (a non-persistent buffer)."""

    def __init__(self, states: list[int], dim: int, hidden: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("states", torch.tensor(states), persistent=False)
        self.layer_weights = nn.Parameter(torch.zeros(len(states)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: Tensor) -> Tensor:
        w = torch.softmax(self.layer_weights, 0)  # (S,)
        pooled = torch.einsum("bsd,s->bd", x[:, self.states], w)  # (B, D)
        out: Tensor = self.mlp(pooled)
        return out

    def weights_by_state(self) -> dict[int, float]:
        """The softmax layer weights, keyed by the hidden-state index each one weighs."""
        w = torch.softmax(self.layer_weights.detach().float().cpu(), 0)
        return {int(s): float(v) for s, v in zip(self.states.tolist(), w.tolist(), strict=True)}
