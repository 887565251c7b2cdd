"""Trainer: learning, call styles, eval mode, best model, early stopping, schedulers, logging, the seed quick
start."""

import logging

import pytest
import torch
from tensordict import TensorDict
from torch.utils.data import DataLoader

from milsdk.data import SizeAwareBatchSampler, collate_fn
from milsdk.models import ABMIL
from milsdk.utils import AUROC, ConstantAnnealingScheduler, LinearAnnealingScheduler, Trainer, load_checkpoint


def make_bags(n, dim=4, shift=5.0, seed=0, min_size=4, max_size=16):
    """Bags of N(0, 1) instances; bag i is positive (i odd) iff one instance's feature 0 is shifted."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        size = int(torch.randint(min_size, max_size, (1,), generator=g))
        X = torch.randn(size, dim, generator=g)
        label = i % 2
        if label:
            X[int(torch.randint(0, size, (1,), generator=g)), 0] += shift
        bags.append(TensorDict({"X": X, "Y": torch.tensor(float(label))}, batch_size=[]))
    return bags


def loader(bags, batch_size=4, shuffle=False, seed=0):
    return DataLoader(
        bags,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )


def small_model(seed=0, dim=4):
    torch.manual_seed(seed)
    feat_ext = torch.nn.Sequential(
        torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU()
    )
    return ABMIL(in_shape=(dim,), feat_ext=feat_ext)


class RecordingLogger:
    def __init__(self, model=None):
        self.calls, self.snapshots, self.model = [], [], model

    def log(self, values):
        self.calls.append(dict(values))
        if self.model is not None and any(k.startswith("val/") for k in values):
            self.snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


class ScriptedMetric:
    """A duck-typed metric (update / compute / reset / to) whose validation value follows a script."""

    def __init__(self, val_values, loops_per_epoch=2):
        self.val_values, self.loops, self.computes, self.device = list(val_values), loops_per_epoch, 0, None

    def update(self, logits, Y):
        assert logits.dim() == 1 and logits.dtype == torch.float32  # raw logits

    def reset(self):
        pass

    def to(self, device):
        self.device = torch.device(device)
        return self

    def compute(self):
        self.computes += 1
        epoch, loop = divmod(self.computes - 1, self.loops)  # train, val (, test) every epoch
        return torch.tensor(self.val_values[epoch] if loop == 1 else 0.0)


# -- learning ------------------------------------------------------------------------------------------------
def test_learns_separable_task_auc_above_0_9():
    model = small_model(seed=0)
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=3e-3),
        obj_metric="auroc",
        disable_pbar=True,
        verbose=False,
    )
    history = trainer.train(
        4, loader(make_bags(96), shuffle=True), loader(make_bags(64, seed=1), batch_size=16)
    )
    assert len(history) == 4
    assert history[-1]["val/auroc"] > 0.9
    assert trainer.best_obj_metric == max(h["val/auroc"] for h in history)
    assert history[-1]["train/loss"] < history[0]["train/loss"]


@pytest.mark.parametrize(
    "call",
    [
        lambda t, dl: t.train(dl, epochs=2),
        lambda t, dl: t.train(2, dl),
        lambda t, dl: t.train(2, dl, dl, None),
        lambda t, dl: t.train(max_epochs=2, train_dataloader=dl, val_dataloader=dl),
        lambda t, dl: t.train(dl, max_epochs=2, test_dataloader=dl),
    ],
)
def test_train_accepts_seed_and_reference_call_styles(call):
    model = small_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), disable_pbar=True, verbose=False)
    history = call(trainer, loader(make_bags(8)))
    assert [h["epoch"] for h in history] == [1, 2]


def test_train_rejects_ambiguous_calls():
    model = small_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), disable_pbar=True, verbose=False)
    dl = loader(make_bags(4))
    for bad in (
        lambda: trainer.train(dl),
        lambda: trainer.train(2, dl, epochs=3),
        lambda: trainer.train(2),
        lambda: trainer.train(2, dl, epoch=1),
    ):
        with pytest.raises(TypeError):
            bad()


def test_unknown_objective_and_required_distribution_fail_clearly(monkeypatch):
    model = small_model()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        metrics_dict={"auroc": AUROC()},
        disable_pbar=True,
        verbose=False,
    )  # obj_metric defaults to 'accuracy'
    with pytest.raises(ValueError, match="obj_metric 'accuracy'.*auroc"):
        trainer.train(1, loader(make_bags(4)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), distributed=True)
    with pytest.raises(ValueError, match="obj_metric_mode"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), obj_metric_mode="best")


# -- modes, logging ------------------------------------------------------------------------------------------
class ModeRecorder(torch.nn.Module):
    """Identity feature extractor recording (training, grad enabled) at every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, X):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return X


