"""The ``milsdk`` command. Each subcommand lives in its own module, imported only when it runs, so that
``milsdk --help`` is instant and the client commands need no torch."""

from __future__ import annotations

import importlib
import importlib.util
import os

import click

from milsdk._version import __version__
from milsdk.errors import MILSDKError

# torch's OpenMP threads spin-wait between operators by default; on a machine shared with other jobs a spinning
# thread holds a core the other one needs. Measured on 2 cores with 4 busy processes (benchmarks/
# thread_contention.py -> results/thread_contention.md): demo-like training 2.74 s (worst 6.1 s) spinning vs
# 1.09 s (worst 1.31 s) passive; quiet, 0.18 vs 0.21 s, and a large eager forward the same. Every subcommand that
# runs torch imports it after this line, so the policy is set before its OpenMP runtime loads; a value in the
# environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# command name -> "module:attribute"
_COMMANDS = {
    "train": "milsdk.cli.train:train",
    "export": "milsdk.cli.export:export",
    "inspect": "milsdk.cli.inspect:inspect_artifact",
    "serve": "milsdk.cli.serve:serve",
    "predict": "milsdk.cli.predict:predict",
    "demo": "milsdk.cli.demo:demo",
    "convert": "milsdk.cli.convert:convert",
    "bench": "milsdk.cli.bench:bench",
}


# optional modules -> the extra that installs them
_EXTRA_OF_MODULE = {
    "torch": "train", "tensordict": "train", "onnx": "train", "onnxscript": "train",
    "onnxruntime": "client", "tritonclient": "client", "h5py": "client",
    "matplotlib": "viz", "sklearn": "demo",
}


class _LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use; errors become one line and exit code 1
    (130 after Ctrl-C)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        available = [n for n, t in _COMMANDS.items() if importlib.util.find_spec(t.split(":")[0]) is not None]
        return sorted(set(super().list_commands(ctx)) | set(available))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            module, attr = _COMMANDS[name].split(":")
            if importlib.util.find_spec(module) is None:
                return None
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MILSDKError as exc:
            code = getattr(exc, "exit_code", 1)
            click.echo(f"{'Interrupted' if code == 130 else 'Error'}: {exc}", err=True)
            ctx.exit(code)
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1; 130 is what shells and schedulers expect after a SIGINT
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except OSError as exc:
            # the machine's refusal (a full disk, permissions, a vanished file) where no milsdk error named it yet:
            # one line with the file and the system's reason, not a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(1)
        except ModuleNotFoundError as exc:
            # the light client installs no torch: name what is missing and the extra that brings it
            extra = _EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            command = ctx.invoked_subcommand or "this command"
            click.echo(f'Error: milsdk {command} needs {exc.name}, which is not installed: '
                       f'pip install "milsdk[{extra}]"', err=True)
            ctx.exit(1)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="milsdk")
def main() -> None:
    """milsdk: train Multiple Instance Learning models, export them (ONNX / TorchScript), serve and call them.

    \b
    Example, the whole path on the built-in demo dataset:
      milsdk demo
    or step by step:
      milsdk train --demo --out abmil.ckpt
      milsdk export abmil.ckpt --format all --triton model_repository
      milsdk predict exports/abmil/model.onnx slides/*.h5 --out preds.csv
    """
