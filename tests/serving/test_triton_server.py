"""TritonServer's options, checked without starting a server (tests/integration and tests/cli start real ones)."""

import pytest

from milsdk.errors import ServerStartError
from milsdk.serving import TritonServer


def test_defaults_are_loopback_mode_none_no_metrics_nothing_restricted(tmp_path):
    server = TritonServer(tmp_path)
    assert server.host == "127.0.0.1" and server.model_control_mode == "none"
    assert server.metrics_url is None and "metrics" not in server.ports
    assert server.restricted_apis == () and server.api_key is None and server.headers == {}


def test_restricted_apis_get_a_random_key_unless_one_is_given(tmp_path):
    a = TritonServer(tmp_path, restricted_apis=["model-repository", "model-repository", "logging"])
    b = TritonServer(tmp_path, restricted_apis=["model-repository"])
    assert a.restricted_apis == ("model-repository", "logging")
    assert len(a.api_key) >= 32 and a.api_key != b.api_key
    assert a.headers == {"milsdk-api-key": a.api_key, "triton-grpc-protocol-milsdk-api-key": a.api_key}
    given = TritonServer(tmp_path, restricted_apis=["shared-memory"], api_key="my-key_0123")
    assert given.api_key == "my-key_0123"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model_control_mode": "poll"}, "model_control_mode must be one of"),
        ({"restricted_apis": ["repository"]}, r"cannot restrict \['repository'\]: Triton's API groups are health"),
        ({"restricted_apis": ["logging"], "api_key": "short"}, "api_key must be at least 8 characters"),
        ({"restricted_apis": ["logging"], "api_key": "has,comma=and:colon"}, "api_key must be at least 8"),
    ],
)
def test_bad_options_are_one_clear_error(tmp_path, options, message):
    with pytest.raises(ServerStartError, match=message):
        TritonServer(tmp_path, **options)


def test_metrics_port_zero_picks_a_free_port_at_start(tmp_path):
    server = TritonServer(tmp_path, metrics_port=0)
    assert server.ports["metrics"] == 0 and server.metrics_url.endswith(":0/metrics")