def test_val_and_test_run_in_eval_mode_without_grad():
    recorder = ModeRecorder()
    model = ABMIL(in_shape=(4,), feat_ext=recorder)
    recorder.calls.clear()  # the constructor probed the feature size
    marks = []

    class Marker:
        def log(self, values):
            marks.append((next(iter(values)).split("/")[0], len(recorder.calls)))

    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.01), logger=Marker(), disable_pbar=True, verbose=False
    )
    trainer.train(
        1,
        loader(make_bags(8), batch_size=4),
        loader(make_bags(6), batch_size=2),
        loader(make_bags(3), batch_size=3),
    )
    assert [m for m, _ in marks] == ["train", "val", "test"]
    (_, n_train), (_, n_val), (_, n_test) = marks
    assert recorder.calls[:n_train] == [(True, True)] * 2
    assert recorder.calls[n_train:n_val] == [(False, False)] * 3
    assert recorder.calls[n_val:n_test] == [(False, False)] * 1


def test_logger_keys_history_and_metrics_device():
    model = small_model()
    logger = RecordingLogger()
    metric = ScriptedMetric([0.5, 0.6], loops_per_epoch=3)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        metrics_dict={"scripted": metric},
        obj_metric="scripted",
        logger=logger,
        disable_pbar=True,
        verbose=False,
    )
    dl = loader(make_bags(8))
    history = trainer.train(2, dl, dl, dl)
    assert metric.device == trainer.device
    assert len(logger.calls) == 6
    for mode in ("train", "val", "test"):
        assert {f"{mode}/loss", f"{mode}/BCEWithLogitsLoss", f"{mode}/scripted"} <= set(history[0])
    assert history[1]["val/scripted"] == pytest.approx(0.6)
    assert history[0]["train/loss"] == pytest.approx(history[0]["train/BCEWithLogitsLoss"])
    assert history[0] == {"epoch": 1, **logger.calls[0], **logger.calls[1], **logger.calls[2]}


def test_default_metrics_and_cuda_fallback(caplog):
    model = small_model()
    with caplog.at_level(logging.WARNING, logger="milsdk.utils.trainer"):
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01),
            device="cuda",
            disable_pbar=True,
            verbose=False,
        )
    if not torch.cuda.is_available():
        assert trainer.device.type == "cpu"
        assert "CUDA is not available" in caplog.text
    history = trainer.train(1, loader(make_bags(8)))
    assert {"val/accuracy", "val/auroc"} <= set(history[0])


# -- best model, early stopping ------------------------------------------------------------------------------
def test_early_stopping_when_val_cannot_improve():
    model = small_model()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        early_stop_patience=2,
        obj_metric="loss",
        obj_metric_mode="min",
        disable_pbar=True,
        verbose=False,
    )
    history = trainer.train(10, loader(make_bags(8)))
    assert len(history) == 3  # epoch 1 improves on +inf, then 2 epochs without improvement
    assert trainer.best_epoch == 1
    assert trainer.early_stop_count == 2


def test_best_model_restore_gives_back_best_epoch_weights_exactly(tmp_path):
    torch.manual_seed(0)
    model = ABMIL(in_shape=(4,))  # identity feature extractor: a checkpoint can rebuild it
    logger = RecordingLogger(model)
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        metrics_dict={"score": ScriptedMetric([0.5, 0.9, 0.7, 0.6, 0.95, 0.99])},
        obj_metric="score",
        early_stop_patience=2,
        logger=logger,
        checkpoint_path=tmp_path / "best.ckpt",
        disable_pbar=True,
        verbose=False,
    )
    history = trainer.train(6, loader(make_bags(8), shuffle=True))
    assert len(history) == 4 and trainer.best_epoch == 2 and trainer.best_obj_metric == pytest.approx(0.9)
    best = trainer.get_best_model_state_dict()
    assert best.keys() == model.state_dict().keys()
    for k, v in logger.snapshots[1].items():
        assert torch.equal(best[k], v), k
    assert not all(torch.equal(v, logger.snapshots[1][k]) for k, v in model.state_dict().items())
    restored = trainer.get_best_model()
    assert restored is model
    for k, v in model.state_dict().items():
        assert torch.equal(v, logger.snapshots[1][k]), k
    ckpt = load_checkpoint(tmp_path / "best.ckpt")
    assert ckpt.checkpoint_metadata["training"]["epoch"] == 2
    for k, v in ckpt.state_dict().items():
        assert torch.equal(v, best[k]), k


