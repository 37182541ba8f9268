"""A network changed by `insert_nonlocal` goes through DistributedDataParallel like the
original: two gloo processes on the CPU train it exactly as one process does, and the blocks'
weights move. Each process gets the same batch, so DDP's averaged gradients are the single
process's (the network's ordinary BN layers see the same statistics everywhere)."""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nonlocal_torch import insert_nonlocal
from tests.torch.resnets import resnet

WORLD = 2
AT = ["layer2.1", "layer3"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = resnet(layers=(1, 2, 1, 1), width=4, num_classes=3).double()
    return insert_nonlocal(model, AT, subsample=True)


def _train(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 2])
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimiser.step()


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model()
        _train(nn.parallel.DistributedDataParallel(model))
        torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_trains_an_inserted_network_like_one_process():
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.get_context("spawn")
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, port, out_dir)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
        for p in procs:
            if p.is_alive():
                p.kill()
        assert [p.exitcode for p in procs] == [0] * WORLD, "a DDP worker failed or hung"
        states = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]

    single = _model()
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    _train(single)
    want = single.state_dict()
    assert all(set(state) == set(want) for state in states)
    for name, value in want.items():
        for rank, state in enumerate(states):
            torch.testing.assert_close(
                state[name], value, rtol=1e-9, atol=1e-12, msg=f"{name} on rank {rank}"
            )
    for path in AT:  # the comparison covers trained blocks
        for weight in ("norm.weight", "out.weight"):
            key = f"{path}.nonlocal_block.{weight}"
            assert not torch.equal(want[key], initial[key]), key
