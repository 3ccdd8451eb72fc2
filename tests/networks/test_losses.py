"""VICReg / MLVICX losses against the paper's equations (3)-(8), computed independently with plain Python loops."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from mlvicx_monai.losses import MLVICXLoss, VICRegLoss, covariance_loss, embedding_std, off_diagonal, variance_loss


# ---------------------------------------------------------------- independent reference (pure Python, no torch)
def _mean(xs):
    return sum(xs) / len(xs)


def ref_inv(z1, z2):
    b, r = len(z1), len(z1[0])
    return sum((z1[i][j] - z2[i][j]) ** 2 for i in range(b) for j in range(r)) / (b * r)


def ref_var(z, eps=1e-4):
    b, r = len(z), len(z[0])
    out = []
    for j in range(r):
        col = [z[i][j] for i in range(b)]
        m = _mean(col)
        var = sum((x - m) ** 2 for x in col) / (b - 1)
        out.append(max(0.0, 1.0 - math.sqrt(var + eps)))
    return _mean(out)


def ref_cov(z):
    b, r = len(z), len(z[0])
    means = [_mean([z[i][j] for i in range(b)]) for j in range(r)]
    total = 0.0
    for a in range(r):
        for q in range(r):
            if a != q:
                c = sum((z[i][a] - means[a]) * (z[i][q] - means[q]) for i in range(b)) / (b - 1)
                total += c * c
    return total / r


def ref_vicreg(z1, z2, alpha=25.0, beta=25.0, gamma=1.0):
    inv = ref_inv(z1, z2)
    var = (ref_var(z1) + ref_var(z2)) / 2
    cov = ref_cov(z1) + ref_cov(z2)
    return {"inv": inv, "var": var, "cov": cov, "loss": alpha * inv + beta * var + gamma * cov}


def _rand(b, r, seed, scale=1.0):
    rng = random.Random(seed)
    return [[rng.gauss(0.0, scale) for _ in range(r)] for _ in range(b)]


def _t(z):
    return torch.tensor(z, dtype=torch.float64)


# ---------------------------------------------------------------- tests
def test_hand_computed_example():
    # Z = [[0,0],[2,2]]: column variance 2 (unbiased) -> std > 1 -> var(Z) = 0; C = [[2,2],[2,2]] -> cov = (4+4)/2 = 4
    # Z' = 0 (collapsed): std = sqrt(1e-4) = 0.01 -> var(Z') = 0.99; cov(Z') = 0
    # inv = (0+0+4+4)/4 = 2;  L = 25*2 + 25*(0 + 0.99)/2 + 1*(4 + 0) = 66.375
    out = VICRegLoss()(_t([[0.0, 0.0], [2.0, 2.0]]), _t([[0.0, 0.0], [0.0, 0.0]]))
    assert out["inv"].item() == pytest.approx(2.0)
    assert out["var"].item() == pytest.approx(0.495)  # the mean of the two views (official); solo-learn: 0.99
    assert out["cov"].item() == pytest.approx(4.0)
    assert out["loss"].item() == pytest.approx(66.375)


@pytest.mark.parametrize("b,r,scale", [(5, 3, 1.0), (8, 6, 0.3), (4, 7, 2.0)])
def test_terms_match_equations(b, r, scale):
    z1, z2 = _rand(b, r, seed=b * 10 + r, scale=scale), _rand(b, r, seed=b * 10 + r + 1, scale=scale)
    ref = ref_vicreg(z1, z2)
    out = VICRegLoss()(_t(z1), _t(z2))
    for key in ("inv", "var", "cov", "loss"):
        assert out[key].item() == pytest.approx(ref[key], rel=1e-10, abs=1e-12), key
    # the coefficients weight the unweighted terms
    out = VICRegLoss(inv_coeff=2.0, var_coeff=3.0, cov_coeff=0.5)(_t(z1), _t(z2))
    assert out["loss"].item() == pytest.approx(2 * ref["inv"] + 3 * ref["var"] + 0.5 * ref["cov"], rel=1e-10)
    # float32 path agrees to float32 precision
    out32 = VICRegLoss()(_t(z1).float(), _t(z2).float())
    assert out32["loss"].dtype == torch.float32
    assert out32["loss"].item() == pytest.approx(ref["loss"], rel=1e-5)


def test_off_diagonal():
    c = torch.arange(9.0).view(3, 3)
    assert off_diagonal(c).tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.zeros(2, 3))


def test_invariant_to_batch_order():
    z1, z2 = _t(_rand(9, 5, 1)), _t(_rand(9, 5, 2))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    a, b = VICRegLoss()(z1, z2), VICRegLoss()(z1[perm], z2[perm])
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-12)


def test_cov_zero_for_decorrelated_inputs():
    # columns of a Hadamard matrix without its constant column: zero mean, mutually orthogonal
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float64)
    z = torch.from_numpy(np.concatenate([h[:, 1:], h[:, 1:]], axis=0) * 3.0)  # b = 8, r = 3
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-12)
    assert VICRegLoss()(z, z)["cov"].item() == pytest.approx(0.0, abs=1e-12)
    # and non-zero once two dimensions are correlated
    assert covariance_loss(torch.cat([z, z[:, :1]], dim=1)).item() > 1.0


def test_var_zero_when_std_at_least_one():
    z = torch.randn(64, 16, dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0) * torch.linspace(1.0, 3.0, 16, dtype=torch.float64)  # per-dim std in [1, 3]
    assert variance_loss(z).item() == 0.0
    assert VICRegLoss()(z, z.flip(0))["var"].item() == 0.0
    # collapsed embeddings: hinge 1 - sqrt(eps) per dim, averaged over the two views
    collapsed = torch.zeros(8, 4, dtype=torch.float64)
    assert variance_loss(collapsed).item() == pytest.approx(1 - math.sqrt(1e-4))
    both = VICRegLoss()(collapsed, z[:8, :4] * 100)
    assert both["var"].item() == pytest.approx((1 - math.sqrt(1e-4)) / 2)


def test_gradient_flows_and_autocast_stats_in_float32():
    z1 = torch.randn(6, 8, requires_grad=True)
    z2 = torch.randn(6, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = VICRegLoss()(z1.bfloat16(), z2.bfloat16())
    assert all(v.dtype == torch.float32 for v in out.values())
    out["loss"].backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "z1,z2,err,match",
    [
        (torch.zeros(4), torch.zeros(4), ValueError, "2-D"),
        (torch.zeros(4, 3, 2), torch.zeros(4, 3, 2), ValueError, "2-D"),
        (torch.zeros(4, 3), torch.zeros(5, 3), ValueError, "same shape"),
        (torch.zeros(4, 3), torch.zeros(4, 2), ValueError, "same shape"),
        (torch.zeros(1, 3), torch.zeros(1, 3), ValueError, "at least 2"),
        (torch.zeros(4, 1), torch.zeros(4, 1), ValueError, "dimension must be >= 2"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long), TypeError, "floating point"),
    ],
)
def test_shape_validation(z1, z2, err, match):
    with pytest.raises(err, match=match):
        VICRegLoss()(z1, z2)


def test_argument_validation():
    with pytest.raises(ValueError, match="gather"):
        VICRegLoss(gather="always")
    with pytest.raises(ValueError, match="inv_coeff"):
        VICRegLoss(inv_coeff=-1)
    with pytest.raises(RuntimeError, match="process group"):
        VICRegLoss(gather=True)(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="terms"):
        MLVICXLoss(terms="all")
    with pytest.raises(ValueError, match="lambda"):
        MLVICXLoss(lambda_multilevel=-0.1)


def test_mlvicx_loss_terms_and_lambda():
    z1, z2, m1, m2 = (_t(_rand(6, 4, s)) for s in range(4))
    g, loc = VICRegLoss()(z1, z2), VICRegLoss()(m1, m2)

    out = MLVICXLoss(lambda_multilevel=0.7)(z1, z2, m1, m2)
    assert out["loss"].item() == pytest.approx(g["loss"].item() + 0.7 * loc["loss"].item(), rel=1e-12)
    assert set(out) == {"loss"} | {f"{lvl}/{k}" for lvl in ("global", "local") for k in ("inv", "var", "cov", "loss")}
    for k in ("inv", "var", "cov", "loss"):
        assert out[f"global/{k}"].item() == pytest.approx(g[k].item(), rel=1e-12)
        assert out[f"local/{k}"].item() == pytest.approx(loc[k].item(), rel=1e-12)
        assert not out[f"global/{k}"].requires_grad  # logged terms are detached

    # lambda = 0: VICReg on the same encoder (local terms still logged)
    zero = MLVICXLoss(lambda_multilevel=0.0)(z1, z2, m1, m2)
    assert zero["loss"].item() == pytest.approx(g["loss"].item(), rel=1e-12)
    assert "local/loss" in zero

    # Table IV ablations
    glob = MLVICXLoss(lambda_multilevel=5.0, terms="global")(z1, z2, m1, m2)
    assert glob["loss"].item() == pytest.approx(g["loss"].item(), rel=1e-12)
    assert not any(k.startswith("local/") for k in glob)
    local = MLVICXLoss(lambda_multilevel=5.0, terms="local")(m1=m1, m2=m2)
    assert local["loss"].item() == pytest.approx(loc["loss"].item(), rel=1e-12)
    assert not any(k.startswith("global/") for k in local)

    # missing inputs are precise errors; the model's output dict can be splatted in
    with pytest.raises(ValueError, match="m1 and m2"):
        MLVICXLoss()(z1, z2)
    with pytest.raises(ValueError, match="z1 and z2"):
        MLVICXLoss(terms="global")(m1=m1, m2=m2)
    assert MLVICXLoss()(**{"z1": z1, "z2": z2, "m1": m1, "m2": m2})["loss"].item() == pytest.approx(
        out["loss"].item() / 1.0 - 0.7 * loc["loss"].item() + loc["loss"].item(), rel=1e-12
    )


def test_embedding_std():
    z = torch.randn(10, 5)
    std = embedding_std(z)
    assert std.shape == (5,)
    np.testing.assert_allclose(std.numpy(), np.std(z.numpy(), axis=0, ddof=1), rtol=1e-5)
    assert embedding_std(torch.ones(10, 5)).abs().max().item() == 0.0  # fully collapsed
    with pytest.raises(ValueError):
        embedding_std(torch.randn(1, 5))
