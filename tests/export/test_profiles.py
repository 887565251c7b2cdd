"""Export profiles: the packaged TOML files, loading by name or path, one-line errors naming file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from milsdk.errors import ExportError
from milsdk.export.profiles import PROFILES_DIR, InstanceGroup, list_profiles, load_profile

REPO = Path(__file__).resolve().parents[2]


def test_packaged_profiles_are_the_top_level_folder():
    link = REPO / "milsdk" / "export" / "profiles"
    assert link.is_symlink() and os.readlink(link) == "../../export/profiles"
    assert PROFILES_DIR.resolve() == (REPO / "export" / "profiles").resolve()
    assert list_profiles() == ["cpu", "cpu-bf16", "cpu-int8", "cpu-int8-vnni", "gpu-fp16", "triton-python",
                               "triton-python-wire16", "triton-pytorch"]


def test_packaged_profiles():
    cpu, gpu, python = (load_profile(n) for n in ("cpu", "gpu-fp16", "triton-python"))
    assert load_profile(None) == cpu
    assert (cpu.precision, cpu.opset, cpu.max_batch_size, cpu.formats) == (
        "float32",
        18,
        8,
        ("onnx", "torchscript"),
    )
    assert (cpu.triton_backend, cpu.instance_groups, cpu.dynamic_batching) == (
        "onnxruntime",
        (InstanceGroup(),),
        False,
    )
    assert (gpu.precision, gpu.features_dtype, gpu.uses_gpu) == ("float16", "float32", True)
    assert gpu.instance_groups == (InstanceGroup("gpu", 1, (0,)),)
    assert (python.triton_backend, python.triton_format, python.uses_gpu) == ("python", "onnx", False)
    assert all(p.description for p in (cpu, gpu, python))
    torchscript = load_profile("triton-pytorch")
    assert (torchscript.formats, torchscript.triton_backend, torchscript.triton_format) == (
        ("torchscript",), "pytorch", "torchscript")
    assert torchscript.uses_gpu and torchscript.precision == "float32"
    int8 = load_profile("cpu-int8")
    assert (int8.precision, int8.features_dtype, int8.formats, int8.triton_format, int8.uses_gpu) == (
        "int8", "float32", ("onnx",), "onnx", False)
    assert (int8.max_probability_change, int8.min_attention_spearman, int8.attention_min_instances) == (
        0.02, 0.98, 20)
    assert (int8.int8_weights, cpu.int8_weights) == ("uint8", "uint8")
    vnni = load_profile("cpu-int8-vnni")
    assert (vnni.precision, vnni.int8_weights, vnni.formats, vnni.features_dtype) == (
        "int8", "int8", ("onnx",), "float32")
    assert (cpu.max_probability_change, cpu.min_attention_spearman) == (0.02, 0.98)  # defaults
    bf16 = load_profile("cpu-bf16")
    assert (bf16.precision, bf16.features_dtype, bf16.formats, bf16.triton_backend, bf16.uses_gpu) == (
        "bfloat16", "float32", ("torchscript",), "pytorch", False)
    assert (bf16.max_probability_change, bf16.min_attention_spearman) == (0.02, 0.98)
    wire16 = load_profile("triton-python-wire16")
    assert (wire16.precision, wire16.features_dtype, wire16.formats, wire16.triton_backend) == (
        "float32", "float16", ("onnx",), "python")


def test_int8_weights_are_checked(tmp_path):
    with pytest.raises(ExportError, match=r"int8_weights.*applies to precision int8, not float32"):
        load_profile(_toml(tmp_path, 'int8_weights = "int8"\n'))
    with pytest.raises(ExportError, match="int8_weights"):
        load_profile(_toml(tmp_path, 'precision = "int8"\nformats = ["onnx"]\nint8_weights = "int4"\n'))


def test_accuracy_limits_from_a_profile(tmp_path):
    path = _toml(tmp_path, 'precision = "int8"\nformats = ["onnx"]\n[accuracy]\nmax_probability_change = 0.05\n'
                           'min_attention_spearman = 0.9\n')
    profile = load_profile(path)
    assert (profile.precision, profile.max_probability_change, profile.min_attention_spearman) == ("int8", 0.05, 0.9)


def _toml(tmp_path, text, name="custom.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_profile_from_a_path(tmp_path):
    path = _toml(
        tmp_path,
        'formats = ["torchscript"]\nmax_batch_size = 2\n[triton]\nbackend = "pytorch"\n'
        '[[triton.instance_group]]\nkind = "gpu"\ncount = 3\n',
    )
    profile = load_profile(str(path))
    assert (profile.name, profile.path, profile.triton_format) == ("custom", path, "torchscript")
    assert profile.max_batch_size == 2 and profile.instance_groups == (InstanceGroup("gpu", 3),)


@pytest.mark.parametrize(
    "text, message",
    [
        ("opset = 18\nprecison = 'float16'\n", "key 'precison' is unknown"),
        (
            "[triton]\nbackend = 'tensorrt'\n",
            "key 'triton.backend' must be one of onnxruntime, python, pytorch",
        ),
        ("[triton]\nbatching = true\n", "key 'triton.batching' is unknown"),
        (
            "[[triton.instance_group]]\nkind = 'tpu'\n",
            r"key 'triton.instance_group\[0\].kind' must be one of cpu, gpu",
        ),
        ("[[triton.instance_group]]\ngpus = [0]\n", "only valid with kind"),
        ("max_batch_size = 0\n", "key 'max_batch_size' must be >= 1"),
        ("max_batch_size = '8'\n", "key 'max_batch_size' must be int"),
        ("precision = 'bf16'\n", "key 'precision' must be one of float32, float16, bfloat16, int8"),
        ("precision = 'bfloat16'\n", "key 'formats' holds 'onnx'; precision bfloat16 is a TorchScript export"),
        ("features_dtype = 'int8'\n", "key 'features_dtype' must be one of float32, float16"),
        ("precision = 'int8'\n", "key 'formats' holds 'torchscript'; precision int8 is an ONNX export"),
        ("[accuracy]\nmax_probability_change = 2\n", "key 'accuracy.max_probability_change' must be between 0 and 1"),
        ("[accuracy]\nspearman = 0.9\n", "key 'accuracy.spearman' is unknown"),
        ("[accuracy]\nattention_min_instances = 2\n", "key 'accuracy.attention_min_instances' must be >= 3"),
        (
            "formats = ['onnx']\n[triton]\nbackend = 'pytorch'\n",
            "serves torchscript, which is not in formats",
        ),
        ("opset = [\n", "not valid TOML"),
    ],
)
def test_bad_profiles_name_the_file_and_key(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(ExportError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(
        ExportError,
        match="unknown profile 'gpu'; packaged profiles: cpu, cpu-bf16, cpu-int8, cpu-int8-vnni, gpu-fp16, "
        "triton-python, triton-python-wire16, triton-pytorch",
    ):
        load_profile("gpu")
    with pytest.raises(ExportError, match="no such file"):
        load_profile(tmp_path / "nope.toml")
