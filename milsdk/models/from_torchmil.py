"""Convert a model trained with torchmil 1.0.2 into the milsdk model of the same name (then checkpoint, export
and serve it as any milsdk model).

A torchmil ``state_dict`` holds the same tensors as the milsdk model under slightly different names: torchmil's
``LazyLinear`` wraps its ``torch.nn.Linear`` in ``.module``, and a few models lay their blocks out differently.
Each model that can be converted has a :class:`_Spec` below: key renames and, where milsdk deliberately
parameterises a block differently (Sm's smoothing strength), the rewrite of the constructor arguments and weights
that makes the milsdk model compute what torchmil computes; where milsdk's architecture differs on purpose, the
milsdk option that computes torchmil's function (TransMIL: ``embed="linear_or_identity"``,
``landmarks="torchmil"``; GTP: ``mlp_activation="relu"``). ``NOT_CONVERTIBLE`` lists the other models both
libraries have, with the reason. Loading is strict: every torchmil tensor is used (but those of modules torchmil
builds and never calls, e.g. a Layer's norm2 without its MLP), every milsdk tensor is filled (identity weights
where torchmil's block is an identity), shapes must agree, and any mismatch is one line naming the key.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from milsdk.errors import CheckpointError, ModelConfigError
from milsdk.models.mil_model import MILModel
from milsdk.models.registry import get_model_class

__all__ = ["from_torchmil", "load_torchmil_state_dict", "convertible_models", "NOT_CONVERTIBLE"]


@dataclass(frozen=True)
class _Spec:
    """How the torchmil state_dict of one model maps onto the milsdk model.

    Attributes:
        renames: (regex, replacement) applied in order to each torchmil key after the LazyLinear ``.module.``
            wrapper is removed.
        in_key: the milsdk key whose weight's last axis is the instance feature size (to infer in_shape), or
            candidates tried in order.
        adapt: ``adapt(config) -> (config, tensor_fn)``: rewrites torchmil constructor arguments whose meaning
            differs in milsdk, and returns ``tensor_fn(milsdk_key, tensor) -> tensor`` for weights whose
            parameterisation differs (None: none).
        unused: regex of (renamed) torchmil keys of modules that torchmil builds but never calls in this
            config; dropped only when the milsdk model has no place for them.
        fill: ``fill(milsdk_key, like) -> tensor`` for milsdk weights that torchmil does not have because its
            block is an identity there (None: not such a key).
    """

    renames: tuple[tuple[str, str], ...] = ()
    in_key: str | tuple[str, ...] | None = None
    adapt: Callable[[dict[str, Any]], tuple[dict[str, Any], Callable[[str, torch.Tensor], torch.Tensor] | None]] \
        | None = None
    unused: str | None = None
    fill: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None


def _sm_adapter(*modes: tuple[str, str, str]):
    """Sm parameterisation (see :mod:`milsdk.nn.sm`): torchmil's approx mode iterates with
    alpha = 1 / (1 + coef) (a float ``alpha`` means 1 - alpha there), milsdk's with gamma / (1 + gamma),
    gamma = |coef|; the exact modes agree for coef >= 0. ``modes``: (mode argument, alpha argument, regex of
    the milsdk coef keys it governs)."""

    def adapt(config: dict[str, Any]):
        config = dict(config)
        rules = []
        for mode_arg, alpha_arg, key_re in modes:
            mode = config.get(mode_arg, "approx")
            alpha = config.get(alpha_arg, "trainable")
            if mode == "approx" and not isinstance(alpha, str):
                if not 0.0 < float(alpha) <= 1.0:
                    raise ModelConfigError(f"torchmil {alpha_arg}={alpha} in approx mode iterates with "
                                           f"alpha={1 - float(alpha)}, outside [0, 1): milsdk cannot represent it")
                config[alpha_arg] = 1.0 - float(alpha)
            rules.append((re.compile(key_re), mode))

        def tensor_fn(key: str, value: torch.Tensor) -> torch.Tensor:
            for pattern, mode in rules:
                if pattern.fullmatch(key):
                    if mode == "approx":
                        if not bool((value > 0).all()):
                            raise CheckpointError(f"torchmil key {key!r} = {value.tolist()}: approx Sm with "
                                                  "coef <= 0 has no milsdk equivalent")
                        return 1.0 / value
                    if not bool((value >= 0).all()):
                        raise CheckpointError(f"torchmil key {key!r} = {value.tolist()}: exact Sm with coef < 0 "
                                              "has no milsdk equivalent")
            return value

        return config, tensor_fn

    return adapt


def _transmil_adapt(config: dict[str, Any]):
    """torchmil's TransMIL: fc1 without ReLU (none when the feature size is att_dim), torchmil's landmarks."""
    for option, value in (("embed", "linear_or_identity"), ("landmarks", "torchmil")):
        if config.get(option, value) != value:
            raise ModelConfigError(f"torchmil TransMIL converts with {option}={value!r}, not {config[option]!r}")
    return {**config, "embed": "linear_or_identity", "landmarks": "torchmil"}, None


def _identity_out_proj(key: str, like: torch.Tensor) -> torch.Tensor | None:
    """milsdk's learned Nystrom attention always has an out_proj; torchmil's is an identity at att_dim."""
    if re.fullmatch(r"layers\.\d+\.att\.out_proj\.weight", key):
        return torch.eye(like.shape[0], like.shape[1], dtype=like.dtype)
    if re.fullmatch(r"layers\.\d+\.att\.out_proj\.bias", key):
        return torch.zeros_like(like)
    return None


def _gtp_adapt(config: dict[str, Any]):
    """torchmil's GTP encoder (torchmil.nn.relprop's) has a ReLU MLP."""
    if config.get("mlp_activation", "relu") != "relu":
        raise ModelConfigError(f"torchmil GTP converts with mlp_activation='relu', not {config['mlp_activation']!r}")
    return {**config, "mlp_activation": "relu"}, None


_SPECS: dict[str, _Spec] = {
    # torchmil's VAEABMIL takes a VariationalAutoEncoderMIL built by the user: pass its layer_sizes /
    # activations / covar_mode as vae_layer_sizes / vae_activations / vae_covar_mode (defaults are torchmil's).
    "VAEABMIL": _Spec(renames=((r"^feat_ext\.(encoder|decoder)\.net\.", r"feat_ext.\1.mlp."),),
                      in_key="feat_ext.encoder.mlp.0.weight"),
    # torchmil's relprop TransformerLayer calls att_proj in_proj; its norm2 exists also without the MLP.
    "GTP": _Spec(renames=((r"^(transformer_encoder\.layers\.\d+)\.in_proj\.", r"\1.att_proj."),),
                 in_key="gcn_conv.fc.weight", adapt=_gtp_adapt,
                 unused=r"transformer_encoder\.layers\.\d+\.norm2\.(weight|bias)"),
    # torchmil builds a feat_proj that its forward never calls (the encoder takes the features), and every
    # Layer has a norm2, used only with the MLP.
    "IIBMIL": _Spec(in_key="encoder.layers.0.att_module.qkv_nn.weight",
                    unused=r"feat_proj\.(weight|bias)|(en|de)coder\.layers\.\d+\.norm2\.(weight|bias)"),
    "TransMIL": _Spec(
        renames=((r"\.att_module\.qkv_nn\.", ".att.qkv."), (r"\.mlp_module\.", ".mlp."),
                 (r"^pos_layer\.proj\.", "pos_layer.proj7."), (r"^pos_layer\.proj1\.", "pos_layer.proj5."),
                 (r"^pos_layer\.proj2\.", "pos_layer.proj3.")),
        in_key=("fc1.weight", "cls_token"), adapt=_transmil_adapt,
        unused=r"layers\.\d+\.norm2\.(weight|bias)",  # torchmil's Layer builds norm2 also without the MLP
        fill=_identity_out_proj),
    "ABMIL": _Spec(in_key="pool.fc1.weight"),
    "CLAM_SB": _Spec(in_key="pool.fc1.weight"),
    "DSMIL": _Spec(in_key="q_nn.weight"),
    "PatchGCN": _Spec(in_key="gcn_layers.0.conv.fc.weight"),
    "ProbSmoothABMIL": _Spec(in_key="pool.in_mlp.0.weight"),
    "SmoothABMIL": _Spec(in_key="pool.in_mlp.0.weight"),
    "SmABMIL": _Spec(in_key="pool.proj1.weight",
                     adapt=_sm_adapter(("sm_mode", "sm_alpha", r"pool\.sm\.sm\.coef"))),
    "SmTransformerABMIL": _Spec(in_key="pool.proj1.weight", adapt=_sm_adapter(
        ("pool_sm_mode", "pool_sm_alpha", r"pool\.sm\.sm\.coef"),
        ("transf_sm_mode", "transf_sm_alpha", r"transformer_encoder\.layers\.\d+\.att_module\.sm\.sm\.coef"))),
    "TransformerABMIL": _Spec(in_key="pool.fc1.weight"),
    "TransformerProbSmoothABMIL": _Spec(in_key="pool.in_mlp.0.weight"),
}

# Models of both libraries that cannot be converted to equal outputs, and why.
NOT_CONVERTIBLE: dict[str, str] = {
    "DTFDMIL": "torchmil shuffles the instances into pseudo-bags at random on every forward, in eval mode too "
               "(np.random.shuffle), so its outputs are a random variable; milsdk splits each bag into fixed "
               "contiguous pseudo-bags (deterministic deployment), and even unshuffled np.array_split's group sizes "
               "differ from milsdk's; outputs agree only for bags of at most n_groups instances",
    "SETMIL": "torchmil runs its transformer over every cell of the coords grid (empty cells included), milsdk "
              "over the real instances only (padding-invariant); the logits differ even for one instance",
    "CAMIL": "torchmil's CAMILSelfAttention sums each node's neighbour scores into one score per node and "
             "softmaxes those over the whole bag (an N x N dense product), milsdk's neighbour attention is the "
             "paper's softmax over each node's own neighbours on the edge list; the outputs differ for any graph "
             "with edges (torchmil's default n_landmarks=None also crashes)",
    "DeepGraphSurv": "torchmil's ChebConv lays its (K, N, C) stack of Chebyshev terms out with view(N, K * C), "
                     "which puts terms of other nodes into each node's row (a defect: a node's output depends on "
                     "the bag size and order), milsdk concatenates each node's own K terms; the keys map one to "
                     "one but the outputs agree only for one-instance bags (measured: 0.08 to 0.19 on the "
                     "logits of bags of 2 and 37 instances, K = 2 and 3)",
}


def convertible_models() -> list[str]:
    """Names of the models :func:`from_torchmil` converts."""
    return sorted(_SPECS)


def load_torchmil_state_dict(source: str | os.PathLike | Mapping[str, Any] | torch.nn.Module,
                             trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a torchmil model: from a state_dict, a ``.pth`` file, or (``trust``) a pickled model.

    A file is read with ``torch.load(weights_only=True)``, which only decodes tensors and plain data. A file that
    holds a pickled model object can only be read by running code from it, so it is refused unless ``trust``.

    Args:
        source: a state_dict, a torchmil model (module), or a path to a file holding either (a dict under the
            key ``"state_dict"`` or ``"model_state_dict"`` is also found).
        trust: allow unpickling arbitrary objects from the file (runs code: only for files you trust).

    Raises:
        CheckpointError: missing or unreadable file, a pickle without ``trust``, or no tensors in it.
    """
    where = "state_dict"
    obj: Any = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise CheckpointError(f"torchmil checkpoint {path}: no such file")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if not trust:
                raise CheckpointError(
                    f"torchmil checkpoint {path} holds pickled objects, and loading them runs code from the file; "
                    "pass --trust (trust=True) only if you trust where it comes from"
                ) from exc
            try:
                obj = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc2:
                raise CheckpointError(f"torchmil checkpoint {path}: cannot be read: {_first_line(exc2)}") from exc2
        except Exception as exc:
            raise CheckpointError(f"torchmil checkpoint {path}: cannot be read: {_first_line(exc)}") from exc
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"torchmil checkpoint {where}: not a state_dict (a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _milsdk_key(key: str, spec: _Spec) -> str:
    key = key.replace(".module.", ".")
    for pattern, repl in spec.renames:
        key = re.sub(pattern, repl, key)
    return key


