"""torchrun environment, process group, rank helpers and exact metric reduction.

One process per device. Under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK set) the
process group is NCCL on GPUs and gloo on CPUs; without it everything below
degrades to a single process and no collective is called.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Collectives that wait on rank 0 doing something long first (building the data, which may download
# and unpack for an hour) use their own group with this timeout, not --dist-timeout's.
PATIENT_TIMEOUT = timedelta(hours=24)
_patient_group = None


def setup(device: str, timeout_minutes: float = 10.0) -> tuple[DistEnv, torch.device]:
    """Read torchrun's environment, join the process group, pick this process's device.

    A collective that waits longer than `timeout_minutes` (a peer hung or died) fails, so
    every process ends within that time instead of waiting forever.
    """
    global _patient_group
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return DistEnv(), torch.device(device)
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    dev = torch.device(device)
    timeout = timedelta(minutes=timeout_minutes)
    if dev.type == "cuda":
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    _patient_group = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    return env, dev


def teardown() -> None:
    global _patient_group
    _patient_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(error: BaseException) -> bool:
    """Whether an exception is a collective that failed (a peer gone, hung past the timeout, unreachable):
    torch's distributed error types, an error raised inside torch.distributed / DDP, or the backends'
    messages (gloo and NCCL raise plain RuntimeErrors from C++)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    if not isinstance(error, RuntimeError):
        return False
    frame = error.__traceback__
    while frame is not None:
        path = frame.tb_frame.f_code.co_filename.replace(os.sep, "/")
        if "/torch/distributed/" in path or path.endswith("/torch/nn/parallel/distributed.py"):
            return True
        frame = frame.tb_next
    text = str(error).lower()
    return any(marker in text for marker in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                             "timeout", "pair closure", "broken pipe"))


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_object(env: DistEnv, obj, patient: bool = False):
    """Rank 0's value of `obj` on every rank (a decision made once, e.g. a run directory check).

    `patient`: the others may wait for hours (rank 0 downloading the data first)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_patient_group if patient else None)
    return box[0]


def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, and returned). Counts travel as float64 so sums stay exact."""
    if env.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(env: DistEnv, model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics).

    DDP syncs buffers before each forward, so after the last training step every rank
    holds statistics of its own last batch; evaluating with them would score a model
    that no checkpoint holds. Rank 0's are the ones saved.
    """
    if env.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class ShardSampler(Sampler):
    """Every index exactly once across ranks, without the padding of DistributedSampler.

    Rank r evaluates indices r, r + W, r + 2W, ...: shards differ by at most one
    sample, and the summed metrics count each sample once, whatever the world size.
    """

    def __init__(self, dataset_len: int, env: DistEnv):
        self.indices = range(env.rank, dataset_len, env.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _SeqSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm that also takes SpikingJelly's multi-step [T, N, C, ...] input."""

    step_mode = "m"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self._expected_dim + 1:
            return super().forward(x.flatten(0, 1)).view(x.shape)
        return super().forward(x)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm (SpikingJelly's multi-step ones included) by a SyncBatchNorm.

    Parameter and buffer names stay the same, so checkpoints are unaffected.
    """
    dims = {nn.BatchNorm1d: 3, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}
    for name, child in model.named_children():
        expected = next((d for cls, d in dims.items() if isinstance(child, cls)), None)
        if expected is None:
            convert_sync_batchnorm(child)
            continue
        sync = _SeqSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
        sync._expected_dim = expected
        sync.load_state_dict(child.state_dict())
        sync.train(child.training)
        setattr(model, name, sync)
    return model