# -- schedulers, accumulation, precision ---------------------------------------------------------------------
def test_lr_scheduler_per_epoch_and_annealing_per_step():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    linear = LinearAnnealingScheduler(0.0, 1.0, n_steps=100)
    trainer = Trainer(
        model,
        optimizer,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        annealing_scheduler_dict={"BCEWithLogitsLoss": linear},
        disable_pbar=True,
        verbose=False,
    )
    history = trainer.train(3, loader(make_bags(8), batch_size=4))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert linear.step_count == 3 * 2
    assert history[0]["train/loss"] < history[0]["train/BCEWithLogitsLoss"]  # weighted by coef < 1


def test_zero_annealing_coefficient_leaves_weights_unchanged():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        annealing_scheduler_dict={"BCEWithLogitsLoss": ConstantAnnealingScheduler(0.0)},
        disable_pbar=True,
        verbose=False,
    )
    history = trainer.train(1, loader(make_bags(8)))
    assert history[0]["train/loss"] == 0.0 and history[0]["train/BCEWithLogitsLoss"] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_grad_accumulation_equals_larger_batch():
    bags = make_bags(8, min_size=6, max_size=7)  # equal sizes: no padding in either run
    runs = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        model = small_model(seed=3)
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            grad_accum_steps=accum,
            disable_pbar=True,
            verbose=False,
        )
        trainer.train(2, loader(bags, batch_size=batch_size))
        runs.append(model.state_dict())
    for other in runs[1:]:
        for k, v in runs[0].items():
            torch.testing.assert_close(other[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_trains(dtype):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        amp_dtype=dtype,
        disable_pbar=True,
        verbose=False,
    )
    history = trainer.train(2, loader(make_bags(16), shuffle=True))
    assert all(torch.isfinite(torch.tensor(v)) for v in history[-1].values())
    assert model.pool.fc1.weight.dtype == torch.float32
    assert not torch.equal(model.pool.fc1.weight, before["pool.fc1.weight"])
    assert (trainer.scaler is not None) == (dtype == torch.float16)  # float16 needs loss scaling


def test_size_aware_batch_sampler_gets_epochs():
    bags = make_bags(16)
    sampler = SizeAwareBatchSampler([b["X"].shape[0] for b in bags], max_instances=40)
    dl = DataLoader(bags, batch_sampler=sampler, collate_fn=collate_fn)
    model = small_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), disable_pbar=True, verbose=False)
    trainer.train(3, dl)
    assert sampler.epoch == 2


# -- the seed's quick start ----------------------------------------------------------------------------------
def test_seed_quick_start_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = make_bags(8, dim=2048, shift=3.0, min_size=3, max_size=8)

    # --- the quick start, with milsdk imports ---
    from milsdk.data import collate_fn
    from milsdk.models import ABMIL
    from milsdk.utils import Trainer

    dataloader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_fn)
    model = ABMIL(in_shape=(2048,), criterion=torch.nn.BCEWithLogitsLoss())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    trainer = Trainer(model, optimizer, device="cuda")
    trainer.train(dataloader, epochs=10)
    torch.save(model.state_dict(), "model.pth")
    # ---

    assert len(trainer.history) == 10
    reloaded = ABMIL(in_shape=(2048,))
    reloaded.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    batch = collate_fn(dataset[:2])
    model.eval()
    torch.testing.assert_close(
        reloaded(batch["X"], batch["mask"]),
        model(batch["X"].to(trainer.device), batch["mask"].to(trainer.device)).cpu(),
    )


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test: a run started as a shell's background job inherits SIGINT
    ignored, and Python then installs none."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_a_progress_bar_call_is_raised_after_it(python_ctrl_c):
    """Ctrl-C that lands in tqdm's constructor or close is held until the call is done, then raised: a bar
    interrupted half-made printed an ignored AttributeError traceback after the CLI's clean 'Interrupted' line."""
    import signal

    from milsdk.utils.trainer import _ctrl_c_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with _ctrl_c_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with _ctrl_c_deferred():
        pass  # no signal: nothing raised


