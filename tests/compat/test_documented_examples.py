"""The seed article's quick start and torchmil 1.0.2's documented examples, ported as a user would: the code is
quoted verbatim and run with ``torchmil`` replaced by ``milsdk`` and nothing else changed. Data the examples load
from disk or download (CAMELYON16 features, MNIST) is replaced by small files / arrays of the same form; each test
asserts what its example promises.

Sources: the quick start of the seed article ("torchmil入門", code blocks of its "コード例" section, the lines
joined there restored); the docstring examples of ``torchmil.datasets.ToyDataset``,
``torchmil.datasets.ShiftedMeanMILDataset``, ``torchmil.models.MILModelWrapper`` and
``torchmil.datasets.ProcessedMILDataset`` (custom ``read_file_fn``); the T2TLayer example of the reference API
inventory (section 3.2: 16 tokens with the defaults give (B, 36, 9 att_dim)).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch


def _port(code: str) -> str:
    """The example as a user ports it: every ``torchmil`` becomes ``milsdk``."""
    return textwrap.dedent(code).replace("torchmil", "milsdk")


def _run(code: str, **names) -> dict:
    """Run ported example code; returns its namespace (``names`` are what the example's page defined before)."""
    namespace = dict(names)
    exec(compile(_port(code), "<example>", "exec"), namespace)  # noqa: S102  (quoted example code, no input)
    return namespace


# ---- seed article: quick start -----------------------------------------------------------------------------

SEED_QUICK_START = """
    from torchmil.datasets import CAMELYON16MILDataset
    from torchmil.models import ABMIL
    from torchmil.utils import Trainer
    from torchmil.data import collate_fn
    from torch.utils.data import DataLoader

    # Load the Camelyon16 dataset
    dataset = CAMELYON16MILDataset(root='./data', features='UNI')
    dataloader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_fn)

    # Instantiate the ABMIL model and optimizer
    model = ABMIL(in_shape=(2048,), criterion=torch.nn.BCEWithLogitsLoss()) # each model has its own criterion
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    # Instantiate the Trainer
    trainer = Trainer(model, optimizer, device='cuda')

    # Train the model
    trainer.train(dataloader, epochs=10)

    # Save the model
    torch.save(model.state_dict(), 'model.pth')
"""


def _write_camelyon16(root: Path, n_bags: int = 8, dim: int = 2048, patch_size: int = 512) -> None:
    """A CAMELYON16 layout (``patches_512/{features/features_UNI,labels,coords,patch_labels}``, ``splits.csv``):
    train slides, half positive; a positive slide's tumour patches are shifted by +1 in every feature."""
    rng = np.random.default_rng(0)
    base = root / f"patches_{patch_size}"
    for folder in ("features/features_UNI", "labels", "coords", "patch_labels"):
        (base / folder).mkdir(parents=True)
    rows = ["bag_name,split"]
    for i in range(n_bags):
        name, label = f"slide_{i}", i % 2
        n = int(rng.integers(3, 7))
        inst = np.zeros(n, dtype=np.int64)
        if label:
            inst[: max(1, n // 2)] = 1
        features = rng.normal(size=(n, dim)).astype(np.float32) + inst[:, None]
        coords = np.stack([np.arange(n) // 3, np.arange(n) % 3], axis=1) * patch_size
        np.save(base / "features" / "features_UNI" / f"{name}.npy", features)
        np.save(base / "labels" / f"{name}.npy", np.array([label]))
        np.save(base / "coords" / f"{name}.npy", coords)
        np.save(base / "patch_labels" / f"{name}.npy", inst)
        rows.append(f"{name},train")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")


def test_seed_quick_start_trains_and_saves_a_loadable_model(tmp_path, monkeypatch):
    """The quick start promises: the dataset loads, the model trains 10 epochs (the loss falls), the weights are
    saved to model.pth. ``torch`` comes from the article's page (its snippet uses it without importing it)."""
    _write_camelyon16(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = _run(SEED_QUICK_START, torch=torch)
    history = ns["trainer"].history
    assert len(ns["dataset"]) == 8 and len(history) == 10
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    fresh = ns["ABMIL"](in_shape=(2048,))
    fresh.load_state_dict(state)  # strict: the saved weights are the model's
    batch = next(iter(torch.utils.data.DataLoader(ns["dataset"], batch_size=8, collate_fn=ns["collate_fn"])))
    fresh.eval()
    ns["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch["X"], batch["mask"]), ns["model"](batch["X"], batch["mask"]))


# ---- torchmil docstring examples ---------------------------------------------------------------------------

TOY_DATASET_EXAMPLE = """
    import torch
    from torchvision import datasets, transforms

    # Load MNIST dataset
    mnist_train = datasets.MNIST('data', train=True, download=True, transform=transforms.ToTensor())

    # Extract features and labels
    data = mnist_train.data.numpy().reshape(-1, 28*28) / 255
    labels = mnist_train.targets.numpy()

    # Define positive labels
    obj_labels = [1, 2] # Digits 1 and 2 are considered positive

    # Create MIL dataset
    toy_dataset = ToyDataset(data, labels, num_bags=1000, obj_labels=obj_labels, bag_size=10)

    # Retrieve a bag
    bag = toy_dataset[0]
    X, Y, y_inst = bag['X'], bag['Y'], bag['y_inst']
"""


def test_toy_dataset_example_builds_bags_with_the_documented_keys():
    """MNIST cannot be downloaded here: the example runs from its "Extract features" step on an MNIST-shaped
    array (2,000 images of 28 x 28 in [0, 255], labels 0-9); everything after that line is verbatim."""
    from milsdk.datasets import ToyDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2000, 28, 28))
    mnist_labels = rng.integers(0, 10, size=2000)
    code = TOY_DATASET_EXAMPLE.replace(
        "from torchvision import datasets, transforms", ""
    ).replace(
        "mnist_train = datasets.MNIST('data', train=True, download=True, transform=transforms.ToTensor())", ""
    ).replace("mnist_train.data.numpy()", "images").replace("mnist_train.targets.numpy()", "mnist_labels")
    ns = _run(code, ToyDataset=ToyDataset, images=images, mnist_labels=mnist_labels)
    X, Y, y_inst = ns["X"], ns["Y"], ns["y_inst"]
    assert len(ns["toy_dataset"]) == 1000
    assert X.shape == (10, 784) and X.dtype == torch.float32 and float(X.max()) <= 1.0
    assert y_inst.shape == (10,) and Y.ndim == 0
    # y_inst marks the instances whose digit is in obj_labels; a bag is positive exactly when one is.
    assert int(Y) == int(y_inst.max())
    positives = sum(int(ns["toy_dataset"][i]["Y"]) for i in range(1000))
    assert positives == 500  # int(num_bags * pos_class_prob) with the default 0.5


SHIFTED_MEAN_EXAMPLE = """
    from torchmil.datasets import ShiftedMeanMILDataset

    # Create dataset with 100 bags
    dataset = ShiftedMeanMILDataset(N=100, R=3, S_low=15, S_high=45, K=1, M=768,
                                     p_y1=0.5, Delta=1.0, seed=42)

    # Get a bag
    bag = dataset[0]
    X, Y, y_inst = bag['X'], bag['Y'], bag['y_inst']
    print(f"Bag shape: {X.shape}")
    print(f"Bag label: {Y}")
    print(f"Instance labels: {y_inst}")
"""


def test_shifted_mean_example_gives_the_documented_bag(capsys):
    ns = _run(SHIFTED_MEAN_EXAMPLE)
    X, Y, y_inst = ns["X"], ns["Y"], ns["y_inst"]
    assert len(ns["dataset"]) == 100
    assert 15 <= X.shape[0] <= 45 and X.shape[1] == 768 and y_inst.shape == (X.shape[0],)
    # A positive bag has one contiguous run of R = 3 shifted instances; a negative bag none.
    shifted = torch.nonzero(y_inst).flatten()
    if int(Y) == 1:
        assert shifted.tolist() == list(range(int(shifted[0]), int(shifted[0]) + 3))
    else:
        assert shifted.numel() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Bag shape: {X.shape}" and out[1] == f"Bag label: {Y}"
    assert _run(SHIFTED_MEAN_EXAMPLE)["X"].equal(X)  # seed=42: the same bag again


MIL_MODEL_WRAPPER_EXAMPLE = """
    model_A = ... # forward accepts arguments 'X', 'adj'
    model_B = ... # forward accepts arguments 'X''
    model_A_w = MILModelWrapper(model_A)
    model_B_w = MILModelWrapper(model_B)

    bag = TensorDict({'X': ..., 'adj': ..., ...})
    Y_pred_A = model_A_w(bag) # calls model_A.forward(X=bag['X'], adj=bag['adj'])
    Y_pred_B = model_B_w(bag) # calls model_B.forward(X=bag['X'])
"""


def test_mil_model_wrapper_example_routes_each_bag_key_to_the_model():
    """The example's ``...`` filled in: model_A a graph model (X, adj), model_B ABMIL (X only)."""
    from tensordict import TensorDict

    from milsdk.models import ABMIL, MILModelWrapper, PatchGCN

    torch.manual_seed(0)
    model_A, model_B = PatchGCN(in_shape=(6,), hidden_dim=8, att_dim=8).eval(), ABMIL(in_shape=(6,)).eval()
    X = torch.randn(1, 5, 6)
    adj = torch.rand(1, 5, 5)
    code = MIL_MODEL_WRAPPER_EXAMPLE.replace("model_A = ...", "model_A = given_A").replace(
        "model_B = ...", "model_B = given_B").replace("{'X': ..., 'adj': ..., ...}", "{'X': X, 'adj': adj}")
    with torch.no_grad():
        ns = _run(code, MILModelWrapper=MILModelWrapper, TensorDict=TensorDict, given_A=model_A,
                  given_B=model_B, X=X, adj=adj)
        assert torch.equal(ns["Y_pred_A"], model_A(X=X, adj=adj))
        assert torch.equal(ns["Y_pred_B"], model_B(X=X))


CUSTOM_READ_FILE_EXAMPLE = """
    def custom_read_file(file_path: str, key_type: str) -> np.ndarray:
        # Custom logic to read the file and return the data as a numpy array
        ...
"""


def test_processed_dataset_custom_read_file_example(tmp_path):
    """The documented hook: a ``read_file_fn(file_path, key_type)`` reads every file (here CSV text files)."""
    from milsdk.datasets import ProcessedMILDataset

    for key, array in (("features", np.arange(12.0).reshape(4, 3)), ("labels", np.array([1.0]))):
        (tmp_path / key).mkdir()
        np.savetxt(tmp_path / key / "bag0.csv", np.atleast_2d(array), delimiter=",")
    calls = []
    body = "calls.append(key_type)\n        return np.atleast_2d(np.loadtxt(file_path, delimiter=','))"
    ns = _run(CUSTOM_READ_FILE_EXAMPLE.replace("...", body), np=np, calls=calls)
    dataset = ProcessedMILDataset(features_path=str(tmp_path / "features"), labels_path=str(tmp_path / "labels"),
                                  bag_keys=["X", "Y"], file_ext=".csv", read_file_fn=ns["custom_read_file"])
    bag = dataset[0]
    assert torch.equal(bag["X"], torch.arange(12.0).reshape(4, 3).to(bag["X"].dtype))
    assert int(bag["Y"].reshape(-1)[0]) == 1 and {"features", "labels"} <= set(calls)


# ---- reference API inventory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("att_dim", [8, 512])
def test_t2t_layer_example_16_tokens_give_36_by_9_att_dim(att_dim):
    """Section 3.2: "16 tokens with defaults give (B, 36, 9·att)" (kernel 3, stride 1, padding 2 on a 4 x 4 map)."""
    ns = _run("from torchmil.nn import T2TLayer\nlayer = T2TLayer(in_dim=5, att_dim=%d)" % att_dim)
    with torch.no_grad():
        y = ns["layer"](torch.randn(2, 16, 5))
    assert y.shape == (2, 36, 9 * att_dim)
