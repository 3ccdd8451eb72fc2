"""Pure unit checks of the inference engine (the bundle end to end is in test_infer_bundle.py, marked slow)."""

from __future__ import annotations

import torch

from mlvicx_monai.engines.infer import gradcam_normalizer


def test_gradcam_normalizer_keeps_bright_as_evidence():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 2.0]]]])
    assert torch.equal(gradcam_normalizer(x), torch.tensor([[[[0.0, 1 / 3], [1.0, 2 / 3]]]]))
    assert torch.equal(gradcam_normalizer(torch.zeros(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))
