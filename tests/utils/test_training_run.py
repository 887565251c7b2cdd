import numpy as np
import pytest
import torch

import milsdk
from milsdk.datasets import DigitsMILDataset
from milsdk.errors import DatasetError
from milsdk.utils.training_run import evaluate_model, parse_model_args, split_dataset, train_model


def test_demo_training_saves_reloadable_checkpoint_with_auc_well_above_chance(tmp_path):
    train = DigitsMILDataset(num_bags=160, train=True, seed=0)
    test = DigitsMILDataset(num_bags=80, train=False, seed=1)
    run = train_model(train, test_set=test, epochs=6, lr=2e-3, batch_size=4, model_config={"att_dim": 32},
                      checkpoint_path=tmp_path / "m.ckpt", checkpoint_metadata={"class_names": ["neg", "pos"]},
                      progress=False)
    assert run.test_metrics["auroc"] > 0.85
    loaded = milsdk.load_checkpoint(run.checkpoint)
    assert loaded.checkpoint_metadata["class_names"] == ["neg", "pos"]
    assert loaded.checkpoint_metadata["training"]["best_epoch"] == run.best_epoch
    assert evaluate_model(loaded, test) == run.test_metrics


def test_split_dataset_is_disjoint_and_reproducible():
    data = list(range(10))
    train, val = split_dataset(data, 0.3, seed=3)
    assert len(val) == 3 and sorted(list(train) + list(val)) == data
    assert list(split_dataset(data, 0.3, seed=3)[1]) == list(val)
    assert split_dataset(data, 0.0)[1] is None
    with pytest.raises(DatasetError, match="too few"):
        split_dataset([1], 0.5)


def test_parse_model_args_types():
    assert parse_model_args(["att_dim=64", "gated=true", "in_shape=1024", "att_act=relu", "in_shape=[3,4]"]) == {
        "att_dim": 64, "gated": True, "in_shape": (3, 4), "att_act": "relu"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_args(["oops"])


def test_in_shape_taken_from_the_first_bag():
    bags = [{"X": torch.from_numpy(np.random.default_rng(i).normal(size=(5, 7)).astype(np.float32)),
             "Y": torch.tensor(i % 2)} for i in range(8)]
    run = train_model(bags, epochs=1, progress=False, val_fraction=0.25)
    assert run.model.in_shape == (7,)
