"""DistributedDataParallel with synchronised BN: two processes on halves of a batch train
exactly like one process on the whole batch.

PyTorch's ``nn.SyncBatchNorm`` refuses CPU tensors, so on the CPU (gloo) the test swaps in
`AllReduceBatchNorm`, a minimal synchronised BN built on the differentiable
``torch.distributed.nn.functional.all_reduce``; on CUDA it uses ``nn.SyncBatchNorm`` itself
via ``convert_sync_batchnorm``. Either way the block's own code is unchanged.
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nonlocal_core import NonLocalConfig, random_weights
from nonlocal_torch import NonLocalBlock

WORLD = 2
STEPS = 2
CONFIG = NonLocalConfig(8, spatial_dims=2, instantiation="embedded_gaussian", subsample=True)


class AllReduceBatchNorm(nn.BatchNorm2d):
    """BN whose training statistics are those of the global batch (sum over processes)."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(u)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, u.dim())]
        count = torch.tensor(float(u.numel() // u.shape[1]), dtype=u.dtype)
        stats = torch.cat([u.sum(dims), u.square().sum(dims), count[None]])
        stats = all_reduce(stats)  # differentiable: gradients flow across processes
        c = u.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean.square()  # biased, as BN normalises with
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        shape = (1, c) + (1,) * (u.dim() - 2)
        inv = torch.rsqrt(var + self.eps) * self.weight
        return (u - mean.view(shape)) * inv.view(shape) + self.bias.view(shape)


def _data(device: str):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 8, 6, 6, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
    targets = [torch.randn(4, 8, 6, 6, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
    return [x.to(device) for x in xs], [t.to(device) for t in targets]


def _block(device: str) -> NonLocalBlock:
    block = NonLocalBlock.from_config(CONFIG, dtype=torch.float64)
    block.load_canonical_weights(random_weights(CONFIG, seed=5))
    return block.to(device).train()


def _train(model: nn.Module, xs, targets, rows: slice) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, t in zip(xs, targets):
        opt.zero_grad()
        # Each process averages over its own rows; DDP averages gradients over processes,
        # which together is the mean over the whole batch (equal shares).
        loss = (model(x[rows]) - t[rows]).square().mean()
        loss.backward()
        opt.step()


def _worker(rank: int, port: int, device: str, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        block = _block(device)
        if device == "cuda":
            block = nn.SyncBatchNorm.convert_sync_batchnorm(block)
        else:
            synced = AllReduceBatchNorm(8, eps=CONFIG.norm_eps, dtype=torch.float64)
            synced.load_state_dict(block.norm.state_dict())
            block.norm = synced
        model = nn.parallel.DistributedDataParallel(block)
        xs, targets = _data(device)
        share = xs[0].shape[0] // WORLD
        _train(model, xs, targets, slice(rank * share, (rank + 1) * share))
        state = {k: v.cpu() for k, v in block.state_dict().items()}
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
        ),
    ],
)
def test_ddp_two_processes_match_one_process(device):
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.get_context("spawn")
        port = _free_port()
        procs = [
            ctx.Process(target=_worker, args=(rank, port, device, out_dir)) for rank in range(WORLD)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
        for p in procs:
            if p.is_alive():
                p.kill()
        assert [p.exitcode for p in procs] == [0] * WORLD, "a DDP worker failed or hung"
        states = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]

    single = _block(device)
    xs, targets = _data(device)
    _train(single, xs, targets, slice(None))
    want = single.state_dict()
    initial = _block("cpu").state_dict()
    for name, value in want.items():
        for rank, state in enumerate(states):
            torch.testing.assert_close(
                state[name], value.cpu(), rtol=1e-9, atol=1e-12, msg=f"{name} on rank {rank}"
            )
    # Training moved the weights (so the comparison above says something).
    assert not torch.equal(want["theta.weight"].cpu(), initial["theta.weight"])
    assert not torch.equal(want["norm.running_mean"].cpu(), initial["norm.running_mean"])
