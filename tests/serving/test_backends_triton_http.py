"""HttpInferConnection's protocol handling against a real local HTTP server (stdlib) that answers as Triton's
KServe v2 endpoint does; the real Triton path is exercised in tests/integration (every model over HTTP, faults,
responses cut short)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from milsdk.serving.backends.triton_http import HttpInferConnection


class KServeStandIn(BaseHTTPRequestHandler):
    """Answers /v2/models/<m>/infer: logits = sum of features over N, attention = features[..., 0]; records what
    arrived. ``mode`` on the server: "ok", "error" (400 with a JSON error), "json" (outputs as JSON data)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's name
        server = self.server
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        header_length = int(self.headers["Inference-Header-Content-Length"])
        request = json.loads(body[:header_length])
        server.seen.append((self.path, dict(self.headers), request, self.client_address[1]))
        arrays, offset = {}, header_length
        for tensor in request["inputs"]:
            dtype = {"FP32": np.float32, "BOOL": np.bool_}[tensor["datatype"]]
            size = tensor["parameters"]["binary_data_size"]
            arrays[tensor["name"]] = np.frombuffer(body, dtype, size // np.dtype(dtype).itemsize, offset).reshape(
                tensor["shape"])
            offset += size
        if server.mode == "error":
            self._send(400, json.dumps({"error": "features: expected 3 dims"}).encode(), {})
            return
        x = arrays["features"]
        logits, attention = x.sum(axis=1, dtype=np.float32), np.ascontiguousarray(x[..., 0])
        if server.mode == "json":
            answer = {"outputs": [
                {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.ravel().tolist()},
                {"name": "attention", "datatype": "FP32", "shape": list(attention.shape),
                 "data": attention.ravel().tolist()}]}
            self._send(200, json.dumps(answer).encode(), {})
            return
        head = json.dumps({"outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(logits.shape),
             "parameters": {"binary_data_size": logits.nbytes}},
            {"name": "attention", "datatype": "FP32", "shape": list(attention.shape),
             "parameters": {"binary_data_size": attention.nbytes}}]}).encode()
        self._send(200, head + logits.tobytes() + attention.tobytes(),
                   {"Inference-Header-Content-Length": str(len(head))})

    def _send(self, status, payload, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), KServeStandIn)
    server.seen, server.mode = [], "ok"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _inputs(b=2, n=5, d=3):
    x = np.arange(b * n * d, dtype=np.float32).reshape(b, n, d)
    return {"features": x, "mask": np.ones((b, n), bool)}


def test_binary_request_and_answer_round_trip_on_one_kept_alive_connection(stand_in):
    address = f"127.0.0.1:{stand_in.server_address[1]}"
    connection = HttpInferConnection(address, headers={"milsdk-api-key": "k" * 8})
    inputs = _inputs()
    for _ in range(3):
        out = connection.infer("abmil", inputs, ["logits", "attention"], model_version="2")
        np.testing.assert_array_equal(out["logits"], inputs["features"].sum(axis=1))
        np.testing.assert_array_equal(out["attention"], inputs["features"][..., 0])
    paths = {path for path, _, _, _ in stand_in.seen}
    ports = {port for _, _, _, port in stand_in.seen}
    assert paths == {"/v2/models/abmil/versions/2/infer"} and len(ports) == 1  # one connection, kept alive
    path, headers, request, _ = stand_in.seen[0]
    assert headers["milsdk-api-key"] == "k" * 8
    assert [t["datatype"] for t in request["inputs"]] == ["FP32", "BOOL"]
    assert request["outputs"] == [{"name": n, "parameters": {"binary_data": True}} for n in ("logits", "attention")]
    connection.close()


def test_an_error_answer_is_the_exception_tritonclient_raises_with_its_status(stand_in):
    stand_in.mode = "error"
    connection = HttpInferConnection(f"127.0.0.1:{stand_in.server_address[1]}/prefix/")
    with pytest.raises(InferenceServerException) as error:
        connection.infer("m", _inputs(), ["logits", "attention"])
    assert error.value.status() == "400" and "expected 3 dims" in str(error.value)
    assert stand_in.seen[0][0] == "/prefix/v2/models/m/infer"


def test_outputs_answered_as_json_data_are_decoded_too(stand_in):
    stand_in.mode = "json"
    out = HttpInferConnection(f"127.0.0.1:{stand_in.server_address[1]}").infer("m", _inputs(), ["logits"])
    np.testing.assert_array_equal(out["logits"], _inputs()["features"].sum(axis=1))
    assert out["attention"].dtype == np.float32 and out["attention"].shape == (2, 5)


def test_a_refused_connection_is_an_os_error_and_the_next_request_reconnects(stand_in):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        unused_port = probe.getsockname()[1]
    connection = HttpInferConnection(f"127.0.0.1:{unused_port}", timeout_s=5)
    with pytest.raises(OSError):
        connection.infer("m", _inputs(), ["logits"])
    connection._host = f"127.0.0.1:{stand_in.server_address[1]}"  # the server is back (elsewhere here)
    assert connection.infer("m", _inputs(), ["logits", "attention"])["logits"].shape == (2, 3)


def test_a_non_contiguous_input_is_refused_before_sending(stand_in):
    connection = HttpInferConnection(f"127.0.0.1:{stand_in.server_address[1]}")
    x = np.zeros((2, 5, 6), np.float32)[..., ::2]
    with pytest.raises(ValueError, match="'features' must be C-contiguous"):
        connection.infer("m", {"features": x}, ["logits"])
    assert stand_in.seen == []
