import sys
from pathlib import Path

import pytest

from milsdk.errors import ServerStartError
from milsdk.serving import server_env
from milsdk.serving.server_env import default_env_path, ensure_server_env, numpy_version, server_python


def test_location_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(server_env.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_env_path() == tmp_path / "milsdk" / "triton-python-env"
    monkeypatch.setenv(server_env.ENV_VAR, str(tmp_path / "mine"))
    assert default_env_path() == tmp_path / "mine"
    assert server_python(tmp_path / "mine") == tmp_path / "mine" / "bin" / "python"
    assert server_python(sys.executable) == Path(sys.executable)


def test_a_numpy_2_environment_is_refused_with_the_reason():
    assert int(numpy_version(sys.executable).split(".")[0]) >= 2  # this test venv has numpy 2
    with pytest.raises(ServerStartError, match="numpy 2.* returns empty outputs under numpy 2"):
        ensure_server_env(sys.executable)


def test_creation_failure_is_one_clear_error(tmp_path):
    with pytest.raises(ServerStartError, match="cannot create the Triton server-side Python environment"):
        ensure_server_env(tmp_path / "env", base_python=tmp_path / "no-python")


def test_the_managed_environment_has_numpy_1_and_onnxruntime():
    python = ensure_server_env()  # made once per machine (setup script), then reused
    assert numpy_version(python).startswith("1.")
    assert (python.parent.parent / "milsdk-server-env.json").is_file()
    assert ensure_server_env() == python
