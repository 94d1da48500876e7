"""CPSC-DFKD details that must match what upstream actually runs (issue 14, item 11): the SupCon term's scale for
any --temp, and the student LR in the first epoch after the warm-up (PyPI warmup-scheduler 0.3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dfkd_fast.cpsc.config import CPSCConfig, student_lr
from dfkd_fast.cpsc.losses import contrastive_loss


def upstream_supcon(features, labels, temperature, base_temperature=0.07):
    """SupContrast's SupConLoss, contrast_mode='all', transcribed as plain tensor algebra: features [B, V, D]."""
    b, v = features.shape[:2]
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # [V*B, D], view-major
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).float().repeat(v, v)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1 - torch.eye(v * b, dtype=features.dtype)
    mask = mask * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).view(v, b).mean()


@pytest.mark.parametrize("temp", [0.5, 0.07, 0.2])
def test_scl_term_equals_upstreams_supconloss_for_any_temp(temp):
    torch.manual_seed(0)
    s = F.normalize(torch.randn(12, 6, dtype=torch.float64), dim=1)
    t = F.normalize(torch.randn(12, 6, dtype=torch.float64), dim=1)
    y = torch.randint(0, 4, (12,))
    ours = contrastive_loss(s, t, y, temp, backend="reference").double()
    expected = upstream_supcon(torch.stack([s, t], dim=1), y, temp)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    if temp != 0.07:  # base_temperature stays 0.07: the scale is temp / 0.07, not 1
        unscaled = upstream_supcon(torch.stack([s, t], dim=1), y, temp, base_temperature=temp)
        assert not torch.allclose(ours.double(), unscaled, rtol=1e-3)


def test_epoch_after_warmup_gets_the_cosine_factor_twice_as_warmup_scheduler_0_3():
    cfg = CPSCConfig()  # lr 0.1, 600 epochs, warm-up 10
    r = (1 + math.cos(11 * math.pi / 600)) / (1 + math.cos(10 * math.pi / 600))
    assert student_lr(cfg, 11) == pytest.approx(0.1 * r * r, rel=1e-14)
    fixed = CPSCConfig(warmup_cosine_once=True)
    assert student_lr(fixed, 11) == pytest.approx(0.1 * r, rel=1e-14)
    for epoch in (1, 10, 12, 300, 600):  # everywhere else both give the same
        assert student_lr(cfg, epoch) == student_lr(fixed, epoch)


def test_warmup_fix_is_a_cli_flag():
    from dfkd_fast import cli

    parser, _ = cli.build_parser("cpsc", [])
    assert parser.parse_args(["cpsc"]).warmup_cosine_once is False
    assert parser.parse_args(["cpsc", "--warmup_cosine_once"]).warmup_cosine_once is True
