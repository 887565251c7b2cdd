import pytest

from milsdk.contract import FEATURES, MASK, METADATA_KEY, ModelInfo
from milsdk.errors import ArtifactError


def test_model_info_json_round_trip():
    info = ModelInfo(model_name="ABMIL", feature_dim=1024, n_classes=3, output_activation="softmax",
                     class_names=["a", "b", "c"], inputs=[FEATURES, MASK, "coords"])
    back = ModelInfo.from_json(info.to_json())
    assert back == info and back.extra_inputs == ["coords"]
    assert METADATA_KEY == "milsdk.json"


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "not valid JSON"), ("[1]", "not a JSON object"), ('{"model_name": "A"}', "lacks"),
     ('{"model_name": "A", "feature_dim": 4, "output_activation": "relu"}', "unknown output_activation")],
)
def test_model_info_rejects_bad_metadata(text, message):
    with pytest.raises(ArtifactError, match=message):
        ModelInfo.from_json(text, source="m.onnx")
