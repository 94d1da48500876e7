"""supcon_loss: the reference against an independent per-anchor loop, the custom ops, compile, bad inputs."""

import math

import pytest
import torch

import dfkd_fast
from dfkd_fast.reference import supcon_loss_pairs_reference, supcon_loss_reference


def loop_loss(anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature, self_offset):
    """SupCon written anchor by anchor, straight from the paper's equation 2."""
    terms = []
    for i in range(anchors.shape[0]):
        others = [j for j in range(contrast.shape[0]) if self_offset is None or j != i + self_offset]
        positives = [j for j in others if contrast_labels[j] == anchor_labels[i]]
        if not positives:
            terms.append(anchors.new_zeros(()))
            continue
        sims = torch.stack([anchors[i] @ contrast[j] for j in others]) / temperature
        log_denominator = torch.log(torch.exp(sims).sum())
        log_probs = torch.stack([anchors[i] @ contrast[p] / temperature - log_denominator for p in positives])
        terms.append(-(temperature / base_temperature) * log_probs.mean())
    return torch.stack(terms).mean()


def views_as_pairs(features, labels, mode):
    batch, views, _ = features.shape
    labels = torch.arange(batch) if labels is None else labels
    contrast = torch.stack([features[b, v] for v in range(views) for b in range(batch)])
    contrast_labels = torch.stack([labels[b] for v in range(views) for b in range(batch)])
    if mode == "one":
        return features[:, 0], labels, contrast, contrast_labels
    return contrast, contrast_labels, contrast, contrast_labels


LABELS = {
    "random": lambda b: torch.randint(0, 3, (b,)),
    "all_same": lambda b: torch.zeros(b, dtype=torch.long),
    "all_distinct": lambda b: torch.arange(b),
    "singletons": lambda b: torch.cat([torch.zeros(b - 2, dtype=torch.long), torch.tensor([5, 6])])[:b],
    "none": lambda b: None,
}


@pytest.mark.parametrize("labels", sorted(LABELS))
@pytest.mark.parametrize("views,mode", [(1, "all"), (2, "all"), (2, "one"), (3, "all")])
def test_reference_matches_per_anchor_loop(labels, views, mode):
    features = torch.nn.functional.normalize(torch.randn(5, views, 4, dtype=torch.float64), dim=2)
    y = LABELS[labels](5)
    expected = loop_loss(*views_as_pairs(features, y, mode), 0.5, 0.7, 0)
    got = supcon_loss_reference(features, y, 0.5, 0.7, mode)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("self_offset", [None, 0, 3])
