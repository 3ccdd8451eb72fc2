"""The training monitor's collapse statistics: effective rank sees what the per-dimension std cannot."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from mlvicx_monai.engines import TrainingMonitor, effective_rank


def test_effective_rank_of_known_spectra() -> None:
    torch.manual_seed(0)
    # a batch on one line (dimensional collapse to one direction): rank 1
    u = torch.nn.functional.normalize(torch.randn(64), dim=0)
    signs = torch.where(torch.arange(256) % 2 == 0, 1.0, -1.0)[:, None]
    assert effective_rank(signs * u) == pytest.approx(1.0, abs=1e-3)
    # k orthogonal directions with equal energy: rank k exactly
    k = 5
    basis = torch.linalg.qr(torch.randn(64, k)).Q.T  # (k, 64), orthonormal rows
    z = torch.cat([basis, -basis])  # centred, equal singular values
    assert effective_rank(z) == pytest.approx(k, rel=1e-4)
    # an isotropic Gaussian batch much larger than d spreads over (nearly) every direction
    assert effective_rank(torch.randn(4096, 16)) > 15.5


def test_effective_rank_is_scale_and_shift_free() -> None:
    z = torch.randn(128, 32)
    assert effective_rank(z * 1e3 + 7) == pytest.approx(float(effective_rank(z)), rel=1e-4)


@pytest.mark.parametrize("shape", [(8,), (1, 16), (2, 3, 4)])
def test_effective_rank_rejects_non_batches(shape) -> None:
    with pytest.raises(ValueError, match="batch >= 2"):
        effective_rank(torch.randn(*shape))


def _engine_emitting(batches: list[dict[str, torch.Tensor]]) -> Engine:
    def step(engine: Engine, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    engine = Engine(step)
    TrainingMonitor(every=1, log=False).attach(engine)
    return engine


def test_monitor_logs_rank_where_nstd_misses_a_dimensional_collapse() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(32), dim=0)
    collapsed = torch.where(torch.arange(64) % 2 == 0, 1.0, -1.0)[:, None] * u  # +-u: every dim varies
    healthy = torch.randn(64, 32)
    seen = {}
    for name, z in (("collapsed", collapsed), ("healthy", healthy)):
        output = {
            "loss": torch.tensor(1.0),
            "batch_size": torch.tensor(z.shape[0]),
            "nstd/global": torch.nn.functional.normalize(z, dim=1).std(dim=0) * z.shape[1] ** 0.5,
            "emb/global": z,
        }
        engine = _engine_emitting([output])
        engine.run([output], max_epochs=1)
        seen[name] = engine.state.train_stats
    # normalised std cannot tell the two apart (both about 1) ...
    assert seen["collapsed"]["nstd/global_mean"] > 0.6 and seen["healthy"]["nstd/global_mean"] > 0.6
    # ... the effective rank can
    assert seen["collapsed"]["rank/global"] < 1.01
    assert seen["healthy"]["rank/global"] > 20
    assert "rank/local" not in seen["healthy"]  # no multi-level embedding, no key
