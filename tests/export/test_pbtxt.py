"""The protobuf text-format reader behind read_triton_config."""

from __future__ import annotations

import pytest

from milsdk.errors import ArtifactError
from milsdk.export.pbtxt import parse_pbtxt
from milsdk.export.triton import read_triton_config


def test_triton_config_text_format(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text(
        '# comment\nname: "m"  # trailing\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, '
        'dims: [ -1, 3 ] } ]\nparameters { key: "k" value: { string_value: "a \\"quoted\\" b" } }\n'
        'parameters { key: "j" value: { string_value: "2" } }\n'
        "dynamic_batching { max_queue_delay_microseconds: 100 }\n"
        "optimization { graph: { level: 1 } }\n"
    )
    cfg = read_triton_config(path)
    assert cfg["name"] == ["m"] and cfg["max_batch_size"] == [4]
    assert cfg["input"] == [{"name": ["x"], "data_type": ["TYPE_FP32"], "dims": [-1, 3]}]
    assert [p["value"][0]["string_value"][0] for p in cfg["parameters"]] == ['a "quoted" b', "2"]
    assert cfg["dynamic_batching"] == [{"max_queue_delay_microseconds": [100]}]
    assert cfg["optimization"][0]["graph"] == [{"level": [1]}]


def test_angle_brackets_lists_of_messages_and_booleans():
    cfg = parse_pbtxt("a < b: true c: false > l: [ { x: 1 }, { x: 2 } ] f: 1.5e3 e: KIND_GPU")
    assert cfg == {
        "a": [{"b": [True], "c": [False]}],
        "l": [{"x": [1]}, {"x": [2]}],
        "f": [1500.0],
        "e": ["KIND_GPU"],
    }


@pytest.mark.parametrize(
    "text, message", [("name: 'x'", "cannot parse"), ("a { b: 1", "ends unexpectedly"), ("}", "expected a field name")]
)
def test_errors_name_the_source(text, message):
    with pytest.raises(ArtifactError, match=f"cfg.pbtxt: .*{message}"):
        parse_pbtxt(text, source="cfg.pbtxt")
