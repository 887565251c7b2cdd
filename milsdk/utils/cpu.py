"""The CPU's feature flags, for what depends on the instructions a CPU has (numbers only; no torch)."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_flags", "int8_sums_saturate", "EXACT_INT8_FLAGS"]

#: x86 flags of the int8 dot products that onnxruntime's u8 x s8 kernel sums in int32 (AVX-512 VNNI, AVX-VNNI,
#: AMX); without one of them it adds pairs of products in a saturating int16 (see milsdk/export/quantize.py).
EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

_X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first processor in ``cpuinfo`` (Linux); empty where the file cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def int8_sums_saturate(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU whose flags are known and name none of :data:`EXACT_INT8_FLAGS`: there onnxruntime's
    u8 x s8 kernel (int8 weights) can saturate, while its u8 x u8 kernel (uint8 weights) cannot.

    Args:
        flags: the CPU's flags (None = :func:`cpu_flags`); an empty set (unknown) gives False.
        machine: ``platform.machine()`` (None = this machine's).
    """
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    return machine in _X86 and bool(flags) and not any(f in flags for f in EXACT_INT8_FLAGS)
