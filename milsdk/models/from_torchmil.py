"""Convert a model trained with torchmil 1.0.2 into the milsdk model of the same name (then checkpoint, export
and serve it as any milsdk model).

A torchmil ``state_dict`` holds the same tensors as the milsdk model under slightly different names: torchmil's
``LazyLinear`` wraps its ``torch.nn.Linear`` in ``.module``, and a few models lay their blocks out differently.
Each model that can be converted has a :class:`_Spec` below: key renames and, where milsdk deliberately
parameterises a block differently (Sm's smoothing strength), the rewrite of the constructor arguments and weights
that makes the milsdk model compute what torchmil computes; where milsdk's architecture differs on purpose, the
milsdk option that computes torchmil's function (TransMIL: ``embed="linear_or_identity"``,
``landmarks="torchmil"``; GTP: ``mlp_activation="relu"``; CAMIL: ``local_attention="torchmil"``,
``landmarks="torchmil"``; DTFDMIL: ``pseudo_bag_split="array_split"``,
``distill_instances="all"``, for a given grouping: torchmil's eval forward shuffles the instances at random, milsdk's
keeps their order; DeepGraphSurv:
``term_layout="torchmil"``; SETMIL: ``grid="all_cells"``). ``NOT_CONVERTIBLE`` lists the other models both
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

from milsdk.errors import CheckpointError, ModelConfigError, first_line
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
        in_size: ``in_size(config, tensors) -> int | None``: the instance feature size from the adapted config
            and the renamed tensors, where no weight's last axis is it (tried before ``in_key``).
    """

    renames: tuple[tuple[str, str], ...] = ()
    in_key: str | tuple[str, ...] | None = None
    adapt: Callable[[dict[str, Any]], tuple[dict[str, Any], Callable[[str, torch.Tensor], torch.Tensor] | None]] \
        | None = None
    unused: str | None = None
    fill: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None
    in_size: Callable[[dict[str, Any], Mapping[str, torch.Tensor]], int | None] | None = None


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
    if re.fullmatch(r"(layers\.\d+|nystrom_transformer_layer)\.att\.out_proj\.weight", key):
        return torch.eye(like.shape[0], like.shape[1], dtype=like.dtype)
    if re.fullmatch(r"(layers\.\d+|nystrom_transformer_layer)\.att\.out_proj\.bias", key):
        return torch.zeros_like(like)
    return None


def _camil_adapt(config: dict[str, Any]):
    """torchmil's CAMIL: its CAMILSelfAttention and Nystrom landmarks. torchmil's default n_landmarks=None
    crashes in its forward, so a trained model had a number: it must be given (milsdk's None means
    another number)."""
    for option in ("local_attention", "landmarks"):
        if config.get(option, "torchmil") != "torchmil":
            raise ModelConfigError(
                f"torchmil CAMIL converts with {option}='torchmil', not {config[option]!r}"
            )
    if config.get("n_landmarks") is None:
        raise ModelConfigError("torchmil CAMIL: pass the n_landmarks the model was built with (torchmil's "
                               "default None crashes in its forward, so a trained model has a number)")
    return {**config, "local_attention": "torchmil", "landmarks": "torchmil"}, None


def _gtp_adapt(config: dict[str, Any]):
    """torchmil's GTP encoder (torchmil.nn.relprop's) has a ReLU MLP."""
    if config.get("mlp_activation", "relu") != "relu":
        raise ModelConfigError(f"torchmil GTP converts with mlp_activation='relu', not {config['mlp_activation']!r}")
    return {**config, "mlp_activation": "relu"}, None


def _setmil_adapt(config: dict[str, Any]):
    """torchmil's SETMIL runs over every cell of each bag's coords grid: milsdk's grid="all_cells"."""
    if config.get("grid", "all_cells") != "all_cells":
        raise ModelConfigError(f"torchmil SETMIL converts with grid='all_cells', not {config['grid']!r}")
    return {**config, "grid": "all_cells"}, None


def _dtfdmil_adapt(config: dict[str, Any]):
    """torchmil's DTFDMIL: np.array_split's pseudo-bag sizes, every instance of a pseudo-bag distilled. torchmil
    shuffles the instances before splitting (np.random, eval mode too); milsdk keeps the order it is given."""
    for option, value in (("pseudo_bag_split", "array_split"), ("distill_instances", "all")):
        if config.get(option, value) != value:
            raise ModelConfigError(f"torchmil DTFDMIL converts with {option}={value!r}, not {config[option]!r}")
    return {**config, "pseudo_bag_split": "array_split", "distill_instances": "all"}, None


