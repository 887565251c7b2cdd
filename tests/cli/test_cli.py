"""The ``milsdk`` group: lazy commands, help, and one-line errors for missing optional dependencies."""

import subprocess
import sys
import textwrap

from click.testing import CliRunner

from milsdk.cli import main


def test_help_lists_every_command_with_an_example():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "export", "inspect", "predict", "serve", "train"):
        assert f"  {command} " in result.output
    assert "milsdk train --demo --out abmil.ckpt" in result.output


def test_training_command_without_torch_names_the_extra_to_install():
    # a light-client install has no torch: the command says what to install, in one line, exit code 1
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoTorch())
        from milsdk.cli import main
        main(["train", "--demo", "--out", "x.ckpt"])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == 'Error: milsdk train needs torch, which is not installed: pip install "milsdk[train]"'


def test_the_command_sets_a_passive_openmp_wait_policy_before_torch_loads_unless_one_is_given():
    import os

    code = ("import milsdk.cli, os, sys; assert 'torch' not in sys.modules; import torch; "
            "print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
