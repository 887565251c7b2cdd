"""``python -m milsdk.cli``: the same command as ``milsdk`` (torchrun launches ``milsdk train --nproc`` this way)."""

from milsdk.cli import main

main()
