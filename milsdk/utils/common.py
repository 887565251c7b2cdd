"""torchmil path ``torchmil.utils.common``: re-exports ``milsdk.datasets.tables``."""

from milsdk.datasets.tables import keep_only_existing_files, read_csv

__all__ = ["keep_only_existing_files", "read_csv"]
