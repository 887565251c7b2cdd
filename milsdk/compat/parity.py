"""Walk torchmil's public modules and names and compare each with milsdk at the same dotted path.

A public module is every ``torchmil.X[.Y]`` module of the installed package; its public names are, for a
package (``__init__``), every non-underscore non-module name it binds (its re-exports), and for a plain module
the classes and functions it defines. ``torchmil.X.Y.name`` is looked up as ``milsdk.X.Y.name``.

Signatures are compared for functions and for classes' ``__init__`` and ``forward``: the reference's parameters
must come first, with the same names, order and kinds-compatible defaults; milsdk may add parameters after
them (with a default, keyword-only or ``*args`` / ``**kwargs``). Two relaxations, both keeping every
reference call valid: a parameter the reference requires may have a default in milsdk, and sequence defaults
compare by content (milsdk writes the reference's mutable list defaults as tuples). Module defaults compare by
type and repr, function defaults by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import types
from typing import Any

__all__ = ["ParityReport", "compare_signatures", "public_names", "run_parity", "torchmil_modules"]

_EMPTY = inspect.Parameter.empty
_EXTRA_OK = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def torchmil_modules() -> list[str]:
    """Every module of the installed torchmil package, sorted (``torchmil.data``, ``torchmil.data.collate``...)."""
    import torchmil

    root = list(torchmil.__path__)[0]
    mods = []
    for folder, _dirs, files in os.walk(root):
        if "__pycache__" in folder:
            continue
        rel = os.path.relpath(folder, root)
        pkg = "torchmil" if rel == "." else "torchmil." + rel.replace(os.sep, ".")
        for f in files:
            if f.endswith(".py"):
                mods.append(pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}")
    return sorted(m for m in mods if m != "torchmil")


def public_names(module: types.ModuleType) -> list[str]:
    """The public names of a torchmil module (see the module docstring)."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    is_pkg = hasattr(module, "__path__")
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        defined_here = getattr(value, "__module__", None) == module.__name__
        if is_pkg or (defined_here and (inspect.isclass(value) or inspect.isfunction(value))):
            names.append(name)
    return names


def _same_default(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_default(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.nn.Module) or isinstance(b, torch.nn.Module):
        return type(a).__name__ == type(b).__name__ and repr(a) == repr(b)
    if inspect.isfunction(a) and inspect.isfunction(b):
        return a.__name__ == b.__name__
    try:
        return bool(a == b)
    except Exception:  # arrays and other objects without a plain ==
        return repr(a) == repr(b)


def compare_signatures(ref: Any, ours: Any) -> list[str]:
    """Why ``ours`` cannot take every call ``ref`` takes ([] = compatible)."""
    try:
        pr = list(inspect.signature(ref).parameters.values())
        po = list(inspect.signature(ours).parameters.values())
    except (TypeError, ValueError):
        return []
    problems = []
    for i, r in enumerate(pr):
        if i >= len(po):
            problems.append(f"lacks parameter {r.name!r}")
            continue
        o = po[i]
        if o.name != r.name:
            problems.append(f"parameter {i} is {o.name!r}, torchmil's is {r.name!r}")
        elif o.kind != r.kind and not (
            r.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and o.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            problems.append(f"parameter {r.name!r} is {o.kind.description}, torchmil's is {r.kind.description}")
        elif r.default is not _EMPTY and (o.default is _EMPTY or not _same_default(r.default, o.default)):
            problems.append(f"default of {r.name!r} is {o.default!r}, torchmil's is {r.default!r}")
    for o in po[len(pr):]:
        if o.kind not in _EXTRA_OK and o.default is _EMPTY:
            problems.append(f"extra required parameter {o.name!r}")
    return problems


def _signature_targets(ref: Any, ours: Any) -> list[tuple[str, Any, Any]]:
    if inspect.isclass(ref):
        if not inspect.isclass(ours):
            return [("", ref.__init__, ours)]
        out = [(".__init__", ref.__init__, ours.__init__)]
        if callable(getattr(ref, "forward", None)) and callable(getattr(ours, "forward", None)):
            out.append((".forward", ref.forward, ours.forward))
        return out
    if callable(ref):
        return [("", ref, ours)]
    return []


@dataclasses.dataclass
class ParityReport:
    """The outcome of one walk: every dotted path checked, the absent ones and the differing signatures."""

    modules: list[str] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)  # milsdk dotted paths of torchmil's names
    absent: list[str] = dataclasses.field(default_factory=list)  # modules and names not found in milsdk
    signatures: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # canonical path -> problems

    @property
    def present(self) -> int:
        return len(self.names) - sum(1 for n in self.names if n in set(self.absent))


def run_parity() -> ParityReport:
    """Walk torchmil 1.0.2 (installed) against milsdk; see the module docstring."""
    report = ParityReport()
    seen: set[str] = set()
    for mod_name in torchmil_modules():
        ref_mod = importlib.import_module(mod_name)
        our_name = "milsdk" + mod_name[len("torchmil"):]
        report.modules.append(our_name)
        try:
            our_mod = importlib.import_module(our_name)
        except ImportError:
            our_mod = None
            report.absent.append(our_name)
        for name in public_names(ref_mod):
            path = f"{our_name}.{name}"
            report.names.append(path)
            if our_mod is None or not hasattr(our_mod, name):
                report.absent.append(path)
                continue
            ref, ours = getattr(ref_mod, name), getattr(our_mod, name)
            # One signature entry per reference object, named after where torchmil defines it.
            where = getattr(ref, "__module__", mod_name) or mod_name
            canonical = "milsdk" + where[len("torchmil"):] + "." + getattr(ref, "__qualname__", name)
            if not where.startswith("torchmil") or canonical in seen:
                continue
            seen.add(canonical)
            for suffix, r, o in _signature_targets(ref, ours):
                problems = compare_signatures(r, o)
                if problems:
                    report.signatures[canonical + suffix] = problems
    return report
