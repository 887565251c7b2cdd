"""``milsdk predict`` end to end on real feature files and a real exported model (onnxruntime / TorchScript)."""

import csv

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from milsdk.cli import main
from milsdk.export import export_onnx, export_torchscript, model_info
from milsdk.models import ABMIL, get_model_class, list_models
from milsdk.serving import MILClient

D = 16
CLASSES = ["benign", "tumor", "other"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    torch.manual_seed(0)
    model = ABMIL(in_shape=(D,), att_dim=8, n_classes=3).eval()
    info = model_info(model, {"class_names": CLASSES})
    root = tmp_path_factory.mktemp("predict_cli")
    return {
        "onnx": export_onnx(model, root / "model.onnx", info=info),
        "pt": export_torchscript(model, root / "model.pt", info=info),
    }


@pytest.fixture
def slides(tmp_path):
    """A folder in the CLAM/TRIDENT/STAMP layouts with two bad files among good ones."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "slides"
    folder.mkdir()
    with h5py.File(folder / "a_clam.h5", "w") as f:
        f["features"] = rng.normal(size=(30, D)).astype(np.float32)
        f["coords"] = rng.integers(0, 10, size=(30, 2)) * 256
    with h5py.File(folder / "b_stamp.h5", "w") as f:
        f["feats"] = rng.normal(size=(7, D)).astype(np.float16)
    np.save(folder / "c_wrong_dim.npy", rng.normal(size=(5, D + 2)).astype(np.float32))
    (folder / "d_broken.h5").write_bytes(b"not an hdf5 file")
    np.save(folder / "e_one.npy", rng.normal(size=(1, D)).astype(np.float32))
    return folder


def run(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_attention_and_exit_code_with_bad_files(artifacts, slides, tmp_path):
    out, att = tmp_path / "preds.csv", tmp_path / "attention"
    result = run(artifacts["onnx"], slides, "--out", out, "--attention-dir", att, "--no-progress")
    assert result.exit_code == 1  # two bags failed
    table = rows(out)
    assert [r["bag"] for r in table] == ["a_clam", "b_stamp", "c_wrong_dim", "d_broken", "e_one"]
    assert list(table[0]) == ["bag", "file", "n_instances", "prob_benign", "prob_tumor", "prob_other", "label", "error"]
    # a rejected bag has its real size; an unreadable file has none
    assert [r["n_instances"] for r in table] == ["30", "7", "5", "", "1"]
    assert "dimension 18, model ABMIL expects 16" in table[2]["error"]
    assert "cannot read .h5 file" in table[3]["error"]
    assert [r["error"] for r in table if r["bag"] in ("a_clam", "b_stamp", "e_one")] == ["", "", ""]

    # the numbers are the client's, for the same files
    client = MILClient.from_path(artifacts["onnx"])
    with h5py.File(slides / "a_clam.h5") as f:
        expected = client.predict([f["features"][()]])[0]
    np.testing.assert_allclose([float(table[0][f"prob_{c}"]) for c in CLASSES], expected.probabilities, atol=1e-5)
    assert table[0]["label"] == expected.label_name
    attention = np.load(att / "a_clam.npy")
    np.testing.assert_allclose(attention, expected.attention, atol=1e-6)
    assert sorted(p.name for p in att.iterdir()) == ["a_clam.npy", "b_stamp.npy", "e_one.npy"]

    # one line per bad file on stderr, one per bag on stdout, and the summary
    errors = [line for line in result.stderr.splitlines() if line.startswith(str(slides))]
    assert len(errors) == 2 and "c_wrong_dim.npy: features have dimension 18" in errors[0]
    assert "3 of 5 bags predicted (2 failed)" in result.stderr
    assert "a_clam: " in result.stdout and "top instances #" in result.stdout


def test_all_good_bags_exit_zero_and_quiet(artifacts, slides, tmp_path):
    for bad in ("c_wrong_dim.npy", "d_broken.h5"):
        (slides / bad).unlink()
    out = tmp_path / "preds.csv"
    result = run(artifacts["onnx"], slides / "a_clam.h5", slides / "e_one.npy", "--out", out, "-q", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["bag"] for r in rows(out)] == ["a_clam", "e_one"]
    assert result.stdout == ""


def test_torchscript_model_gives_the_same_csv(artifacts, slides, tmp_path):
    (slides / "d_broken.h5").unlink()
    onnx_out, pt_out = tmp_path / "onnx.csv", tmp_path / "pt.csv"
    run(artifacts["onnx"], slides, "--out", onnx_out, "-q", "--no-progress")
    run(artifacts["pt"], slides, "--out", pt_out, "-q", "--no-progress")
    for a, b in zip(rows(onnx_out), rows(pt_out)):
        assert (a["bag"], a["label"], a["error"]) == (b["bag"], b["label"], b["error"])
        for c in CLASSES:
            if a["error"] == "":
                assert float(a[f"prob_{c}"]) == pytest.approx(float(b[f"prob_{c}"]), abs=1e-5)


def test_missing_inputs_are_reported_and_the_rest_finish(artifacts, slides, tmp_path):
    out = tmp_path / "preds.csv"
    result = run(artifacts["onnx"], tmp_path / "nowhere.h5", slides / "e_one.npy", "--out", out, "--no-progress")
    assert result.exit_code == 1
    assert [(r["bag"], r["error"]) for r in rows(out)] == [("nowhere", "no such file or folder"), ("e_one", "")]


def test_usage_and_server_errors_are_one_line(artifacts, slides, tmp_path):
    result = run("http://127.0.0.1:1", slides)
    assert result.exit_code == 2 and "--model-name is needed" in result.output

    result = run("http://127.0.0.1:1", slides, "--model-name", "abmil", "--out", tmp_path / "p.csv")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Triton server at http://127.0.0.1:1 is not reachable")

    result = run(tmp_path / "missing.onnx", slides)
    assert result.exit_code == 1 and "missing.onnx: no such file" in result.stderr


def test_heatmaps_one_png_per_bag_grid_with_coords_strip_without(artifacts, slides, tmp_path):
    import matplotlib.image

    heatmaps = tmp_path / "heatmaps"
    result = run(artifacts["onnx"], slides, "--out", tmp_path / "p.csv", "--heatmaps", heatmaps, "--no-progress")
    assert result.exit_code == 1  # the two bad files fail; the good bags all get a heatmap
    assert sorted(p.name for p in heatmaps.iterdir()) == ["a_clam.png", "b_stamp.png", "e_one.png"]
    for name in ("a_clam.png", "b_stamp.png"):
        pixels = matplotlib.image.imread(heatmaps / name)[..., :3]
        hottest = np.array([0.993, 0.906, 0.144])  # viridis at 1.0: the most attended instance
        assert (np.abs(pixels - hottest).max(axis=-1) < 0.03).any(), name


def test_files_with_the_same_stem_get_distinct_names_in_every_output(artifacts, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "dir"
    folder.mkdir()
    bags = {"good.h5": rng.normal(size=(9, D)).astype(np.float32),
            "good.npy": rng.normal(size=(4, D)).astype(np.float32)}
    with h5py.File(folder / "good.h5", "w") as f:
        f["features"] = bags["good.h5"]
    np.save(folder / "good.npy", bags["good.npy"])
    out, att, png = tmp_path / "p.csv", tmp_path / "att", tmp_path / "png"
    result = run(artifacts["onnx"], folder / "good.h5", folder / "good.npy", "--out", out, "--attention-dir", att,
                 "--heatmaps", png, "--no-progress")
    assert result.exit_code == 0, result.output
    assert [(r["bag"], r["n_instances"]) for r in rows(out)] == [("good.h5", "9"), ("good.npy", "4")]
    assert sorted(p.name for p in att.iterdir()) == ["good.h5.npy", "good.npy.npy"]
    assert sorted(p.name for p in png.iterdir()) == ["good.h5.png", "good.npy.png"]
    client = MILClient.from_path(artifacts["onnx"])
    for name, features in bags.items():
        np.testing.assert_allclose(np.load(att / f"{name}.npy"), client.predict([features])[0].attention, atol=1e-6)


def test_same_file_name_in_two_folders_is_named_by_its_folder(artifacts, tmp_path):
    rng = np.random.default_rng(2)
    for site in ("site1", "site2"):
        (tmp_path / site).mkdir()
        np.save(tmp_path / site / "a.npy", rng.normal(size=(3, D)).astype(np.float32))
    out, att = tmp_path / "p.csv", tmp_path / "att"
    result = run(artifacts["onnx"], tmp_path / "site1", tmp_path / "site2", "--out", out, "--attention-dir", att,
                 "-q", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["bag"] for r in rows(out)] == ["site1__a.npy", "site2__a.npy"]
    assert sorted(p.name for p in att.iterdir()) == ["site1__a.npy.npy", "site2__a.npy.npy"]


def test_a_file_given_twice_is_predicted_once(artifacts, slides, tmp_path):
    out = tmp_path / "p.csv"
    one = slides / "e_one.npy"
    result = run(artifacts["onnx"], one, slides / ".." / "slides" / "e_one.npy", "--out", out, "-q", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["bag"] for r in rows(out)] == ["e_one"]
    assert f"{slides}/../slides/e_one.npy: given more than once; predicted once" in result.stderr
    assert "1 of 1 bags predicted" in result.stderr


def test_help_names_the_csv_columns_as_written():
    text = " ".join(CliRunner().invoke(main, ["predict", "--help"]).output.split())
    assert "columns bag, file, n_instances, then probability (binary model: of the positive class) or " \
        "prob_<class> per class (multi-class) or risk (survival model), then label, error" in text
    assert "probabilities" not in text
    assert "A file given more than once (directly or through its folder) is predicted once" in text


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "file:///tmp/model"])
def test_url_with_an_unsupported_scheme_is_one_line(url, slides, tmp_path):
    result = run(url, slides, "--model-name", "m", "--out", tmp_path / "p.csv")
    assert result.exit_code == 2  # a traceback would have been exit code 1
    scheme = url.split(":")[0]
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: Invalid value for MODEL_OR_URL: {url}: unsupported URL scheme '{scheme}', "
        "expected http, https, grpc or grpcs"
    )
    assert "Traceback" not in result.output and not (tmp_path / "p.csv").exists()


GRAPH_MODELS = [name for name in list_models() if "adj" in get_model_class(name).extra_inputs]
#: the contract suite's feature width, whose exports the graph-model tests reuse
GRAPH_DIM = 12


def write_coords_only_slides(folder, seed: int = 3, dim: int = D) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three .h5 feature files (features + level-0 pixel coords of 512 px patches, no graph) of 40, 9 and 1
    instances; {bag name: (features (N, dim), coords (N, 2))}."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    bags = {}
    for name, n in (("s1", 40), ("s2", 9), ("s3", 1)):
        cells = rng.permutation(64)[:n]
        coords = np.stack([cells // 8, cells % 8], axis=1) * 512
        features = rng.normal(size=(n, dim)).astype(np.float32)
        with h5py.File(folder / f"{name}.h5", "w") as f:
            f["features"], f["coords"] = features, coords
        bags[name] = (features, coords)
    return bags


def check_graph_predictions(model, csv_path, bags) -> None:
    """Every row's score equals eager PyTorch on the bag alone with the 8-neighbour graph of its coords."""
    from milsdk.export.signature import DeploymentModule
    from milsdk.utils.graph import coords_graph

    module = DeploymentModule(model)
    got = rows(csv_path)
    assert sorted(row["bag"] for row in got) == sorted(bags)
    for row in got:
        assert row["error"] == "", row
        features, coords = bags[row["bag"]]
        edge_index, edge_weight = coords_graph(coords)
        arrays = {"features": features, "coords": coords.astype(np.float32), "edge_index": edge_index,
                  "edge_weight": edge_weight}
        inputs = {key: torch.from_numpy(value)[None] for key, value in arrays.items()}
        inputs["mask"] = torch.ones(1, len(features), dtype=torch.bool)
        with torch.no_grad():
            logits, _ = module(*[inputs[key] for key in module.input_names])
        if model_info(model).output_activation == "risk":
            assert float(row["risk"]) == pytest.approx(float(logits[0, 0]), abs=1e-4)
        else:
            assert float(row["probability"]) == pytest.approx(float(torch.sigmoid(logits[0, 0])), abs=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_a_graph_model_predicts_feature_files_with_coords_only(tmp_path, fmt, name, registered_export):
    """The same .h5 files (features + pixel coords, no graph) serve every graph model: the client builds each
    bag's 8-neighbour graph from its coords; the scores equal eager PyTorch on that graph, each bag alone. The
    binary models and artifacts of the contract suite (its D = 12), exported once per session."""
    model, path = registered_export(name, 1, fmt, GRAPH_DIM)
    bags = write_coords_only_slides(tmp_path / "slides", dim=GRAPH_DIM)
    out = tmp_path / "preds.csv"
    result = run(path, tmp_path / "slides", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    check_graph_predictions(model, out, bags)