def from_torchmil(source: str | os.PathLike | Mapping[str, Any] | torch.nn.Module, model: str, *,
                  trust: bool = False, **config: Any) -> MILModel:
    """Build the milsdk model ``model`` holding the weights of a torchmil model of the same name.

    The milsdk model computes what the torchmil model computes (eval mode, each bag alone, to float rounding;
    see ``tests/models/test_from_torchmil.py`` for the quantities compared per model), and is padding-invariant
    and exportable as any milsdk model.

    Args:
        source: a torchmil state_dict, a torchmil model, or a path to a ``.pth`` file holding one (see
            :func:`load_torchmil_state_dict`).
        model: the model name, shared by both libraries (e.g. ``"ABMIL"``, ``"TransMIL"``).
        trust: allow a file holding a pickled model object (loading it runs code from the file).
        **config: the torchmil constructor arguments the model was built with (``in_shape`` may be left out
            where the weights determine it); the model's defaults are torchmil's.

    Returns:
        The milsdk model, in eval mode.

    Raises:
        ModelConfigError: unknown or unconvertible model, or a config the milsdk model rejects.
        CheckpointError: unreadable source, or weights that do not fit (one line naming the key).
    """
    if model in NOT_CONVERTIBLE:
        raise ModelConfigError(f"torchmil {model} cannot be converted: {NOT_CONVERTIBLE[model]}")
    if model not in _SPECS:
        raise ModelConfigError(
            f"no torchmil conversion for model {model!r}; convertible: {', '.join(convertible_models())}"
        )
    spec = _SPECS[model]
    tensors = load_torchmil_state_dict(source, trust=trust)
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        new = _milsdk_key(key, spec)
        if new in mapped:
            raise CheckpointError(f"torchmil {model}: keys {origin[new]!r} and {key!r} both map to {new!r}")
        mapped[new], origin[new] = value, key

    config = dict(config)
    tensor_fn = None
    if spec.adapt is not None:
        config, tensor_fn = spec.adapt(config)
    if tensor_fn is not None:
        mapped = {k: tensor_fn(k, v) for k, v in mapped.items()}
    in_keys = (spec.in_key,) if isinstance(spec.in_key, str) else spec.in_key or ()
    found = [key for key in in_keys if key in mapped]
    if config.get("in_shape") is None and found:
        config["in_shape"] = (int(mapped[found[0]].shape[-1]),)
    elif isinstance(config.get("in_shape"), int):
        config["in_shape"] = (config["in_shape"],)
    cls = get_model_class(model)
    try:
        target = cls(**config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelConfigError(f"torchmil {model}: cannot build the milsdk model from {config}: "
                               f"{_first_line(exc)}") from exc

    expected = {k: v for k, v in target.state_dict().items() if not k.startswith("criterion.")}
    for new, value in mapped.items():
        if new.startswith("criterion."):
            continue
        if new not in expected and spec.unused is not None and re.fullmatch(spec.unused, new):
            continue
        if new not in expected:
            raise CheckpointError(f"torchmil {model}: key {origin[new]!r} has no place in the milsdk model "
                                  "(another architecture or config?)")
        if tuple(value.shape) != tuple(expected[new].shape):
            raise CheckpointError(
                f"torchmil {model}: key {origin[new]!r} has shape {tuple(value.shape)}, the model built from "
                f"this config expects {tuple(expected[new].shape)} (check --set / config)"
            )
    if spec.fill is not None:
        for key, like in expected.items():
            value = None if key in mapped else spec.fill(key, like)
            if value is not None:
                mapped[key] = value
    missing = [k for k in expected if k not in mapped]
    if missing:
        raise CheckpointError(f"torchmil {model}: no weights for {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    state = {k: mapped[k].to(expected[k].dtype) for k in expected}
    target.load_state_dict(state, strict=False)
    target.eval()
    return target

