"""Multi-process training (``torchrun``): process group, gradient averaging, batch norm.

Gradients are averaged by hand after each phase, as NVlabs' training loop does, rather than
through DistributedDataParallel: G and D are trained in alternating phases in which the
other network also runs forward, which DDP's bucketed hooks do not fit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline.devices import pick_device


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_processes(device_setting: str) -> Processes:
    """Join the process group ``torchrun`` describes, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_setting, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world, device)


def average_gradients(params: nn.Module | Iterable[nn.Parameter], world: int) -> None:
    """Average the gradients of a module's (or a list's) trainable parameters over the
    processes (one flat all-reduce)."""
    if world == 1:
        return
    params = params.parameters() if isinstance(params, nn.Module) else params
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def all_reduce_mean(values: dict[str, float], world: int, device: torch.device) -> dict:
    if world == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / world).tolist(), strict=True))


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients too: every process's output depends
    on every process's input."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the batch of all processes, on the CPU.

    torch's SyncBatchNorm refuses CPU tensors, so gloo runs (and the CPU test of the DDP code
    path) use this: per-channel sums are all-reduced with a differentiable all-reduce.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        stats = _SumOverProcesses.apply(stats)
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels : 2 * channels] / total - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * total / (total - 1).clamp(min=1)
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = (1, channels, 1, 1)
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape)


def all_true(flag: bool, world: int, device: torch.device) -> bool:
    """True only if ``flag`` holds in every process (one all-reduce; none with one)."""
    if world == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def cross_process_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make batch norm see the global batch: SyncBatchNorm on CUDA, ours on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, CrossProcessBatchNorm2d):
            replacement = CrossProcessBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine
            )
            replacement.load_state_dict(child.state_dict())
            replacement.weight, replacement.bias = child.weight, child.bias
            setattr(module, name, replacement)
        else:
            cross_process_batchnorm(child, device)
    return module


def broadcast_module(module: nn.Module, world: int) -> None:
    if world == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
