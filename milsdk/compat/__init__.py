"""Compatibility with torchmil 1.0.2: the list of deliberate differences (``torchmil_differences``) and the
parity walk (``parity``) that the test suite and ``python -m milsdk.compat.parity_report`` run."""
