import pytest
import torch

from milsdk.errors import BagError, ModelConfigError
from milsdk.models import ABMIL, MILModel, MILModelWrapper, create_model, get_model_class, list_models


def test_registry_create_by_name_case_insensitive_and_list():
    model = create_model("abmil", in_shape=(4,), att_dim=16)
    assert isinstance(model, ABMIL) and model.config["att_dim"] == 16
    assert "ABMIL" in list_models() and list_models("AB*") == ["ABMIL"]
    assert get_model_class("ABMIL") is ABMIL


def test_registry_unknown_name_and_bad_argument():
    with pytest.raises(ModelConfigError, match="unknown model 'NoSuchMIL'"):
        create_model("NoSuchMIL")
    with pytest.raises(ModelConfigError, match="cannot build ABMIL"):
        create_model("ABMIL", not_an_argument=1)


def test_config_records_defaults_positional_args_and_only_outermost_subclass():
    class Wider(ABMIL):
        def __init__(self, width: int = 3, **kwargs):
            super().__init__(in_shape=(width,), **kwargs)

    model = ABMIL((6,), 32)
    assert model.config["in_shape"] == (6,) and model.config["att_dim"] == 32 and model.config["gated"] is False
    wide = Wider(width=5, gated=True)
    assert wide.config == {"width": 5, "gated": True}


def test_wrapper_routes_keys_by_argument_name_and_checks_bag():
    model = ABMIL(in_shape=(3,)).eval()
    wrapper = MILModelWrapper(model)
    bag = {"X": torch.randn(2, 4, 3), "mask": torch.ones(2, 4), "Y": torch.tensor([0, 1]), "coords": torch.zeros(2, 4, 2)}
    assert torch.equal(wrapper(bag), model(bag["X"], bag["mask"]))
    logits, losses = wrapper.compute_loss(bag)
    assert "BCEWithLogitsLoss" in losses
    assert wrapper.predict(bag)[1].shape == (2, 4)
    with pytest.raises(BagError, match="0 instances"):
        wrapper({"X": torch.zeros(1, 0, 3)})
    with pytest.raises(BagError, match="no 'X'"):
        wrapper({"Y": torch.zeros(1)})


def test_wrapper_requires_declared_extra_inputs():
    class NeedsCoords(MILModel):
        extra_inputs = ("coords",)

        def __init__(self):
            super().__init__()
            self.criterion = torch.nn.BCEWithLogitsLoss()

        def forward(self, X, mask=None, coords=None, return_att=False):
            return X.sum((1, 2)) + coords.sum((1, 2))

    wrapper = MILModelWrapper(NeedsCoords())
    with pytest.raises(BagError, match="needs bag key 'coords'"):
        wrapper({"X": torch.ones(1, 2, 3)})
    assert wrapper({"X": torch.ones(1, 2, 3), "coords": torch.ones(1, 2, 2)}).item() == 10.0