def _stderr_of_an_interrupted_run(capsys, epochs: int, **trainer_options) -> str:
    """Train a small model with its bar shown until a KeyboardInterrupt leaves ``train``; stderr as the CLI would
    print after it (read while the exception, and so the epoch's frame, lives)."""
    model = small_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), obj_metric="loss", obj_metric_mode="min",
                      disable_pbar=False, verbose=False, **trainer_options)
    try:
        trainer.train(epochs, loader(make_bags(8)))
    except KeyboardInterrupt:
        return capsys.readouterr().err
    pytest.fail("the KeyboardInterrupt did not propagate")


def test_ctrl_c_in_the_bars_constructor_ends_its_line_before_it_propagates(python_ctrl_c, capsys, monkeypatch):
    """Ctrl-C that lands while an epoch's bar is being made is raised once the bar exists, inside the epoch's
    try: the bar's line is ended before the KeyboardInterrupt leaves. (Raised before that try, the bar stayed open
    and was closed at exit, after the CLI's "Interrupted" line: seen in a CI run of the Ctrl-C CLI test.)"""
    import signal

    import milsdk.utils.trainer as trainer_module

    made = []

    class SignalInConstructor(trainer_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            if len(made) == 2:  # the second bar of the run
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(trainer_module, "tqdm", SignalInConstructor)
    err = _stderr_of_an_interrupted_run(capsys, 3)
    assert len(made) == 2 and all(bar.disable for bar in made)  # closed (tqdm disables a bar it closes)
    assert made[1].desc in err and err.endswith("\n"), repr(err[-200:])  # the interrupted bar's line is ended


def test_ctrl_c_in_a_batch_ends_the_bars_line_before_it_propagates(capsys):
    """Ctrl-C while a batch runs (here: in the metric's update of the epoch's last batch) left the bar's line
    open until the bar was collected, and the CLI's 'Interrupted: ...' line was printed on the end of it."""

    class InterruptedMetric(ScriptedMetric):
        updates = 0

        def update(self, logits, Y):
            self.updates += 1
            if self.updates == 2:
                raise KeyboardInterrupt

    err = _stderr_of_an_interrupted_run(capsys, 1, metrics_dict={"m": InterruptedMetric([0.0])})
    assert "[Epoch 1] train" in err and "1/2" in err  # interrupted in the second batch
    assert err.endswith("\n"), repr(err[-200:])


def test_ctrl_c_while_the_bar_closes_is_held_until_its_line_is_ended(capsys, monkeypatch, python_ctrl_c):
    """A real SIGINT raised inside the bar's close (the window after an epoch's last batch, where tqdm's own
    iterator used to close the bar with Ctrl-C live): the line is ended first, then KeyboardInterrupt is raised."""
    import signal

    import milsdk.utils.trainer as trainer_module

    class SignalInClose(trainer_module.tqdm):
        def close(self):
            if not self.disable:
                signal.raise_signal(signal.SIGINT)
            super().close()

    monkeypatch.setattr(trainer_module, "tqdm", SignalInClose)
    err = _stderr_of_an_interrupted_run(capsys, 1)
    assert "[Epoch 1] train" in err and "2/2" in err
    assert err.endswith("\n"), repr(err[-200:])


def test_each_loader_is_iterated_once_per_epoch():
    """tqdm.auto's bar wrapped around a loader calls iter() on it in its constructor (for async iteration): one
    wasted DataLoader iterator per epoch and loop, i.e. worker processes started for nothing and a shuffle
    generator drawn from twice. The bar is now advanced by hand."""

    class CountingLoader:
        def __init__(self, inner):
            self.inner, self.iterations = inner, 0

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            self.iterations += 1
            return iter(self.inner)

    train, val = CountingLoader(loader(make_bags(8), shuffle=True)), CountingLoader(loader(make_bags(4, seed=1)))
    model = small_model()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), obj_metric="loss", obj_metric_mode="min",
            disable_pbar=False, verbose=False).train(3, train, val_dataloader=val)
    assert (train.iterations, val.iterations) == (3, 3)
