"""Under DistributedDataParallel the VICReg/MLVICX loss and gradients equal one process on the whole batch.

Two CPU processes (gloo) each hold half of a global batch. The model has no BatchNorm (BN statistics would differ
per rank without SyncBatchNorm, which needs CUDA). float64 throughout, so the tolerance can be tight. The same
run with a naive all-gather (no gradient through the other ranks' copies) must give different gradients, so this
test can fail.
"""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import mlvicx_monai.losses.vicreg as vicreg_module
from mlvicx_monai.engines.distributed import cleanup_distributed
from mlvicx_monai.losses import MLVICXLoss

pytestmark = pytest.mark.slow  # spawns two gloo processes

WORLD = 2
GLOBAL_BATCH = 8
IN_DIM, EMB = 6, 5


class TwoHead(nn.Module):
    """Tiny BN-free stand-in for MLVICX: shared trunk, a global head (z) and a multi-level head (m)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh())
        # output non-linearities, so that no bias gradient is identically zero (var/cov are shift-invariant)
        self.g = nn.Sequential(nn.Linear(16, EMB), nn.Tanh())
        self.h = nn.Sequential(nn.Linear(16 + IN_DIM, 12), nn.Tanh(), nn.Linear(12, EMB), nn.Tanh())

    def embed(self, x):
        t = self.trunk(x)
        return self.g(t), self.h(torch.cat([t, x], dim=1))

    def forward(self, v1, v2):
        z1, m1 = self.embed(v1)
        z2, m2 = self.embed(v2)
        return {"z1": z1, "z2": z2, "m1": m1, "m2": m2}


def _data():
    gen = torch.Generator().manual_seed(1234)
    v1 = torch.randn(GLOBAL_BATCH, IN_DIM, generator=gen, dtype=torch.float64)
    v2 = v1 + 0.3 * torch.randn(GLOBAL_BATCH, IN_DIM, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = TwoHead().double()
    return model, v1, v2


def _naive_gather(x: torch.Tensor) -> torch.Tensor:
    """The classic bug: all_gather without autograd; only this rank's own slice carries a gradient."""
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, port: int, out_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model, v1, v2 = _data()
        loss_fn = MLVICXLoss(lambda_multilevel=0.5)  # gather="auto": active because world size is 2
        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        results = {}
        for mode in ("full_gather", "naive"):
            if mode == "naive":
                vicreg_module.gather_batch = _naive_gather  # swap in the buggy gather
            ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(model))
            out = loss_fn(**ddp(v1[local], v2[local]))
            out["loss"].backward()
            loss = out["loss"].detach().clone()
            dist.all_reduce(loss)
            results[mode] = {"loss": loss / WORLD, "grads": _grads(ddp.module)}
        if rank == 0:
            torch.save(results, out_path)
        cleanup_distributed()  # barrier, then destroy: without it a rank could abort (SIGABRT) in gloo's teardown
    finally:
        if dist.is_initialized():  # an exception above: tear down without waiting for the other rank
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out_path = str(tmp_path_factory.mktemp("ddp") / "results.pt")
    mp.spawn(_worker, args=(_free_port(), out_path), nprocs=WORLD, join=True)
    return torch.load(out_path, weights_only=False)


@pytest.fixture(scope="module")
def single_process():
    model, v1, v2 = _data()
    out = MLVICXLoss(lambda_multilevel=0.5, gather=False)(**model(v1, v2))
    out["loss"].backward()
    return {"loss": out["loss"].detach(), "grads": _grads(model)}


def test_ddp_loss_equals_single_process(ddp_results, single_process):
    # mean over ranks of (local inv + global var/cov) == loss of one process on the whole batch
    torch.testing.assert_close(ddp_results["full_gather"]["loss"], single_process["loss"], rtol=1e-12, atol=1e-12)


def test_ddp_gradients_equal_single_process(ddp_results, single_process):
    grads = ddp_results["full_gather"]["grads"]
    assert set(grads) == set(single_process["grads"])
    for name, ref in single_process["grads"].items():
        assert ref.abs().max() > 1e-4, name
        torch.testing.assert_close(grads[name], ref, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_naive_all_gather_gives_wrong_gradients(ddp_results, single_process):
    naive = ddp_results["naive"]
    # the forward value is the same: only the backward is wrong
    torch.testing.assert_close(naive["loss"], single_process["loss"], rtol=1e-12, atol=1e-12)
    worst = max(
        ((naive["grads"][n] - ref).norm() / ref.norm()).item() for n, ref in single_process["grads"].items()
    )
    assert worst > 1e-2, f"naive gather unexpectedly matched (max relative gradient error {worst:.2e})"
