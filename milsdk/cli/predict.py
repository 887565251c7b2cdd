"""``milsdk predict``: bag predictions and attention for feature files, from an exported model or a Triton server.

A thin layer over :class:`milsdk.serving.MILClient` (no torch is imported for .onnx files or servers).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np

from milsdk.errors import BagError

#: CSV columns before and after the probability columns (one per class, see --out's help).
_LEADING_COLUMNS = ("bag", "file", "n_instances")
_TRAILING_COLUMNS = ("label", "error")


@click.command("predict")
@click.argument("model_or_url")
# readable=False: an unreadable file gets its own CSV row with the error while the others finish (click's own
# check would stop the whole command)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(readable=False, path_type=Path))
@click.option("--model-name", help="Model name on the Triton server (needed when MODEL_OR_URL is a URL).")
@click.option(
    "--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True,
    help="Triton protocol for a URL without scheme (host:port); grpc://host:port also selects gRPC.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("preds.csv"), show_default=True,
    help="CSV with one row per bag and the columns bag, file, n_instances, then probability (binary model: of "
    "the positive class) or prob_<class> per class (multi-class) or risk (survival model), then label, error. n_instances is empty for a "
    "file that could not be read.",
)
@click.option(
    "--attention-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Write each bag's attention as DIR/<bag>.npy, float32 (N,), in the order of the file's instances "
    "(<bag>: see 'Bag names' below).",
)
@click.option(
    "--heatmaps", type=click.Path(file_okay=False, path_type=Path),
    help="Write each bag's attention heatmap as DIR/<bag>.png: on the patch grid when the file has coords, "
    "else a CT-style strip (needs matplotlib: pip install \"milsdk[viz]\").",
)
@click.option("--max-instances", type=click.IntRange(1), default=None,
              help="Padded instance slots per request [in-process 4096, Triton 32768].")
@click.option("--max-batch-size", type=click.IntRange(1), default=None, help="Most bags per request [16].")
@click.option("--shared-memory", is_flag=True, help="Triton on this host: pass tensors through shared memory.")
@click.option("--top-k", default=3, show_default=True, help="Top-attended instances listed per bag on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No line per bag on stdout (the CSV and summary only).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar (files) on stderr.")
def predict(
    model_or_url: str,
    inputs: tuple[Path, ...],
    model_name: str | None,
    protocol: str,
    out: Path,
    attention_dir: Path | None,
    heatmaps: Path | None,
    max_instances: int | None,
    max_batch_size: int | None,
    shared_memory: bool,
    top_k: int,
    quiet: bool,
    progress: bool,
) -> None:
    """Predict bags of instance features with an exported model (.onnx / .pt) or a model on a Triton server.

    INPUTS are .h5 files (datasets `features` and `coords`; STAMP's `feats`), .npy feature files (N, D), or
    folders of them. A file that cannot be read, or a bag the model cannot take, is reported on stderr and gets a
    CSV row with its error; the other bags finish.

    Bag names (the CSV's bag column, the attention and heatmap file names) are unique: a bag is named by its
    file stem (slides/a.h5 -> a); two files with the same stem are named by their file names (a.h5, a.npy); the
    same file name in two folders by the path below their common folder (site1__a.h5, site2__a.h5). A file
    given more than once (directly or through its folder) is predicted once, with a note on stderr.

    Exit code: 0 when every bag was predicted, 1 when any file or bag failed (or the server stayed unavailable).

    \b
    Examples:
      milsdk predict exports/abmil/model.onnx slides/ --out preds.csv --attention-dir attention/
      milsdk predict exports/abmil/model.onnx slides/ --heatmaps heatmaps/
      milsdk predict http://127.0.0.1:8000 slides/*.h5 --model-name abmil
      milsdk predict grpc://127.0.0.1:8001 slides/ --model-name abmil
    """
    from tqdm import tqdm

    from milsdk.serving import BagPrediction, MILClient
    from milsdk.serving.inputs import bag_names

    if heatmaps is not None:  # fail before any work when the PNG writer cannot run
        from milsdk.visualize import require_matplotlib

        require_matplotlib()

    budget = {k: v for k, v in (("max_instances", max_instances), ("max_batch_size", max_batch_size)) if v}
    if "://" in model_or_url:  # a URL of any scheme is checked as one, never looked up as a file
        from milsdk.errors import ServerURLError
        from milsdk.serving.backends.triton import parse_triton_url

        try:
            parse_triton_url(model_or_url, protocol)
        except ServerURLError as exc:
            raise click.BadParameter(str(exc), param_hint="MODEL_OR_URL") from None
    if "://" in model_or_url or (model_name is not None and not Path(model_or_url).exists()):
        if not model_name:
            raise click.UsageError("--model-name is needed with a Triton URL")
        client = MILClient.from_triton(
            model_or_url, model_name, protocol=protocol, shared_memory=shared_memory,
            **budget,
        )
    else:
        client = MILClient.from_path(model_or_url, **budget)

    files, failures = _expand(inputs)
    files = _once(files)
    named = [*files, *(source for source, _ in failures)]
    names = dict(zip(named, bag_names(named)))
    if attention_dir is not None:
        attention_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = client.info
    probability_columns = (
        ["risk"] if info.output_activation == "risk"
        else ["probability"] if info.n_classes == 1 else [f"prob_{name}" for name in _class_names(info)]
    )
    n_ok = n_failed = 0
    bar = tqdm(total=len(files), unit="bag", desc=f"predict {info.model_name}", disable=not progress)
    with client, bar, open(out, "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow([*_LEADING_COLUMNS, *probability_columns, *_TRAILING_COLUMNS])

        def failed(source: Path, error: str, n_instances: int | None = None, is_file: bool = True) -> None:
            nonlocal n_failed
            n_failed += 1
            bar.update(int(is_file))
            _write_line(f"{source}: {error}", err=True)
            size = "" if n_instances is None else n_instances  # unknown for a file that could not be read
            table.writerow([names[source], str(source), size, *[""] * len(probability_columns), "", error])

        for source, error in failures:  # paths that are not there at all come first
            failed(source, error, is_file=False)

        # Each prediction goes through these writers with the file it came from.
        def write_row(pred: BagPrediction, source: Path) -> None:
            probabilities = [f"{p:.6g}" for p in pred.probabilities]
            table.writerow([pred.name, str(source), pred.n_instances, *probabilities, pred.label_name, ""])

        prediction_writers: list[Callable[[BagPrediction, Path], None]] = [write_row]
        if attention_dir is not None:
            prediction_writers.append(lambda pred, _: np.save(attention_dir / f"{pred.name}.npy", pred.attention))
        coords: list = []  # each read bag's coords (or None), by input index, for the heatmaps
        if heatmaps is not None:
            from milsdk.visualize import save_bag_heatmap

            def write_heatmap(pred: BagPrediction, _: Path) -> None:
                save_bag_heatmap(heatmaps, pred.name, pred.attention, coords=coords[pred.index],
                                 title=f"{pred.name}: {_score(pred)}")

            prediction_writers.append(write_heatmap)
        if not quiet:
            prediction_writers.append(lambda pred, _: _write_line(_summary(pred, top_k)))

        sources: list[Path] = []
        sizes: list[int] = []  # each read bag's number of instances, by input index
        unreadable: list[tuple[int, Path, str]] = []  # (number of good bags read before it, file, error)
        for pred in client.predict_iter(_read(files, names, sources, sizes, unreadable, coords)):
            while unreadable and unreadable[0][0] <= pred.index:  # keep the rows in input order
                _, source, error = unreadable.pop(0)
                failed(source, error)
            source = sources[pred.index]
            if pred.error is not None:
                failed(source, pred.error, sizes[pred.index])
                continue
            n_ok += 1
            bar.update(1)
            for write in prediction_writers:
                write(pred, source)
        for _, source, error in unreadable:
            failed(source, error)

    stats = client.last_run
    click.echo(
        f"{n_ok} of {n_ok + n_failed} bags predicted ({n_failed} failed) in {stats.seconds:.1f} s, "
        f"{stats.requests} requests, {100 * stats.padded_fraction:.1f}% padded slots -> {out}",
        err=True,
    )
    if n_failed:
        click.get_current_context().exit(1)


def _expand(inputs: tuple[Path, ...]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Bag files of every input path; a path that does not exist or holds no bag file is a failure, not fatal."""
    from milsdk.serving.inputs import find_bag_files

    files, failures = [], []
    for path in inputs:
        try:
            files.extend(find_bag_files([path]))
        except BagError as exc:
            failures.append((path, str(exc).removeprefix(f"{path}: ")))
    return files, failures


def _once(files: list[Path]) -> list[Path]:
    """``files`` with each file kept at its first occurrence (compared as resolved paths); a note per repeat."""
    seen: set[Path] = set()
    kept = []
    for path in files:
        real = path.resolve()
        if real in seen:
            _write_line(f"{path}: given more than once; predicted once", err=True)
            continue
        seen.add(real)
        kept.append(path)
    return kept


def _read(
    files: list[Path],
    names: dict[Path, str],
    sources: list[Path],
    sizes: list[int],
    unreadable: list[tuple[int, Path, str]],
    coords: list,
) -> Iterator[dict]:
    """Bags read lazily from ``files`` and named by ``names`` (their paths go to ``sources``, their sizes to
    ``sizes``, their coords to ``coords``); files that cannot be read go to ``unreadable`` instead."""
    from milsdk.serving.inputs import read_bag

    for path in files:
        try:
            bag = read_bag(path)
        except BagError as exc:
            unreadable.append((len(sources), path, str(exc).removeprefix(f"{path}: ")))
            continue
        bag["name"] = names[path]
        sources.append(path)
        sizes.append(int(np.shape(bag["features"])[0]))
        coords.append(bag.get("coords"))
        yield bag


def _class_names(info) -> list[str]:
    names = list(info.class_names)
    return names if len(names) == info.n_classes else [str(c) for c in range(info.n_classes)]


def _score(pred) -> str:
    """The bag's label and probability (``tumor, p=0.912``), or a survival model's risk (``risk 1.234``)."""
    if pred.label is None:
        return f"risk {float(pred.probabilities[0]):.4g}"
    probability = float(pred.probabilities[pred.label] if pred.probabilities.size > 1 else pred.probabilities[0])
    return f"{pred.label_name}, p={probability:.3f}"


def _summary(pred, top_k: int) -> str:
    """One line: the bag's label, its probability, size and top-attended instances."""
    line = f"{pred.name}: {_score(pred)} ({pred.n_instances} instances)"
    if top_k > 0:
        top = np.argsort(-pred.attention, kind="stable")[:top_k]
        line += "; top instances " + ", ".join(f"#{i} ({pred.attention[i]:.3f})" for i in top)
    return line


def _write_line(text: str, err: bool = False) -> None:
    """A line to stdout / stderr that does not tear the progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr if err else sys.stdout)
