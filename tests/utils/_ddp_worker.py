"""Training script for tests/utils/test_trainer_distributed.py.

Run as ``torchrun --nproc_per_node=2 _ddp_worker.py OUT`` (each rank writes ``OUT/rank<r>.pt``), or call
``run(OUT)`` in a single process (writes ``OUT/rank0.pt``). The script is the same in both cases: the Trainer
detects torchrun.

Setup chosen so that data-parallel training equals single-process training up to float rounding: every
optimizer step sees all 16 training bags (single process: one batch of 16; K ranks: 16/K bags each, in
micro-batches of 4 with gradient accumulation), plain SGD, and ABMIL is padding-invariant, so the averaged
gradient is the same full-batch mean.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tensordict import TensorDict
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import milsdk.utils.trainer as trainer_module
from milsdk.data import SizeAwareBatchSampler, collate_fn
from milsdk.models import ABMIL
from milsdk.utils import Trainer


def make_bags(n: int, seed: int) -> list[TensorDict]:
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        size = int(torch.randint(3, 12, (1,), generator=g))
        X = torch.randn(size, 4, generator=g)
        if i % 2:
            X[0, 0] += 3.0
        bags.append(TensorDict({"X": X, "Y": torch.tensor(float(i % 2))}, batch_size=[]))
    return bags


def run(out: str | Path) -> None:
    out = Path(out)
    saves: list[str] = []
    original_save = trainer_module.save_checkpoint

    def counting_save(model, path, **metadata):
        saves.append(str(path))
        return original_save(model, path, **metadata)

    trainer_module.save_checkpoint = counting_save

    train_bags, val_bags = make_bags(16, seed=0), make_bags(13, seed=1)  # 13: ranks get 7 and 6 val bags
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = ABMIL(in_shape=(4,))
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        obj_metric="loss",
        obj_metric_mode="min",
        grad_accum_steps=(16 // world) // 4 if world > 1 else 1,
        checkpoint_path=out / "best.ckpt",
        disable_pbar=True,
        verbose=False,
    )
    train_dl = DataLoader(train_bags, batch_size=4 if world > 1 else 16, shuffle=False, collate_fn=collate_fn)
    history = trainer.train(
        3, train_dl, DataLoader(val_bags, batch_size=4, shuffle=False, collate_fn=collate_fn)
    )
    history = [dict(h) for h in history]

    state_dict = {k: v.clone() for k, v in model.state_dict().items()}

    # One more epoch validated on a single bag: rank 1 then has no validation batch at all.
    tiny = trainer.train(1, train_dl, DataLoader(val_bags[:1], batch_size=4, collate_fn=collate_fn))[-1]

    # A SizeAwareBatchSampler left to find the replicas itself (num_replicas=None).
    sampler = SizeAwareBatchSampler([b["X"].shape[0] for b in train_bags], max_instances=30, seed=0)
    sampler.set_epoch(1)
    seen = [i for batch in sampler for i in batch]

    rank = trainer.ctx.rank
    gc.collect()
    ddp_alive_after_train = any(type(o) is DistributedDataParallel for o in gc.get_objects())
    torch.save(
        {
            "rank": rank,
            "world_size": trainer.ctx.world_size,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "history": history,
            "state_dict": state_dict,
            "tiny": tiny,
            "saves": saves,
            "sampler_bags": seen,
            "sampler_batches": len(sampler),
            "ddp_alive_after_train": ddp_alive_after_train,
        },
        out / f"rank{rank}.pt",
    )
    if dist.is_initialized():
        # the end of PyTorch's DDP tutorial, rather than trainer.close(): the Trainer must not deadlock either way
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1])
