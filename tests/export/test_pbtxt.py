"""config.pbtxt read and written through Triton's own schema (tritonclient's model_config_pb2)."""

from __future__ import annotations

import pytest

from milsdk.errors import ArtifactError
from milsdk.export.pbtxt import model_config_schema, model_config_text, parse_model_config
from milsdk.export.triton import read_triton_config


def test_what_triton_accepts_is_read_into_its_model_config(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text(
        '# comment\nname: "m"  # trailing\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, '
        'dims: [ -1, 3 ] } ]\nparameters { key: "k" value: { string_value: "a \\"quoted\\" b" } }\n'
        'parameters { key: "j" value: { string_value: "2" } }\n'
        "dynamic_batching { max_queue_delay_microseconds: 100 }\n"
        "instance_group < count: 2 kind: KIND_GPU gpus: [0, 1] >\n"
        "optimization { graph: { level: 1 } }\n"
    )
    cfg = read_triton_config(path)
    mc = model_config_schema()
    assert cfg.name == "m" and cfg.max_batch_size == 4
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("x", mc.TYPE_FP32, [-1, 3])]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {"k": 'a "quoted" b', "j": "2"}
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.optimization.graph.level == 1
    assert [(g.count, g.kind, list(g.gpus)) for g in cfg.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_GPU, [0, 1])
    ]


@pytest.mark.parametrize(
    "text, line, field, reason",
    [
        ('name: "m"\nmax_batch_sise: 4', 2, "max_batch_sise", 'has no field named "max_batch_sise"'),
        ('name: "m"\ninput [ { name: "x" data_type: TYPE_FP33 dims: [1] } ]', 2, "data_type",
         'Enum type "inference.DataType" has no value named TYPE_FP33'),
        ('name: "m"\nmax_batch_size: "8"', 2, "max_batch_size", "Couldn't parse integer"),
        ('name: "m"\ninstance_group [ { count: 1 kind: KIND_TPU } ]', 2, "kind", "has no value named KIND_TPU"),
        ('name: "m"\ninput { name: "x" dims: [ -1, 1.5 ] }', 2, "dims", "Couldn't parse integer: 1.5"),
        ('name: "m"\ninput { name: "x"', 2, None, "Expected"),
    ],
)
def test_a_config_triton_would_refuse_names_file_line_and_field(text, line, field, reason):
    with pytest.raises(ArtifactError) as raised:
        parse_model_config(text, source="m/config.pbtxt")
    message = str(raised.value)
    where = f"m/config.pbtxt line {line}" + (f", field {field!r}" if field else "")
    assert message.startswith(where + ": ") and reason in message and "\n" not in message


def test_written_text_parses_back_to_the_same_message_after_its_comments():
    mc = model_config_schema()
    config = mc.ModelConfig(name="m", max_batch_size=8, backend="python")
    config.input.add(name="features", data_type=mc.TYPE_FP32, dims=[-1, 16])
    config.parameters["milsdk.json"].string_value = '{"a": "b\\n"}'
    text = model_config_text(config, ["first line", "two\nlines"])
    assert text.splitlines()[:3] == ["# first line", "# two", "# lines"]
    assert parse_model_config(text) == config
    with pytest.raises(ArtifactError, match="field 'name' is empty"):
        model_config_text(mc.ModelConfig())