def test_pairs_reference_matches_per_anchor_loop(self_offset):
    anchors, contrast = torch.randn(4, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    if self_offset is not None:
        contrast[self_offset:self_offset + 4] = anchors
    la, lc = torch.randint(0, 3, (4,)), torch.randint(0, 3, (9,))
    if self_offset is not None:
        lc[self_offset:self_offset + 4] = la
    expected = loop_loss(anchors, la, contrast, lc, 0.3, 0.3, self_offset)
    got = supcon_loss_pairs_reference(anchors, la, contrast, lc, 0.3, 0.3, self_offset)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_lone_anchor_is_zero_and_finite():
    features = torch.randn(1, 1, 3, dtype=torch.float64, requires_grad=True)
    loss = supcon_loss_reference(features, torch.tensor([2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_reference_gradcheck():
    features = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    assert torch.autograd.gradcheck(lambda f: supcon_loss_reference(f, labels, 0.5, normalize=True), (features,))


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("normalize", [False, True])
def test_backends_agree(mode, normalize):
    features = torch.randn(7, 2, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 4])
    results = []
    for backend in ("reference", "fused"):
        loss = dfkd_fast.supcon_loss(features, labels, temperature=0.2, contrast_mode=mode, normalize=normalize,
                                     backend=backend)
        results.append((loss, *torch.autograd.grad(loss, features)))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_module_face():
    criterion = dfkd_fast.nn.SupConLoss(temperature=0.1, contrast_mode="one")
    features, labels = torch.randn(4, 2, 3), torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(criterion(features, labels),
                               dfkd_fast.supcon_loss(features, labels, temperature=0.1, contrast_mode="one"))


F = torch.randn(4, 2, 3)
L = torch.tensor([0, 1, 0, 1])
BAD_INPUTS = [
    (lambda: dfkd_fast.supcon_loss(F[0], L), ValueError, "'features' must have 3 dimensions"),
    (lambda: dfkd_fast.supcon_loss(F.long(), L), TypeError, "'features' must have dtype"),
    (lambda: dfkd_fast.supcon_loss(F, L[:3]), ValueError, "'labels' must have length 4"),
    (lambda: dfkd_fast.supcon_loss(F, L.float()), TypeError, "'labels' must have dtype"),
    (lambda: dfkd_fast.supcon_loss(F, L.to("meta")), ValueError, "'labels' is on meta"),
    (lambda: dfkd_fast.supcon_loss(F, L, temperature=0.0), ValueError, "'temperature' must be a finite number > 0"),
    (lambda: dfkd_fast.supcon_loss(F, L, base_temperature=-1.0), ValueError, "'base_temperature'"),
    (lambda: dfkd_fast.supcon_loss(F, L, temperature=math.nan), ValueError, "'temperature'"),
    (lambda: dfkd_fast.supcon_loss(F, L, contrast_mode="two"), ValueError, "'contrast_mode' must be one of"),
    (lambda: dfkd_fast.supcon_loss(F, L, temperature=1e-39), ValueError,
     "'temperature' must be >= 2.939e-39 for torch.float32 features"),
    (lambda: dfkd_fast.supcon_loss(F.half(), L, temperature=1e-39), ValueError, "'temperature' must be >= "),
    (lambda: dfkd_fast.supcon_loss(F.double(), L, temperature=1e-310), ValueError,
     "'temperature' must be >= 5.563e-309 for torch.float64"),
    (lambda: dfkd_fast.supcon_loss(F, L, temperature=1e30, base_temperature=1e-20), ValueError,
     "'temperature' / 'base_temperature' must be a normal torch.float32 number"),
    (lambda: dfkd_fast.supcon_loss_pairs(F[:, 0], L, F[:, 0], L, temperature=1e-39), ValueError,
     "supcon_loss_pairs: argument 'temperature' must be >="),
    (lambda: dfkd_fast.supcon_loss(torch.full((4, 2, 3), math.inf), L), ValueError, "NaN or infinite"),
    (lambda: dfkd_fast.supcon_loss(F[:0], L[:0]), ValueError, "non-empty"),
    (lambda: dfkd_fast.supcon_loss(F, L, backend="cuda"), ValueError, "backend must be one of"),
    (lambda: dfkd_fast.supcon_loss_pairs(F[:, 0], L, F[:, 0, :2], L), ValueError, "D = 3 columns"),
    (lambda: dfkd_fast.supcon_loss_pairs(F[:, 0], L, F[:, 0].double(), L), TypeError, "dtype of 'anchors'"),
    (lambda: dfkd_fast.supcon_loss_pairs(F[:, 0], L, F[:, 0], L, self_offset=1), ValueError, "'self_offset'"),
    (lambda: dfkd_fast.supcon_loss_pairs(F[:, 0], L, F[:, 0], L[:2]), ValueError, "'contrast_labels' must have"),
]


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_small_float64_temperature_is_fine(backend):
    """1e-39 overflows float32's reciprocal, not float64's: allowed for float64 features, and finite."""
    loss = dfkd_fast.supcon_loss(F.double(), L, temperature=1e-39, base_temperature=1e-39, normalize=True,
                                 backend=backend)
    ref = supcon_loss_reference(F.double(), L, temperature=1e-39, base_temperature=1e-39, normalize=True)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_empty_inputs_behave_alike_on_every_backend(backend):
    with pytest.raises(ValueError, match="'features' must be non-empty"):
        dfkd_fast.supcon_loss(F[:0], L[:0], backend=backend)
    with pytest.raises(ValueError, match="'anchors' must be a non-empty"):
        dfkd_fast.supcon_loss_pairs(F[:0, 0], L[:0], F[:, 0], L, backend=backend)
    anchors = F[:, 0].clone().requires_grad_()
    loss = dfkd_fast.supcon_loss_pairs(anchors, L, F[:0, 0], L[:0], backend=backend)  # nothing to contrast with
    assert loss.item() == 0.0 and torch.equal(torch.autograd.grad(loss, anchors)[0], torch.zeros_like(anchors))


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
