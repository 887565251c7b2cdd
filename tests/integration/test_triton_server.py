"""A real Triton server (the pip-installed one, Python backend) on loopback, called by MILClient."""

import numpy as np
import pytest

from milsdk.errors import ServerStartError, ServerUnavailableError
from milsdk.models import get_model_class, list_models
from milsdk.serving import MILClient, TritonServer

#: Triton model name -> registered model name (the conftest serves every registered model under its lower-case name).
MODEL_NAMES = {name.lower(): name for name in list_models()}

pytestmark = pytest.mark.integration


def check_against_eager(preds, bags, expected, tol=1e-4):
    assert [p.index for p in preds] == list(range(len(bags)))
    for pred, bag, (logits, attention) in zip(preds, bags, expected):
        assert pred.ok, pred.error
        features = bag["features"] if isinstance(bag, dict) else bag
        assert pred.attention.shape == (len(features),)
        np.testing.assert_allclose(pred.logits, logits, atol=tol)
        np.testing.assert_allclose(pred.attention, attention, atol=tol)
        assert pred.attention.sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", sorted(MODEL_NAMES))
def test_client_matches_eager_pytorch_on_50_bags(triton_server, served_bags, eager_outputs, model, protocol):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with MILClient.from_triton(url, model) as client:
        assert client.info.model_name == MODEL_NAMES[model]
        assert client.max_batch_size == 8  # the exporter's max_batch_size, read from the server's config
        preds = client.predict(served_bags)
    check_against_eager(preds, served_bags, eager_outputs[model])
    assert sorted(len(b["features"]) for b in served_bags)[::49] == [1, 5000]
    if client.info.padding_invariant:
        assert client.last_run.requests < len(served_bags)


