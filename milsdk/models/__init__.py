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

from milsdk.models.camil import CAMIL  # noqa: E402

__all__ += ["CAMIL"]

from milsdk.models.gtp import GTP  # noqa: E402

__all__ += ["GTP"]

from milsdk.models.prob_smooth_abmil import ProbSmoothABMIL, SmoothABMIL  # noqa: E402

__all__ += ["ProbSmoothABMIL", "SmoothABMIL"]

from milsdk.models.transformer_prob_smooth_abmil import TransformerProbSmoothABMIL  # noqa: E402

__all__ += ["TransformerProbSmoothABMIL"]

from milsdk.models.sm_abmil import SmABMIL  # noqa: E402
from milsdk.models.sm_transformer_abmil import SmTransformerABMIL  # noqa: E402

__all__ += ["SmABMIL", "SmTransformerABMIL"]

from milsdk.models.deepgraphsurv import DeepGraphSurv  # noqa: E402
from milsdk.models.patch_gcn import PatchGCN  # noqa: E402

__all__ += ["DeepGraphSurv", "PatchGCN"]

from milsdk.models.from_torchmil import from_torchmil  # noqa: E402

__all__ += ["from_torchmil"]
