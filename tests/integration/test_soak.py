"""A short soak (benchmarks/soak.py, the code the full run uses): 300 one-bag requests from 4 concurrent clients,
HTTP and gRPC, to a real Triton server; zero errors and every answer equal to in-process onnxruntime."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("milsdk_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_short_soak_has_no_error_and_every_answer_equals_onnxruntime(soak, abmil_server, feature_dim):
    pool = soak.make_pool(40, 1500, feature_dim, seed=1)
    expected = soak.reference(abmil_server.repository / "abmil" / "1" / "model.onnx", pool)
    report = soak.run_soak(abmil_server, "abmil", pool, expected, n_requests=300, n_clients=4, warmup=2)
    assert (report.requests, report.errors, report.mismatches) == (300, 0, 0), report.first_errors
    assert len(report.latencies) == 300
    assert report.client_rss_start > 0 and report.server_rss_start > 0 and report.server_rss_end > 0
    assert "| 300 | 4 | 0 | 0 |" in report.markdown("setup")


def test_the_soak_counts_a_wrong_answer_and_a_failed_request(soak, abmil_server, feature_dim):
    """The checker can fail: expected outputs that are off count as wrong answers, a bad bag as an error."""
    pool = soak.make_pool(4, 50, feature_dim, seed=2)
    expected = soak.reference(abmil_server.repository / "abmil" / "1" / "model.onnx", pool)
    expected[1] = (expected[1][0] + 1e-3, expected[1][1])
    pool[2] = pool[2][:, :10]  # the wrong feature dimension: the client refuses the bag
    report = soak.run_soak(abmil_server, "abmil", pool, expected, n_requests=8, n_clients=2, warmup=0)
    assert (report.requests, report.errors, report.mismatches) == (8, 2, 2)
    assert len(report.latencies) == 8  # a refused bag is an answer too (its error), timed like the others
    assert any("dimension 10" in line for line in report.first_errors)
