"""MIL models: one contract (``MILModel``), one registry (``create_model`` / ``list_models``)."""

from milsdk.models.mil_model import MILModel, MILModelWrapper
from milsdk.models.registry import create_model, get_model_class, list_models, register_model
from milsdk.models.abmil import ABMIL
from milsdk.models.transmil import TransMIL

__all__ = [
    "ABMIL",
    "MILModel",
    "MILModelWrapper",
    "create_model",
    "get_model_class",
    "list_models",
    "register_model",
    "TransMIL",
]