def _deepgraphsurv_adapt(config: dict[str, Any]):
    """torchmil's ChebConv layout of the Chebyshev terms (a view of the (K, N, C) stack, see milsdk's ChebConv).
    torchmil's compute_lambda_max=True divides by the largest eigenvalue of A (a dense eigen-solver), milsdk's by
    that of the Laplacian D - A: only the default (2.0 in both) converts. torchmil's degrees are column sums,
    milsdk's row sums: the same for the symmetric adjacencies torchmil's datasets build."""
    if config.get("term_layout", "torchmil") != "torchmil":
        raise ModelConfigError(f"torchmil DeepGraphSurv converts with term_layout='torchmil', not "
                               f"{config['term_layout']!r}")
    if config.get("compute_lambda_max", False):
        raise ModelConfigError("torchmil DeepGraphSurv converts only with compute_lambda_max=False: torchmil's True "
                               "scales by the largest eigenvalue of A (a dense eigen-solver per layer), milsdk's by "
                               "the Laplacian's (D - A), another normalisation")
    return {**config, "term_layout": "torchmil"}, None


def _deepgraphsurv_in_size(config: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> int | None:
    """A first Chebyshev layer reads K * D inputs; a branch without layers (proj1d / classifier) reads D."""
    K = int(config.get("K", 5))
    for key in ("layers_rep.0.fc.weight", "layers_att.0.fc.weight"):
        if key in tensors:
            width = int(tensors[key].shape[-1])
            if width % K:
                raise CheckpointError(f"torchmil DeepGraphSurv: key {key!r} has {width} inputs, not a multiple of "
                                      f"K={K} (pass the K the model was built with: --set K=...)")
            return width // K
    for key in ("proj1d.weight", "classifier.weight"):
        if key in tensors:
            return int(tensors[key].shape[-1])
    return None


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
    # torchmil's Nystrom layer has an identity out_proj (filled) and a norm2 also without the MLP.
    "CAMIL": _Spec(
        renames=((r"^nystrom_transformer_layer\.att_module\.qkv_nn\.", "nystrom_transformer_layer.att.qkv."),
                 (r"^nystrom_transformer_layer\.mlp_module\.", "nystrom_transformer_layer.mlp."),
                 (r"^camil_self_attention\.(qk|v)_nn\.", r"camil_self_attention.\1."),
                 (r"^camil_att_pool\.", "pool.")),
        in_key=("fc1.weight", "nystrom_transformer_layer.att.qkv.weight"), adapt=_camil_adapt,
        unused=r"nystrom_transformer_layer\.norm2\.(weight|bias)", fill=_identity_out_proj),
    "CLAM_SB": _Spec(in_key="pool.fc1.weight"),
    "DSMIL": _Spec(in_key="q_nn.weight"),
    "DeepGraphSurv": _Spec(adapt=_deepgraphsurv_adapt, in_size=_deepgraphsurv_in_size),
    "DTFDMIL": _Spec(in_key="classifier.weight", adapt=_dtfdmil_adapt),
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
    # the same keys (GridPMF's branches are torchmil's T2TLayers); pos_embed.inv_freq is a constant buffer in
    # milsdk, and torchmil's Layer builds norm2 also without the MLP
    "SETMIL": _Spec(in_key=("proj.weight", "cls_token"), adapt=_setmil_adapt,
                    unused=r"pos_embed\.inv_freq|(pmf\.layers\.\d+\.transf_layer|se_transf\.layers\.\d+)\.norm2\."
                           r"(weight|bias)"),
}

# Models of both libraries that cannot be converted to equal outputs, and why.
NOT_CONVERTIBLE: dict[str, str] = {
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
                raise CheckpointError(
                    f"torchmil checkpoint {path}: cannot be read: {first_line(exc2)}"
                ) from exc2
        except Exception as exc:
            raise CheckpointError(f"torchmil checkpoint {path}: cannot be read: {first_line(exc)}") from exc
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
    if config.get("in_shape") is None and spec.in_size is not None:
        size = spec.in_size(config, mapped)
        if size is not None:
            config["in_shape"] = (size,)
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
                               f"{first_line(exc)}") from exc

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

