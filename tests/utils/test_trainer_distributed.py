"""The Trainer under torchrun: 2 CPU processes with gloo, compared with a single-process run of the same
script.

Why the two runs agree: every optimizer step sees all 16 training bags (one batch of 16 in one process; 8 bags
per rank in 2 micro-batches of 4 with gradient accumulation under DDP), the optimizer is plain SGD, and ABMIL
is padding-invariant, so the gradient is the same full-batch mean up to float summation order. Validation is
split across ranks without repetition (7 + 6 of 13 bags) and predictions are gathered, so the metrics are
those of the whole set.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

from milsdk.utils import load_checkpoint
from milsdk.utils.distributed import EvalShardSampler, torchrun_command

WORKER = Path(__file__).with_name("_ddp_worker.py")
sys.path.insert(0, str(WORKER.parent))
import _ddp_worker


@pytest.fixture(scope="module")
def runs(tmp_path_factory, process_tree_runner):
    ddp_dir = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    env.pop("WORLD_SIZE", None)
    done = process_tree_runner(torchrun_command(2, [str(WORKER), str(ddp_dir)]), timeout=180, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    single_dir = tmp_path_factory.mktemp("single")
    _ddp_worker.run(single_dir)
    load = lambda p: torch.load(p, weights_only=False)
    return ddp_dir, [load(ddp_dir / f"rank{r}.pt") for r in (0, 1)], load(single_dir / "rank0.pt")


def test_ranks_joined_one_gloo_group(runs):
    _, ranks, single = runs
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert single["world_size"] == 1 and single["backend"] is None


def test_ranks_end_with_identical_weights_equal_to_single_process(runs):
    _, (r0, r1), single = runs
    for k, v in r0["state_dict"].items():
        assert torch.equal(v, r1["state_dict"][k]), k
        torch.testing.assert_close(v, single["state_dict"][k], rtol=1e-5, atol=1e-6)


def test_metrics_equal_single_process(runs):
    _, (r0, r1), single = runs
    assert r0["history"] == r1["history"]
    assert len(r0["history"]) == len(single["history"]) == 3
    for ddp_epoch, one_epoch in zip(r0["history"], single["history"]):
        assert ddp_epoch.keys() == one_epoch.keys()
        for key, value in one_epoch.items():
            assert ddp_epoch[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_only_rank_0_writes_the_checkpoint(runs):
    ddp_dir, (r0, r1), _ = runs
    assert len(r0["saves"]) >= 1 and r1["saves"] == []
    assert sorted(p.name for p in ddp_dir.iterdir() if not p.name.endswith(".pt")) == ["best.ckpt"]
    model = load_checkpoint(ddp_dir / "best.ckpt")
    assert (
        model.checkpoint_metadata["training"]["epoch"] == 3
    )  # val loss improved every epoch; not in epoch 4
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, r0["state_dict"][k])


def test_size_aware_sampler_found_its_replicas(runs):
    _, (r0, r1), single = runs
    assert r0["sampler_batches"] == r1["sampler_batches"]
    assert sorted(r0["sampler_bags"] + r1["sampler_bags"]) == list(range(16))
    assert sorted(single["sampler_bags"]) == list(range(16))


def test_eval_shard_sampler_splits_without_repeats():
    shards = [list(EvalShardSampler(13, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [5, 4, 4]
    assert sorted(i for shard in shards for i in shard) == list(range(13))


def test_rank_without_validation_batches(runs):
    # one validation bag: rank 1 gets none; loss and accuracy still reduce over both ranks, AUROC is undefined
    _, (r0, r1), single = runs
    for key in ("val/loss", "val/BCEWithLogitsLoss", "val/accuracy", "train/loss"):
        assert r0["tiny"][key] == r1["tiny"][key] == pytest.approx(single["tiny"][key], rel=1e-5), key
    assert r0["tiny"]["val/auroc"] != r0["tiny"]["val/auroc"]  # NaN


def test_no_ddp_wrapper_outlives_train(runs):
    # what makes the script's own destroy_process_group() safe: no DDP reducer is left to hold the group
    _, ranks, _ = runs
    assert [r["ddp_alive_after_train"] for r in ranks] == [False, False]
