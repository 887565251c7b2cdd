"""MIL models: one contract (``MILModel``), one registry (``create_model`` / ``list_models``)."""

from milsdk.models.mil_model import MILModel, MILModelWrapper
from milsdk.models.registry import create_model, get_model_class, list_models, register_model
from milsdk.models.abmil import ABMIL
from milsdk.models.clam import CLAM_MB, CLAM_SB
from milsdk.models.dsmil import DSMIL
from milsdk.models.dtfdmil import DTFDMIL
from milsdk.models.setmil import SETMIL
from milsdk.models.transmil import TransMIL
from milsdk.models.transformer_abmil import TransformerABMIL
from milsdk.models.iibmil import IIBMIL
from milsdk.models.vaeabmil import VAEABMIL

__all__ = [
    "ABMIL",
    "CLAM_MB",
    "CLAM_SB",
    "DSMIL",
    "DTFDMIL",
    "IIBMIL",
    "MILModel",
    "MILModelWrapper",
    "create_model",
    "get_model_class",
    "list_models",
    "register_model",
    "SETMIL",
    "TransMIL",
    "TransformerABMIL",
    "VAEABMIL",
]
