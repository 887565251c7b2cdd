"""CAMELYON16MILDataset reads the benchmark layout with its defaults (UNI features, 512 px patches)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import DataLoader

from milsdk.data import collate_fn
from milsdk.datasets import CAMELYON16MILDataset, WSIBenchmarkDataset
from milsdk.models import list_models
from milsdk.utils import Trainer


def test_defaults_read_the_layout(tmp_path, layout):
    layout.write_wsi_benchmark(tmp_path)
    ds = CAMELYON16MILDataset(tmp_path)
    assert isinstance(ds, WSIBenchmarkDataset)
    assert ds.get_bag_names() == ["s1", "s2"] and ds[0]["X"].shape == (6, 8)


def test_constructor_mirrors_the_reference():
    params = inspect.signature(CAMELYON16MILDataset).parameters
    assert list(params)[:5] == ["root", "features", "partition", "bag_keys", "patch_size"]
    assert params["features"].default == "UNI" and params["patch_size"].default == 512
    assert params["load_at_init"].default is True and params["verbose"].default is False


@pytest.mark.parametrize("name", list_models())
def test_the_quick_start_runs_with_every_registered_model_in_place_of_abmil(tmp_path, layout, name):
    """The README's (and the reference's) quick start, word for word but for the model's name, the root and the
    feature size of the files written here."""
    import milsdk.models

    layout.write_wsi_benchmark(tmp_path)
    dataset = CAMELYON16MILDataset(root=tmp_path, features="UNI")
    dataloader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_fn)
    model = getattr(milsdk.models, name)(in_shape=(8,), criterion=torch.nn.BCEWithLogitsLoss())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    trainer = Trainer(model, optimizer, device="cuda")  # falls back to the CPU when CUDA is absent
    trainer.train(dataloader, epochs=2)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    model.eval()
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_fn)))
    extra = {key: batch[key] for key in model.extra_inputs}  # coords, or the (sparse) adj of graph models
    with torch.no_grad():
        logits = model(batch["X"].float(), mask=batch["mask"], **extra)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
