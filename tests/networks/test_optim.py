"""LARS (official VICReg form) and the warm-up + cosine schedule."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from mlvicx_monai.optim import LARS, WarmupCosine, lars_param_groups, scaled_lr, warmup_cosine


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _set_grads(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_param_groups_split_1d():
    model = _model()
    groups = lars_param_groups(model, weight_decay=1e-6)
    decay, no_decay = groups
    assert all(p.ndim > 1 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4  # 2 biases + BN w, b
    assert decay["weight_decay"] == 1e-6 and decay["lars_adaptation"]
    assert no_decay["weight_decay"] == 0.0 and not no_decay["lars_adaptation"]
    model[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in lars_param_groups(model)) == 5  # frozen parameters skipped


@pytest.mark.parametrize("use_groups", [True, False])
def test_one_step_matches_hand_computation(use_groups):
    lr, wd, eta, mom = 0.5, 0.01, 0.001, 0.9
    model = _model()
    before = {n: p.detach().numpy().astype(np.float64).copy() for n, p in model.named_parameters()}
    params = lars_param_groups(model, wd) if use_groups else model.parameters()
    opt = LARS(params, lr=lr, weight_decay=wd, momentum=mom, eta=eta)
    mu = {n: np.zeros_like(v) for n, v in before.items()}
    expected = copy.deepcopy(before)
    for step in range(2):  # two steps: the second exercises the momentum buffer
        _set_grads(model, seed=step + 1)
        grads = {n: p.grad.numpy().astype(np.float64) for n, p in model.named_parameters()}
        opt.step()
        for n, p in expected.items():
            g = grads[n]
            if p.ndim > 1:  # weight decay, then trust ratio eta * ||p|| / ||d||
                d = g + wd * p
                d = d * (eta * np.linalg.norm(p) / np.linalg.norm(d))
            else:  # 1-D: neither weight decay nor adaptation
                d = g
            mu[n] = mom * mu[n] + d
            expected[n] = p - lr * mu[n]
        for n, p in model.named_parameters():
            np.testing.assert_allclose(p.detach().numpy(), expected[n], rtol=1e-5, atol=1e-7, err_msg=n)
    # a 1-D parameter moved by exactly -lr * (momentum-accumulated) gradient, no decay/adaptation
    assert not np.allclose(expected["0.bias"], before["0.bias"])


def test_zero_norm_parameter_uses_unit_trust_ratio():
    w = nn.Parameter(torch.zeros(3, 3))
    w.grad = torch.ones(3, 3)
    LARS([w], lr=0.1, weight_decay=0.0).step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.1))


def test_defaults_and_paper_values():
    opt = LARS(_model().parameters(), lr=0.1)
    g = opt.param_groups[0]
    assert (g["weight_decay"], g["momentum"], g["eta"]) == (1e-6, 0.9, 0.001)  # authors' code
    paper = LARS(lars_param_groups(_model(), 1e-5), lr=3e-5, weight_decay=1e-5)
    assert paper.param_groups[0]["lr"] == 3e-5 and paper.param_groups[0]["weight_decay"] == 1e-5
    assert scaled_lr(0.2, 64) == pytest.approx(0.05) and scaled_lr(0.2, 256) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="momentum"):
        LARS(_model().parameters(), lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        scaled_lr(0.2, 0)


def test_warmup_cosine_values():
    base, warm, total, ratio = 0.05, 10, 110, 0.001
    opt = LARS(_model().parameters(), lr=123.0)
    sched = warmup_cosine(opt, base, warm, total, ratio)
    lrs = []
    for _ in range(total + 5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(base * 5 / warm)
    assert lrs[warm] == pytest.approx(base)  # end of warm-up: peak
    assert lrs[warm + 50] == pytest.approx(base * (0.5 + 0.5 * ratio))  # middle of the cosine
    assert lrs[total] == pytest.approx(base * ratio)  # end
    assert lrs[total + 4] == pytest.approx(base * ratio)  # clamped after the end
    assert all(a >= b - 1e-12 for a, b in zip(lrs[warm:], lrs[warm + 1 :]))  # monotone after warm-up
    q = 0.5 * (1 + math.cos(math.pi * 0.3))
    assert lrs[warm + 30] == pytest.approx(base * (q + ratio * (1 - q)))
    with pytest.raises(ValueError, match="exceed"):
        WarmupCosine(10, 10)


def test_scheduler_state_round_trip():
    def make(warm, total):
        model = _model()
        opt = LARS(lars_param_groups(model, 1e-6), lr=0.0)
        return model, opt, warmup_cosine(opt, 0.2, warm, total)

    model, opt, sched = make(5, 40)
    for _ in range(12):
        _set_grads(model)
        opt.step()
        sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    state = torch.load(_roundtrip(state), weights_only=True)  # plain data: safe loading works

    model2, opt2, sched2 = make(1, 2000)  # deliberately different schedule: the saved one must win
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.last_epoch == 12 and sched2.lr_lambdas[0].warmup_steps == 5 and sched2.lr_lambdas[0].total_steps == 40
    for _ in range(10):
        assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
