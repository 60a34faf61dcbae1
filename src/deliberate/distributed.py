"""torchrun / DDP in one place; without torchrun every helper is the no-op of a world of one.

`torchrun --nproc_per_node=K ...` starts K processes and sets RANK, WORLD_SIZE and LOCAL_RANK (plus
MASTER_ADDR / MASTER_PORT); `init` joins them into one process group, NCCL for CUDA and gloo for
the CPU. This is the only module that touches `torch.distributed` (STYLE 8). docs/distributed.md
says what is global and what is per rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from deliberate.errors import DeliberateError

_device = torch.device("cpu")  # where collectives' tensors live: the rank's GPU under NCCL


def init(device: str = "cpu") -> None:
    """Join torchrun's process group (once); a process not started by torchrun stays alone."""
    global _device
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return
    if device == "cuda":
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:
            raise DeliberateError(
                f"LOCAL_RANK {local} but {gpus} GPU(s) visible; give torchrun "
                "--nproc_per_node at most the GPUs per node, or set device: cpu"
            )
        torch.cuda.set_device(local)  # so that "cuda" means this rank's GPU everywhere below
        _device = torch.device("cuda", local)
    # An hour, not NCCL's 10 minutes: the others wait while rank 0 alone repairs a large pool
    # on resume or writes the report; a worker that dies makes torchrun stop the rest anyway.
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))


def shutdown() -> None:
    """Leave the process group (at the end of a command), so that the process exits cleanly."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the one rank that writes shared files (manifest, checkpoints, metrics)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: create a file, then open it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast(obj):
    """Rank 0's value of a small picklable object, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device if _device.type == "cuda" else None)
    return box[0]


def all_sum(value: int) -> int:
    """The sum of an integer over all ranks (exact: used for correct-prediction counts)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device)
    dist.all_reduce(t)
    return int(t.item())


def mean(value: float) -> float:
    """The mean of a float over all ranks (e.g. the per-rank losses of one global batch)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def batch_part(batch_size: int) -> slice:
    """This rank's rows of a global batch: an even, contiguous block."""
    k = world_size()
    if batch_size % k:
        raise DeliberateError(
            f"learner.batch_size={batch_size} is the global batch and must split evenly over "
            f"the {k} ranks; choose a multiple of {k}"
        )
    return slice(rank() * batch_size // k, (rank() + 1) * batch_size // k)


def block(n: int) -> slice:
    """This rank's contiguous block of n items (sizes differ by at most one), e.g. eval images."""
    r, k = rank(), world_size()
    return slice(r * n // k, (r + 1) * n // k)


def strided(items: Sequence) -> list:
    """Every world_size-th item from this rank's index on: the share of generation batches."""
    return list(items[rank() :: world_size()])


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss uses it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch, on any device and backend.

    torch's SyncBatchNorm does this on GPUs only. One differentiable all-reduce per call combines
    the ranks' means and variances; every rank must hold an equal share (`batch_part`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B_rank, C, H, W)
        if not self.training:
            return super().forward(x)
        k, c, shape = world_size(), x.shape[1], (1, -1, 1, 1)
        m = x.mean((0, 2, 3))  # this rank's mean and biased variance, (C,) each
        v = (x - m.view(shape)).square().mean((0, 2, 3))
        mean, v_avg, m2_avg = (_SumOverRanks.apply(torch.cat([m, v, m.square()])) / k).split(c)
        var = v_avg + (m2_avg - mean.square())  # within- plus between-rank variance
        n = x.numel() // c * k
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            mom = self.momentum or 1 / int(self.num_batches_tracked)  # None: cumulative average
            self.running_mean.lerp_(mean, mom)
            self.running_var.lerp_(var * n / max(n - 1, 1), mom)  # unbiased, as BatchNorm2d
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def _sync_batchnorm(module: nn.Module) -> None:
    """Make every BatchNorm in `module` normalise over the global batch, in place.

    The parameters and buffers are the same tensors, so optimisers and state_dict keys are kept.
    """
    for name, child in module.named_children():
        if _device.type == "cuda" and isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        elif type(child) is nn.BatchNorm2d:
            new = _GlobalBatchNorm2d(child.num_features, child.eps, child.momentum)
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            _sync_batchnorm(child)


def wrap(model: nn.Module) -> nn.Module:
    """The module to train with: DDP over `model` (its BatchNorms made global), or `model` alone.

    Gradients are averaged over ranks, so with the global batch split evenly the update is the
    one-process update of the same global batch, up to floating-point summation order.
    """
    if world_size() == 1:
        return model
    _sync_batchnorm(model)
    ids = [_device.index] if _device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch CPU threads (0: leave torch's default), restoring them after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
