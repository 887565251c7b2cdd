"""Model registry: create any model by name, list them; checkpoints and the exporter rebuild models through it."""

from __future__ import annotations

import fnmatch
from typing import Any, TypeVar

from milsdk.errors import ModelConfigError

__all__ = ["register_model", "create_model", "list_models", "get_model_class"]

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_model(cls: T) -> T:
    """Class decorator: register a ``MILModel`` subclass under its class name."""
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ModelConfigError(f"a model named {name!r} is already registered ({_REGISTRY[name].__module__})")
    _REGISTRY[name] = cls
    cls.model_name = name
    return cls


def get_model_class(name: str) -> type:
    """The registered class for ``name`` (case-insensitive)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    by_lower = {k.lower(): v for k, v in _REGISTRY.items()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise ModelConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")


def create_model(name: str, **config: Any):
    """Build a registered model: ``create_model("ABMIL", in_shape=(1024,), att_dim=64)``.

    Args:
        name: registered model name (case-insensitive), e.g. "ABMIL", "TransMIL".
        **config: constructor arguments.

    Returns:
        The model instance (its ``config`` records these arguments).
    """
    cls = get_model_class(name)
    try:
        return cls(**config)
    except TypeError as exc:
        raise ModelConfigError(f"cannot build {cls.__name__} from config {sorted(config)}: {exc}") from exc


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a glob ``pattern`` (case-insensitive)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n.lower(), pattern.lower()))
