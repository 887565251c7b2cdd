"""torchmil path ``torchmil.utils.graph_utils``: re-exports ``milsdk.utils.graph``."""

from milsdk.utils.graph import add_self_loops, build_adj, degree, normalize_adj

__all__ = ["add_self_loops", "build_adj", "degree", "normalize_adj"]