@pytest.mark.parametrize("model", sorted(MODEL_NAMES))
def test_triton_python_backend_equals_in_process_onnxruntime(triton_server, triton_repo, served_bags, model):
    """The exporter's Python-backend variant, served by a real Triton, against the same model.onnx run by
    onnxruntime in this process, on the same batches (same planner budget): the same numbers within 1e-5.
    (Different batches would compare float32 rounding of differently padded runs, which the eager comparisons
    above bound at 1e-4.) Graph models scatter with ScatterElements, which onnxruntime adds in index order:
    ScatterND's multi-threaded reduction lost updates here, seen as 8e-4 on GTP's logits in one CI run."""
    tol = 1e-5
    onnx_path = triton_repo / model / "1" / "model.onnx"
    budget = {"max_instances": 8192, "max_batch_size": 8}
    with MILClient.from_path(onnx_path, **budget) as local, \
            MILClient.from_triton(triton_server.grpc_url, model, **budget) as served:
        for ours, theirs in zip(local.predict(served_bags), served.predict(served_bags)):
            assert ours.ok and theirs.ok
            np.testing.assert_allclose(theirs.logits, ours.logits, atol=tol, rtol=0)
            np.testing.assert_allclose(theirs.attention, ours.attention, atol=tol, rtol=0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_gives_the_same_outputs(triton_server, eval_bags, eager_outputs, protocol):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    bags = eval_bags[:20]
    with MILClient.from_triton(url, "abmil", shared_memory=True) as client:
        preds = client.predict(bags)
    check_against_eager(preds, bags, eager_outputs["abmil"][:20])


def test_shared_memory_regions_lost_by_the_server_are_registered_again(triton_server, eval_bags, eager_outputs):
    import tritonclient.http

    bags = eval_bags[:6]
    with MILClient.from_triton(triton_server.http_url, "abmil", shared_memory=True, max_in_flight=1) as client:
        client.predict(bags)
        # what a server restart between two requests does: it forgets every registered region
        admin = tritonclient.http.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
        assert admin.get_system_shared_memory_status()
        admin.unregister_system_shared_memory()
        admin.close()
        preds = client.predict(bags)
    check_against_eager(preds, bags, eager_outputs["abmil"][:6])


def _our_regions(admin, before):
    return [r["name"] for r in admin.get_system_shared_memory_status() if r["name"] not in before]


def test_repeated_predicts_reuse_connections_and_shared_memory_regions(triton_server, eval_bags, eager_outputs):
    """Requests run on the client's worker threads, kept from one predict to the next, so each worker's client
    and shared-memory region serve every call. Each predict used to start new threads: ten calls left up to
    twenty regions, each the size of a request, registered on the server until close, and each call paid for
    a new region's first touch (45 of 94 ms for one 16,000 x 1024 bag here)."""
    import tritonclient.http

    admin = tritonclient.http.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
    before = {r["name"] for r in admin.get_system_shared_memory_status()}
    bags = eval_bags[:4]
    with MILClient.from_triton(triton_server.http_url, "abmil", shared_memory=True, max_in_flight=2,
                               max_batch_size=1) as client:
        for _ in range(10):
            preds = client.predict(bags)
        assert 1 <= len(_our_regions(admin, before)) <= 2  # one per worker thread
    check_against_eager(preds, bags, eager_outputs["abmil"][:4])
    assert _our_regions(admin, before) == []  # close unregisters them
    admin.close()


def test_a_thread_that_ends_leaves_no_connection_or_region_behind(triton_server, eval_bags, eager_outputs):
    """A caller that predicts from a new thread each time (one request in flight runs in the caller's thread):
    the region of a thread that has ended is unregistered by the next request, whichever thread makes it."""
    import gc
    import threading

    import tritonclient.http

    admin = tritonclient.http.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
    before = {r["name"] for r in admin.get_system_shared_memory_status()}
    bags = eval_bags[:3]
    results = []
    with MILClient.from_triton(triton_server.http_url, "abmil", shared_memory=True, max_in_flight=1) as client:
        for _ in range(4):
            worker = threading.Thread(target=lambda: results.append(client.predict(bags)))
            worker.start()
            worker.join()
        gc.collect()
        assert len(_our_regions(admin, before)) <= 1  # the last thread's, not yet released
        results.append(client.predict(bags))  # this request releases what the ended threads held
        assert len(_our_regions(admin, before)) == 1  # the calling thread's own
        assert len(client.backend._clients) == 1
    for preds in results:
        check_against_eager(preds, bags, eager_outputs["abmil"][:3])
    assert _our_regions(admin, before) == []
    admin.close()


@pytest.mark.parametrize("protocol, shared_memory", [("grpc", False), ("http", False), ("http", True)])
def test_bad_bags_among_good_ones_over_triton(triton_server, eval_bags, eager_outputs, feature_dim, protocol,
                                              shared_memory, monkeypatch):
    """The served model tests each bag for NaN/inf itself (the repository copy's features_check): the client
    scans no bag, and a bad bag in a batch of good ones loses only itself."""
    from milsdk.serving import client as client_module

    scanned = []
    all_finite = client_module.all_finite
    monkeypatch.setattr(client_module, "all_finite", lambda a: scanned.append(a.shape) or all_finite(a))
    one_inf = next(bag for bag in eval_bags[3:] if len(bag) >= 3).copy()
    one_inf[2, 5] = np.inf
    bags = [eval_bags[0], np.ones((5, 3), np.float32), eval_bags[1], np.full((4, feature_dim), np.nan, np.float32),
            np.ones((0, feature_dim), np.float32), eval_bags[2], one_inf]
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with MILClient.from_triton(url, "abmil", protocol=protocol, shared_memory=shared_memory,
                               max_padding=1.0) as client:  # the bags share requests
        assert client.backend.checks_features
        preds = client.predict(bags)
    assert [p.ok for p in preds] == [True, False, True, False, False, True, False]
    assert "dimension 3" in preds[1].error and "0 instances" in preds[4].error
    assert preds[3].error == f"features hold {4 * feature_dim} NaN/inf values"
    assert preds[6].error == "features hold 1 NaN/inf values"
    assert not [shape for shape in scanned if shape[-1:] == (feature_dim,)]  # no bag scanned before sending
    for pred, (logits, attention) in zip([preds[0], preds[2], preds[5]], eager_outputs["abmil"][:3]):
        np.testing.assert_allclose(pred.logits, logits, atol=1e-4)
        np.testing.assert_allclose(pred.attention, attention, atol=1e-4)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_down_at_start_is_one_clear_error_naming_the_url(protocol, unused_port):
    url = f"{'http' if protocol == 'http' else 'grpc'}://127.0.0.1:{unused_port}"
    with pytest.raises(ServerUnavailableError, match=f"Triton server at {url} is not reachable"):
        MILClient.from_triton(url, "abmil")


def test_unknown_model_names_the_models_there(triton_server):
    there = ", ".join(sorted(MODEL_NAMES))
    with pytest.raises(ServerUnavailableError, match=f"model 'nope' is not ready .* models there: {there}$"):
        MILClient.from_triton(triton_server.http_url, "nope")


def test_port_taken_is_a_clear_start_error(triton_repo, triton_server):
    port = triton_server.ports["http"]
    with pytest.raises(ServerStartError, match=f"http port {port} on 127.0.0.1 is already in use"):
        TritonServer(triton_repo, http_port=port).start()


def _request_count(url: str, model: str) -> int:
    import tritonclient.http

    admin = tritonclient.http.InferenceServerClient(url.removeprefix("http://"))
    try:
        stats = admin.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    finally:
        admin.close()
    return int(stats["success"]["count"]) + int(stats["fail"]["count"])


def test_features_and_mask_of_different_n_are_refused_in_the_contracts_words(abmil_server, feature_dim):
    import tritonclient.http
    from tritonclient.utils import InferenceServerException

    from milsdk.errors import ServingError
    from milsdk.serving.backends.triton import TritonBackend

    features, mask = np.ones((1, 5, feature_dim), np.float32), np.ones((1, 4), bool)
    # the client never sends such a request
    backend = TritonBackend(abmil_server.http_url, "abmil")
    before = _request_count(abmil_server.http_url, "abmil")
    with pytest.raises(ServingError) as caught:
        backend.run({"features": features, "mask": mask})
    backend.close()
    assert str(caught.value) == (
        f"request to {abmil_server.http_url}, model 'abmil', not sent: features has shape (1, 5, {feature_dim}) "
        "and mask (1, 4): they disagree on N, the number of instances (5 vs 4)"
    )
    assert _request_count(abmil_server.http_url, "abmil") == before

    # and the served model.py answers another client's such request naming the inputs, not onnxruntime's nodes
    client = tritonclient.http.InferenceServerClient(abmil_server.http_url.removeprefix("http://"))
    inputs = [tritonclient.http.InferInput("features", [1, 5, feature_dim], "FP32"),
              tritonclient.http.InferInput("mask", [1, 4], "BOOL")]
    inputs[0].set_data_from_numpy(features)
    inputs[1].set_data_from_numpy(mask)
    with pytest.raises(InferenceServerException) as answer:
        client.infer("abmil", inputs)
    client.close()
    assert answer.value.message() == (
        f"features has shape (1, 5, {feature_dim}) and mask (1, 4): they disagree on n_instances (5 vs 4)"
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_predict_leaks_no_region_even_where_a_dead_run_had_this_pid(
    abmil_server, tmp_path, protocol, feature_dim
):
    """In a container every run may get the same pid; regions a killed run left in /dev/shm must not be taken
    over (Python's resource tracker then reports them leaked at exit), nor removed: they are not ours."""
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(0)
    for i, n in enumerate([3, 40, 7, 120, 1, 60]):
        np.save(tmp_path / f"bag{i}.npy", rng.normal(size=(n, feature_dim)).astype(np.float32))
    url = abmil_server.http_url if protocol == "http" else abmil_server.grpc_url
    script = (
        "import os, sys\n"
        "stale = [f'/dev/shm/milsdk_{os.getpid()}_{i}' for i in range(3)]\n"
        "for path in stale:\n"
        "    with open(path, 'wb') as f:\n"
        "        f.truncate(1 << 16)\n"
        "print('\\n'.join(stale), flush=True)\n"
        "from milsdk.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "predict", url, str(tmp_path), "--model-name", "abmil", "--shared-memory",
         "--max-batch-size", "2", "--out", str(tmp_path / "p.csv"), "-q", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    stale = [Path(line) for line in done.stdout.splitlines() if line.startswith("/dev/shm/")]
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "leaked shared_memory" not in done.stderr and "resource_tracker" not in done.stderr
        assert "6 of 6 bags predicted" in done.stderr
        assert len(stale) == 3 and all(p.stat().st_size == 1 << 16 for p in stale)  # untouched
        pid = stale[0].name.split("_")[1]
        assert sorted(Path("/dev/shm").glob(f"milsdk_{pid}_*")) == sorted(stale)  # none of ours left behind
    finally:
        for path in stale:
            path.unlink(missing_ok=True)


GRAPH_MODELS = sorted(served for served, name in MODEL_NAMES.items() if "adj" in get_model_class(name).extra_inputs)


@pytest.mark.parametrize("model", GRAPH_MODELS)
def test_predict_cli_serves_a_graph_model_from_feature_files_with_coords_only(
    triton_server, triton_repo, served_bags, eager_outputs, model, tmp_path
):
    """`milsdk predict grpc://... --model-name GRAPH_MODEL slides/` on .h5 files holding features and coords only:
    the client builds each bag's 8-neighbour graph, the server answers, and every score equals eager PyTorch on
    the bag alone (<= 1e-4)."""
    import csv

    import h5py
    from click.testing import CliRunner

    from milsdk.cli import main
    from milsdk.export import read_model_info

    chosen = [0, 1, 5, 17]  # sizes 1 .. 5,000 of the shared evaluation bags
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in chosen:
        with h5py.File(folder / f"bag{i:02d}.h5", "w") as f:
            f["features"], f["coords"] = served_bags[i]["features"], served_bags[i]["coords"]
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(
        main, ["predict", triton_server.grpc_url, str(folder), "--model-name", model, "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        reader = csv.DictReader(handle)
        table = {row["bag"]: row for row in reader}
        prob_columns = [column for column in reader.fieldnames if column.startswith("prob_")]
    info = read_model_info(triton_repo / model / "1" / "model.onnx")
    assert sorted(table) == [f"bag{i:02d}" for i in chosen]
    for i in chosen:
        row, logits = table[f"bag{i:02d}"], eager_outputs[model][i][0].astype(np.float64)
        assert row["error"] == "" and int(row["n_instances"]) == len(served_bags[i]["features"])
        if info.output_activation == "risk":
            got, want = [float(row["risk"])], logits[:1]
        elif info.n_classes == 1:
            got, want = [float(row["probability"])], 1 / (1 + np.exp(-logits[:1]))
        else:
            assert len(prob_columns) == info.n_classes
            got = [float(row[column]) for column in prob_columns]
            want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_float16_wire_profile_sends_half_the_bytes_and_answers_as_eager(eager_models, served_bags, eager_outputs,
                                                                       tmp_path, monkeypatch):
    """The triton-python-wire16 profile: the config's features input is TYPE_FP16, the client casts the float32
    bags itself (onnxruntime's conversion, into the shared-memory region or the connection's scratch buffer), and
    every bag's outputs stay within float16 rounding of eager float32, over HTTP, gRPC and shared memory."""
    from milsdk.export.api import export_checkpoint
    from milsdk.export.verify import VerificationPlan
    from milsdk.serving import float16_cast
    from milsdk.utils.checkpoint import save_checkpoint

    # the test bags are small: convert every one with onnxruntime, and count the conversions it makes
    monkeypatch.setattr(float16_cast, "ONNXRUNTIME_MIN_ELEMENTS", 1)
    session = float16_cast._cast_session()
    conversions = []

    class CountingSession:
        def io_binding(self):
            conversions.append(1)
            return session.io_binding()

        def run_with_iobinding(self, binding):
            session.run_with_iobinding(binding)

    monkeypatch.setattr(float16_cast, "_session", CountingSession())

    ckpt = save_checkpoint(eager_models["abmil"], tmp_path / "abmil.ckpt")
    result = export_checkpoint(ckpt, tmp_path / "out", profile="triton-python-wire16", triton_repo=tmp_path / "repo",
                               name="abmil16", plan=VerificationPlan.quick())
    assert result.artifacts[0].report.passed and result.accuracy is not None and result.accuracy.passed
    assert result.accuracy.precision == "float32, float16 features"
    config = (tmp_path / "repo" / "abmil16" / "config.pbtxt").read_text()
    assert "TYPE_FP16" in config
    with TritonServer(tmp_path / "repo", exit_timeout_s=2) as server:
        for url, protocol, shared_memory in ((server.http_url, "http", False), (server.http_url, "http", True),
                                             (server.grpc_url, "grpc", False)):
            del conversions[:]
            with MILClient.from_triton(url, "abmil16", protocol=protocol, shared_memory=shared_memory) as client:
                predictions = client.predict(served_bags)
            assert conversions, protocol  # every request's features went through onnxruntime's conversion
            worst_logit = worst_att = 0.0
            for prediction, (logits, attention) in zip(predictions, eager_outputs["abmil"]):
                assert prediction.ok, prediction.error
                worst_logit = max(worst_logit, float(np.abs(prediction.logits - logits).max()))
                worst_att = max(worst_att, float(np.abs(prediction.attention - attention).max()))
            assert 0.0 < worst_logit <= 1e-2 and worst_att <= 1e-3, (protocol, shared_memory, worst_logit, worst_att)
        # finite float32 past float16's range becomes inf on the wire: that bag gets an error, the others answer
        beyond = served_bags[1]["features"].copy()
        beyond[0, 0] = 1e6
        with MILClient.from_triton(server.http_url, "abmil16", shared_memory=True, max_padding=1.0) as client:
            assert client.backend.checks_features
            predictions = client.predict([served_bags[0], {"features": beyond}, served_bags[2]])
        assert [p.ok for p in predictions] == [True, False, True]
        assert predictions[1].error == "the model returned NaN/inf for this bag"
