"""The CPU's feature flags, for what depends on the instructions a CPU has (numbers only; no torch)."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["BFLOAT16_FLAGS", "EXACT_INT8_FLAGS", "bfloat16_is_emulated", "cpu_flags", "int8_sums_saturate"]

#: x86 flags of the int8 dot products that onnxruntime's u8 x s8 kernel sums in int32 (AVX-512 VNNI, AVX-VNNI,
#: AMX); without one of them it adds pairs of products in a saturating int16 (see milsdk/export/quantize.py).
EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

#: x86 flags of bfloat16 matrix products (AMX tiles, AVX-512 BF16 dot products); without one, oneDNN emulates
#: bfloat16 products with float32 arithmetic and conversions.
BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")

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
    return _x86_known_to_lack(EXACT_INT8_FLAGS, flags, machine)


def bfloat16_is_emulated(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU whose flags are known and name none of :data:`BFLOAT16_FLAGS`: there a ``cpu-bf16``
    artifact runs slower than float32.

    Args:
        flags: the CPU's flags (None = :func:`cpu_flags`); an empty set (unknown) gives False.
        machine: ``platform.machine()`` (None = this machine's).
    """
    return _x86_known_to_lack(BFLOAT16_FLAGS, flags, machine)


def _x86_known_to_lack(wanted: tuple[str, ...], flags: frozenset[str] | None, machine: str | None) -> bool:
    """An x86 CPU whose flags are known (None = this CPU's) and name none of ``wanted``."""
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    return machine in _X86 and bool(flags) and not any(f in flags for f in wanted)
