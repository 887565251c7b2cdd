"""milsdk.errors.first_line: the one line of a third-party exception that a milsdk error message quotes."""

import pytest

from milsdk.errors import first_line


def test_a_multi_line_message_gives_its_first_line_stripped():
    exc = RuntimeError("  [ONNXRuntimeError] : 1 : FAIL : Load model failed  \nStacktrace:\n  frame 0\n")
    assert first_line(exc) == "[ONNXRuntimeError] : 1 : FAIL : Load model failed"
    assert first_line(exc, with_type=True) == "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : Load model failed"


@pytest.mark.parametrize("message", ["", "  \n\t\n"], ids=["empty", "blank"])
def test_an_empty_or_blank_message_gives_the_type_name_alone(message):
    assert first_line(OSError(message)) == "OSError"
    assert first_line(OSError(message), with_type=True) == "OSError"  # not "OSError: OSError"
    assert first_line(ConnectionRefusedError()) == "ConnectionRefusedError"


def test_leading_blank_lines_are_skipped():
    exc = ValueError("\n\n   \n  Unsupported model IR version: 11  \nmax supported: 10")
    assert first_line(exc) == "Unsupported model IR version: 11"
    assert first_line(exc, with_type=True) == "ValueError: Unsupported model IR version: 11"


def test_the_type_name_says_what_a_bare_message_does_not():
    assert first_line(KeyError("features")) == "'features'"
    assert first_line(KeyError("features"), with_type=True) == "KeyError: 'features'"


def test_the_serving_backends_name_is_the_same_function():
    # milsdk.serving.backends.onnxruntime imports it from there
    from milsdk.serving.backends import first_line as serving_first_line

    assert serving_first_line is first_line
