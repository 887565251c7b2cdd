"""CPU flags from /proc/cpuinfo, and which CPUs sum onnxruntime's u8 x s8 products with saturation."""

from __future__ import annotations

from milsdk.utils.cpu import bfloat16_is_emulated, cpu_flags, int8_sums_saturate


def test_flags_are_read_from_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 fma avx512_vnni\n")
    assert cpu_flags(info) == {"fpu", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_only_an_x86_cpu_known_to_lack_vnni_saturates():
    zen3 = frozenset({"avx2", "fma"})
    assert int8_sums_saturate(zen3, "x86_64")
    for exact in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert not int8_sums_saturate(zen3 | {exact}, "x86_64")
    assert not int8_sums_saturate(zen3, "aarch64")  # not onnxruntime's x86 kernel
    assert not int8_sums_saturate(frozenset(), "x86_64")  # flags unknown: no claim


def test_this_machines_flags_are_those_of_proc_cpuinfo():
    assert cpu_flags() == cpu_flags("/proc/cpuinfo")


def test_bfloat16_is_emulated_only_on_an_x86_cpu_known_to_lack_amx_and_avx512_bf16():
    zen3 = frozenset({"avx2", "fma", "avx512f"})
    assert bfloat16_is_emulated(zen3, "x86_64")
    for unit in ("amx_bf16", "avx512_bf16"):
        assert not bfloat16_is_emulated(zen3 | {unit}, "x86_64")
    assert not bfloat16_is_emulated(zen3, "aarch64")  # oneDNN's x86 kernels are not the question there
    assert not bfloat16_is_emulated(frozenset(), "x86_64")  # flags unknown: no claim
