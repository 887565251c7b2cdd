"""Multilayer perceptron applied over the last axis."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MLP", "get_activation", "make_activation"]

_ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "gelu": torch.nn.GELU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "leaky_relu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "none": torch.nn.Identity,
}


def make_activation(name: str | None) -> torch.nn.Module:
    """Activation module from its name (relu, gelu, tanh, sigmoid, leaky_relu, elu, none / None)."""
    key = "none" if name is None else str(name).lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]()


def get_activation(name: str | None) -> torch.nn.Module | None:
    """Activation module from its name, the reference's helper: None for 'none' / None (no activation layer).

    Unlike the reference, which matches substrings and returns None for any unknown name, an unknown name
    raises (see :func:`make_activation` for the names).
    """
    if name is None or str(name).lower() == "none":
        return None
    return make_activation(name)


class MLP(torch.nn.Module):
    r"""Stack of Linear + activation layers over the last axis: X (..., input_size) -> (..., linear_sizes[-1]).

    Args:
        input_size: size of the last axis of the input.
        linear_sizes: output size of each Linear.
        activations: one activation name per Linear ('none' / None for no activation).
    """

    def __init__(
        self,
        input_size: int = 512,
        linear_sizes: Sequence[int] = (100, 50),
        activations: Sequence[str | None] = ("relu", "relu"),
    ) -> None:
        super().__init__()
        if len(linear_sizes) != len(activations):
            raise ValueError(
                f"MLP: {len(linear_sizes)} linear_sizes but {len(activations)} activations; give one per layer"
            )
        layers: list[torch.nn.Module] = []
        prev = input_size
        for size, act in zip(linear_sizes, activations):
            layers += [torch.nn.Linear(prev, size), make_activation(act)]
            prev = size
        self.mlp = torch.nn.Sequential(*layers)
        self.output_size = prev

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """X: (..., input_size) -> (..., linear_sizes[-1])."""
        return self.mlp(X)
