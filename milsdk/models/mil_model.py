"""The one model contract every milsdk model implements, and the wrapper that routes bag keys to it.

Contract (see DESIGN.md, "Model contract"):

- ``forward(X, mask=None, [adj | coords], return_att=False)`` -> logits (B,) for one output, (B, C) for C classes;
  with ``return_att=True`` also instance attention (B, N).
- ``compute_loss(Y, X, mask=None, ...)`` -> (logits, {loss_name: scalar}).
- ``predict(X, mask=None, ..., return_inst_pred=True)`` -> (logits, instance scores (B, N)).
- ``model.config`` is the constructor's arguments (defaults filled in), recorded automatically, so that a
  checkpoint can rebuild the model through the registry.

Class attributes describe the model to the exporter and the client:

- ``extra_inputs``: which of ``"coords"``, ``"adj"`` forward needs besides X and mask.
- ``attention_output``: ``"logits"`` when the attention returned by forward is a score to softmax over the real
  instances (ABMIL-style), ``"weights"`` when it is already non-negative weights to renormalise.
- ``padding_invariant`` / ``padding_note``: whether a bag's outputs are independent of the padding it gets.
- ``test_config``: a small constructor configuration (everything but ``in_shape``) that the registry-driven
  contract suite (tests/models/test_contract.py) builds the model with; ``test_n_classes``: the output counts
  it is checked with (1 = binary).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from milsdk.errors import BagError, ModelConfigError
from milsdk.nn.linear import get_feat_dim
from milsdk.nn.masked import masked_softmax, normalize_weights

__all__ = ["MILModel", "MILModelWrapper", "get_args_names", "resolve_criterion"]


def get_args_names(fn: Any) -> tuple[str, ...]:
    """Names of the positional parameters of ``fn``, without a leading ``self`` (torchmil's helper, used to
    match bag keys to a method's arguments).

    Args:
        fn: a function, method or bound method.

    Returns:
        the names in order; keyword-only and ``*args`` / ``**kwargs`` parameters are not included.
    """
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind in positional)
    return names[1:] if names[:1] == ("self",) else names


def resolve_criterion(
    criterion: torch.nn.Module | None, n_classes: int
) -> tuple[torch.nn.Module, int]:
    """Default criterion for ``n_classes`` outputs (BCEWithLogits for 1, CrossEntropy for C > 1), checked
    against an explicit one.

    Raises:
        ModelConfigError: ``n_classes < 1``, or CrossEntropyLoss with a single output.
    """
    if n_classes < 1:
        raise ModelConfigError(f"n_classes must be >= 1, got {n_classes}")
    if criterion is None:
        criterion = torch.nn.BCEWithLogitsLoss() if n_classes == 1 else torch.nn.CrossEntropyLoss()
    if n_classes == 1 and isinstance(criterion, torch.nn.CrossEntropyLoss):
        raise ModelConfigError("criterion CrossEntropyLoss needs n_classes >= 2 (one logit per class)")
    return criterion, n_classes


def _record_config(init):
    """Wrap a subclass ``__init__`` so that the outermost call stores the bound arguments in ``self._config``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        outermost = not self.__dict__.get("_recording_config", False)
        if outermost:
            object.__setattr__(self, "_recording_config", True)
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                object.__setattr__(self, "_recording_config", False)
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config = dict(bound.arguments)
            config.pop("self")
            for name, param in signature.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    config.update(config.pop(name, {}))
                elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                    config.pop(name, None)
            object.__setattr__(self, "_config", config)
            if "in_shape" in config and config["in_shape"] is None:
                self._watch_in_shape()

    return wrapped


class MILModel(torch.nn.Module):
    """Base class of every MIL model (see the module docstring for the contract)."""

    # Python-only properties that torch.jit.script must not compile; class attributes it must see.
    __jit_unused_properties__ = ["config", "in_shape", "n_outputs"]
    __constants__ = ["attention_output"]

    extra_inputs: ClassVar[tuple[str, ...]] = ()
    attention_output: ClassVar[str] = "logits"
    padding_invariant: ClassVar[bool] = True
    padding_note: ClassVar[str] = ""
    test_config: ClassVar[dict[str, Any]] = {}
    test_n_classes: ClassVar[tuple[int, ...]] = (1, 3)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_config(cls.__dict__["__init__"])

    # -- configuration -------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments with defaults filled in (``in_shape`` resolved once a lazy model has run)."""
        config = dict(self.__dict__.get("_config", {}))
        observed = self.__dict__.get("_observed_in_shape")
        if "in_shape" in config and config["in_shape"] is None and observed is not None:
            config["in_shape"] = observed
        return config

    @property
    def in_shape(self) -> tuple[int, ...] | None:
        """Shape of one instance (e.g. (D,)), or None for a lazy model that has not run yet."""
        shape = self.config.get("in_shape")
        return None if shape is None else tuple(int(s) for s in shape)

    @property
    def n_outputs(self) -> int:
        """Number of logits per bag: 1 for binary (logits (B,)), C for C classes (logits (B, C))."""
        return int(getattr(self, "n_classes", 1))

    def _watch_in_shape(self) -> None:
        """Record the instance shape of the first batch seen by a lazy model (then remove the hook)."""

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            X = args[0] if args else kwargs.get("X")
            if isinstance(X, torch.Tensor) and X.dim() >= 3:
                object.__setattr__(module, "_observed_in_shape", tuple(int(s) for s in X.shape[2:]))
                handle.remove()

        handle = self.register_forward_pre_hook(hook, with_kwargs=True)

    def setup_head(
        self,
        feat_ext: torch.nn.Module | None,
        in_shape: Any,
        criterion: torch.nn.Module | None,
        n_classes: int,
    ) -> int | None:
        """The construction every model shares: set ``self.feat_ext`` (identity by default), ``self.criterion``
        and ``self.n_classes`` (:func:`resolve_criterion`), and return the feature size the extractor gives
        for one instance of ``in_shape`` (None when ``in_shape`` is None: lazy layers infer it later).

        Args:
            feat_ext: instance feature extractor applied to X (B, N, *in_shape), or None.
            in_shape: shape of one instance, e.g. (1024,), or None.
            criterion: bag loss, or None for the default of ``n_classes``.
            n_classes: number of logits per bag (1 = binary).
        """
        self.feat_ext = feat_ext if feat_ext is not None else torch.nn.Identity()
        self.criterion, self.n_classes = resolve_criterion(criterion, n_classes)
        return get_feat_dim(self.feat_ext, in_shape) if in_shape is not None else None

    def squeeze_binary(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C) classifier output -> (B,) for one output, unchanged for C > 1."""
        if self.n_classes == 1:
            return logits.squeeze(-1)
        return logits

    # -- losses, prediction ------------------------------------------------------------------------------------
    def bag_loss(self, logits: torch.Tensor, Y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Criterion on bag logits, keyed by the criterion's class name.

        Args:
            logits: (B,) for one output (Y cast to float, e.g. BCEWithLogitsLoss) or (B, C) (Y cast to long class
                indices, e.g. CrossEntropyLoss).
            Y: (B,) bag labels.
        """
        criterion = self.criterion
        if logits.dim() == 1:
            target = Y.reshape(logits.shape).to(logits.dtype)
        else:
            target = Y.reshape(-1).long()
        return {criterion.__class__.__name__: criterion(logits, target)}

    def compute_loss(
        self, Y: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None, **inputs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass and losses.

        Args:
            Y: (B,) bag labels.
            X: (B, N, D) instance features.
            mask: (B, N) True / 1 = real instance.
            **inputs: the model's extra inputs (``adj`` (B, N, N), ``coords`` (B, N, d)).

        Returns:
            logits: (B,) or (B, C); losses: {name: scalar}.
        """
        logits = self(X, mask=mask, **inputs)
        return logits, self.bag_loss(logits, Y)

    @torch.no_grad()
    def predict(
        self,
        X: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_inst_pred: bool = True,
        **inputs: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits and, with ``return_inst_pred``, the instance scores (the attention of ``forward``).

        Args:
            X: (B, N, D); mask: (B, N); **inputs: extra inputs.

        Returns:
            logits (B,) or (B, C); with ``return_inst_pred`` also (B, N) instance scores.
        """
        if return_inst_pred:
            return self(X, mask=mask, return_att=True, **inputs)
        return self(X, mask=mask, **inputs)

    def deployment_attention(self, att: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Map the attention returned by ``forward`` to the deployment contract: (B, N), sums to 1 over the real
        instances, 0 on padding."""
        if self.attention_output == "logits":
            return masked_softmax(att.float(), mask)
        return normalize_weights(att.float().clamp_min(0), mask)


class MILModelWrapper(torch.nn.Module):
    """Calls a model's ``forward`` / ``compute_loss`` / ``predict`` with a bag, passing the keys whose names match
    the method's arguments (``X``, ``Y``, ``mask``, ``adj``, ``coords``).

    It is also the boundary where bag contents are checked: X must be (B, N, *in_shape) and the extra inputs the
    model needs must be present, else a ``BagError`` names the key.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def _arguments(self, method: Any, bag: Mapping[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        params = inspect.signature(method).parameters
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        wanted = set(params) | (set(getattr(self.model, "extra_inputs", ())) if takes_var_kw else set())
        args = {key: bag[key] for key in bag.keys() if key in wanted}
        self._check(args)
        args.update(kwargs)
        return args

    def _check(self, args: dict[str, Any]) -> None:
        X = args.get("X")
        if X is None:
            raise BagError("bag has no 'X' (instance features)")
        expected = getattr(self.model, "in_shape", None)
        if expected is not None and tuple(X.shape[2:]) != tuple(expected):
            raise BagError(
                f"bag key 'X' has instance shape {tuple(X.shape[2:])}, "
                f"model {type(self.model).__name__} expects in_shape {tuple(expected)}"
            )
        if X.shape[1] == 0:
            raise BagError("bag key 'X' has 0 instances")
        name = type(self.model).__name__
        if not X.is_floating_point():
            raise BagError(f"bag key 'X' has dtype {X.dtype}, model {name} expects floating-point features")
        bad = int((~torch.isfinite(X)).sum())
        if bad:
            raise BagError(f"bag key 'X' holds {bad} NaN/inf value{'s' if bad > 1 else ''}")
        batch, n = int(X.shape[0]), int(X.shape[1])
        mask, coords, adj = args.get("mask"), args.get("coords"), args.get("adj")
        if mask is not None and tuple(mask.shape) != (batch, n):
            raise BagError(
                f"bag key 'mask' has shape {tuple(mask.shape)}, expected ({batch}, {n}) (batch, instances of 'X')"
            )
        if coords is not None and (coords.dim() != 3 or tuple(coords.shape[:2]) != (batch, n)):
            raise BagError(f"bag key 'coords' has shape {tuple(coords.shape)}, expected ({batch}, {n}, d)")
        if adj is not None and tuple(adj.shape) != (batch, n, n):
            raise BagError(f"bag key 'adj' has shape {tuple(adj.shape)}, expected ({batch}, {n}, {n})")
        for key in getattr(self.model, "extra_inputs", ()):
            if key not in args:
                raise BagError(f"model {type(self.model).__name__} needs bag key {key!r}, which the bag lacks")

    def forward(self, bag: Mapping[str, Any], **kwargs: Any) -> Any:
        """model.forward(**matching keys of bag, **kwargs)."""
        return self.model(**self._arguments(self.model.forward, bag, kwargs))

    def compute_loss(self, bag: Mapping[str, Any], **kwargs: Any) -> Any:
        """model.compute_loss(**matching keys of bag, **kwargs)."""
        return self.model.compute_loss(**self._arguments(self.model.compute_loss, bag, kwargs))

    def predict(self, bag: Mapping[str, Any], **kwargs: Any) -> Any:
        """model.predict(**matching keys of bag, **kwargs)."""
        return self.model.predict(**self._arguments(self.model.predict, bag, kwargs))
