"""The CPSC-DFKD trainer: the recipe of notes/cpsc-dfkd.md §2.3-2.4 term by term, what each step may and may not
change, the sign-update equivalence of upstream's fresh Adam, the LR schedule, and fused == reference steps."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import dfkd_fast
from dfkd_fast.cpsc.config import CPSCConfig, student_lr
from dfkd_fast.cpsc.losses import ce_loss, contrastive_loss, ikd_generator, ikd_student, kd_loss
from dfkd_fast.cpsc.trainer import CPSCTrainer
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import ConditionalGenerator, FeatureAdapter, build_model
from dfkd_fast.models.small_cnn import SmallCNN
from dfkd_fast.reference.bn_stats import bn_stats_loss_reference
from dfkd_fast.reference.supcon import supcon_loss_reference
from dfkd_fast.runs import seed_everything

NORM = ((0.3,), (0.4,))


def tiny_config(**overrides) -> CPSCConfig:
    base = dict(teacher="small_cnn", student="small_cnn_half", dataset="digits", batch_size=16, nz=16, ngf=8,
                epochs=2, epoch_itrs=1, G_steps=1, S_steps=1, warmup_epochs=1, sample_every=0)
    return CPSCConfig(**{**base, **overrides})


def make_trainer(seed: int = 0, teacher_width: int = 8, dist=None, **overrides) -> CPSCTrainer:
    seed_everything(seed)
    teacher = SmallCNN(10, 1, width=teacher_width)
    for m in teacher.modules():  # non-trivial running statistics, as a trained teacher has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    student = FeatureAdapter(SmallCNN(10, 1, width=4), 16, 4 * teacher_width)
    generator = ConditionalGenerator(nz=16, ngf=8, nc=1, img_size=8, num_classes=10)
    return CPSCTrainer(tiny_config(**overrides), teacher, student, generator, norm=NORM, dist=dist,
                       log=lambda *a: None)


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def buffers(module):
    return {k: v.detach().clone() for k, v in module.named_buffers() if "num_batches" not in k}


def changed(before, module, getter=params):
    after = getter(module)
    return {k for k in before if not torch.equal(before[k], after[k])}


# ----------------------------------------------------------------------------------------------------------- terms
def test_generator_loss_is_the_papers_objective():
    """L_G = -KL(T||S) - a*MSE(S, T) + b*sum_l BN_l + g*SupCon([f_S, f_T], y) + e*CE(softmax(T), y), checked against
    a from-scratch computation with the reference ops and explicit hooks."""
    tr = make_trainer(co_alpha=5.0, co_beta=1.0, co_gamma=0.7, co_eta=0.7)
    z, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
    gen_state, s_state = copy.deepcopy(tr.generator.state_dict()), copy.deepcopy(tr.student.state_dict())
    loss, terms = tr.generator_loss(z, y)

    tr.generator.load_state_dict(gen_state)
    tr.student.load_state_dict(s_state)
    inputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: inputs.append((i[0], m)))
             for m in tr.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = tr.generator(z, y)
    t_feat, t = tr.teacher(x, out_feature=True)
    for h in hooks:
        h.remove()
    s_feat, s = tr.student(x, out_feature=True)
    kl = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum() / 16
    bn = sum(bn_stats_loss_reference(a, m.running_mean, m.running_var) for a, m in inputs)
    scl = supcon_loss_reference(torch.stack([s_feat, t_feat], dim=1), y, temperature=0.07, base_temperature=0.07)
    ce = F.nll_loss(F.log_softmax(F.softmax(t, 1), 1), y)
    expected = -kl - 5.0 * F.mse_loss(s, t) + 1.0 * bn + 0.7 * scl + 0.7 * ce
    assert len(inputs) == 3 and set(terms) == {"adv", "ikd", "bn", "scl", "ce"}
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["scl"], scl, rtol=1e-5, atol=1e-5)


def test_student_loss_is_the_papers_objective():
    tr = make_trainer()
    z, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
    g_state, s_state = copy.deepcopy(tr.generator.state_dict()), copy.deepcopy(tr.student.state_dict())
    loss, terms = tr.student_loss(z, y)
    tr.generator.load_state_dict(g_state)
    tr.student.load_state_dict(s_state)
    with torch.no_grad():
        x = tr.generator(z, y)
        t = tr.teacher(x)
    s = tr.student(x)
    kl = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum() / 16
    expected = kl + 5.0 * F.mse_loss(s, t) + 0.7 * F.cross_entropy(F.softmax(s, 1), y)
    assert set(terms) == {"kd", "ikd", "ce"}
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_every_term_is_switchable_and_fixes_are_opt_in():
    tr = make_trainer(loss_IKD=False, loss_BN=False, loss_SCL=False, loss_CE=False)
    z, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
    loss, terms = tr.generator_loss(z, y)
    assert set(terms) == {"adv"} and torch.equal(loss, terms["adv"])
    assert set(tr.student_loss(z, y)[1]) == {"kd"}
    assert tr.bn_stats is None


def test_loss_forms():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    torch.testing.assert_close(kd_loss(s, t), F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean"))
    # a saturated teacher (probabilities that underflow to 0) still gives finite gradients to its logits
    t_sat = torch.tensor([[150.0, 0.0, -150.0]], requires_grad=True)
    kd_loss(torch.randn(1, 3), t_sat).backward()
    assert torch.isfinite(t_sat.grad).all()
    torch.testing.assert_close(ikd_generator(s, t, log_form=False), -F.mse_loss(s, t))
    torch.testing.assert_close(ikd_generator(s, t, log_form=True), -torch.log(F.mse_loss(s, t)))
    torch.testing.assert_close(ikd_student(s, t, log_form=True), torch.log(torch.norm(t - s, 2)))
    torch.testing.assert_close(ce_loss(s, y), F.cross_entropy(F.softmax(s, dim=1), y))
    torch.testing.assert_close(ce_loss(s, y, on_logits=True), F.cross_entropy(s, y))
    assert CPSCConfig(dataset="cifar10").ikd_log_form() and not CPSCConfig(dataset="cifar100").ikd_log_form()
    f_s, f_t = F.normalize(torch.randn(8, 4), dim=1), F.normalize(torch.randn(8, 4), dim=1)
    torch.testing.assert_close(contrastive_loss(f_s, f_t, y, 0.07),
                               supcon_loss_reference(torch.stack([f_s, f_t], 1), y, 0.07, 0.07))


def test_teacher_without_batch_norm_has_a_zero_bn_term():
    seed_everything(0)
    teacher, student = build_model("lenet5", 10), build_model("lenet5_half", 10)
    cfg = tiny_config(teacher="lenet5", student="lenet5_half", dataset="mnist")
    tr = CPSCTrainer.from_config(cfg, teacher, in_channels=1, image_size=32, norm=NORM, log=lambda *a: None)
    assert isinstance(tr.student, FeatureAdapter) and tr.student.head[-1].out_features == 120
    loss, terms = tr.generator_loss(torch.randn(16, 16), torch.randint(0, 10, (16,)))
    assert "bn" not in terms and torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------------------- steps
def test_generator_step_changes_the_generator_only():
    tr = make_trainer()
    t0, s0, g0, sb0 = params(tr.teacher), params(tr.student), params(tr.generator), buffers(tr.student)
    terms = tr.generator_step()
    assert not changed(t0, tr.teacher) and not changed(s0, tr.student)
    assert all(p.grad is None for p in [*tr.teacher.parameters(), *tr.student.parameters()])
    assert all(p.requires_grad for p in tr.student.parameters())  # restored for the student step
    assert changed(g0, tr.generator) == set(g0)
    # upstream quirk kept: the student sees G-step batches in train mode, so its BN running statistics move
    assert changed(sb0, tr.student, buffers)
    assert {"loss_G", "G_adv", "G_ikd", "G_bn", "G_scl", "G_ce"} == set(terms)
    # the fresh-Adam update moves each parameter by lr_G (a sign step) unless its gradient is ~0
    delta = torch.cat([(params(tr.generator)[k] - g0[k]).flatten() for k in g0])
    assert ((delta.abs() - 1e-3).abs() < 1e-6).float().mean() > 0.85


def test_freeze_student_bn_in_G_fix_leaves_running_stats():
    tr = make_trainer(freeze_student_bn_in_G=True)
    before = buffers(tr.student)
    tr.generator_step()
    assert not changed(before, tr.student, buffers)
    assert [m.momentum for m in tr.student.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [0.1] * 3


def test_student_step_changes_the_student_only():
    tr = make_trainer()
    t0, s0, g0, gb0 = params(tr.teacher), params(tr.student), params(tr.generator), buffers(tr.generator)
    terms = tr.student_step()
    assert not changed(t0, tr.teacher) and not changed(g0, tr.generator)
    assert all(p.grad is None for p in tr.generator.parameters())
    assert changed(gb0, tr.generator, buffers)  # the generator runs in train mode (its CBN statistics move)
    moved = changed(s0, tr.student)
    assert moved and not any(k.startswith("head.") for k in moved)  # the adapter is never trained (upstream)
    assert set(terms) == {"loss_S", "S_kd", "S_ikd", "S_ce"}


def test_fresh_adam_per_step_is_a_sign_update():
    """Upstream's `Adam(G.parameters(), lr_G, betas=(0.5, 0.999))` built anew every step == the direct update."""
    tr = make_trainer()
    loss, _ = tr.generator_loss(torch.randn(16, 16), torch.randint(0, 10, (16,)))
    loss.backward()
    twin = copy.deepcopy(tr.generator)
    for a, b in zip(tr.generator.parameters(), twin.parameters()):
        b.grad = a.grad.clone()
    torch.optim.Adam(twin.parameters(), lr=1e-3, betas=(0.5, 0.999)).step()
    tr.update_generator()
    for (k, a), b in zip(tr.generator.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=3e-7, atol=1e-9, msg=k)  # float32 rounding of p - update


def test_persistent_adam_fix_keeps_state():
    tr = make_trainer(generator_optimizer="adam")
    tr.generator_step()
    tr.generator_step()
    assert all(s["step"] == 2 for s in tr.opt_G.state.values())


def test_student_lr_matches_upstream_schedulers():
    """Values of upstream's CosineAnnealingLR(T_max=600) + GradualWarmupScheduler(1, 10) stepped as in CPSC_DFKD.py
    (warmup-scheduler 0.3 on torch 2.13), epoch by epoch. Epoch 11 gets the cosine factor twice (0.3's get_lr)."""
    cfg = CPSCConfig()
    upstream = {1: 0.01, 2: 0.02, 5: 0.05, 10: 0.1, 11: 0.09997121052942334, 12: 0.09999725846827562,
                13: 0.09999383162408304, 100: 0.09455032620941839, 300: 0.052616797812147204,
                500: 0.008066471602728803, 600: 6.852326227130834e-05}
    for epoch, lr in upstream.items():
        assert student_lr(cfg, epoch) == pytest.approx(lr, rel=1e-12), epoch


def test_config_rejects_bad_values():
    with pytest.raises(DfkdError, match="batch_size must be >= 2"):
        tiny_config(batch_size=1).validate()
    with pytest.raises(DfkdError, match="generator_optimizer must be one of"):
        tiny_config(generator_optimizer="sgd").validate()
    with pytest.raises(DfkdError, match="lr_G must be > 0"):
        tiny_config(lr_G=0.0).validate()


# ---------------------------------------------------------------------------------------------- fused == reference
class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


FUSED_OPS = {f"dfkd_fast.{op}_{d}" for op in ("supcon", "cond_norm", "bn_stats") for d in ("fwd", "bwd")}


def test_fused_and_reference_steps_agree():
    """One generator step and one student step from the same state and batch, with the fused ops (the Triton
    kernels; under the interpreter on CPU) and with the reference ops: same losses, gradients and updates."""
    runs = {}
    for fused in (True, False):
        with dfkd_fast.use_backend("fused"):
            tr = make_trainer(fused=fused)
            z, y = torch.randn(16, 16), torch.randint(0, 10, (16,))
            with OpRecorder() as rec, tr._student_frozen():
                loss_g, terms_g = tr.generator_loss(z, y)
                loss_g.backward()
            grads = {k: p.grad.clone() for k, p in tr.generator.named_parameters()}
            tr.update_generator()
            g_after = params(tr.generator)
            with OpRecorder() as rec_s:
                loss_s, _ = tr.student_loss(z, y)
            tr.opt_S.zero_grad()
            loss_s.backward()
            tr.opt_S.step()
        runs[fused] = dict(loss_g=loss_g, terms=terms_g, grads=grads, g_after=g_after, loss_s=loss_s,
                           s_after=params(tr.student), ops=rec.ops | rec_s.ops)
    fused, ref = runs[True], runs[False]
    assert FUSED_OPS <= fused["ops"] and not FUSED_OPS & ref["ops"]  # the fused path really ran the fused ops
    torch.testing.assert_close(fused["loss_g"], ref["loss_g"], rtol=1e-5, atol=1e-5)
    for k in ref["terms"]:
        torch.testing.assert_close(fused["terms"][k], ref["terms"][k], rtol=1e-5, atol=1e-5)
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    for k, g in ref["grads"].items():
        torch.testing.assert_close(fused["grads"][k], g, rtol=1e-4, atol=1e-5 * scale, msg=k)
        # a sign update is ill-conditioned only where the gradient is ~0 (e.g. conv biases before a batch norm,
        # whose true gradient is 0): elsewhere the two updates are identical
        clear = g.abs() > 1e-3 * scale
        torch.testing.assert_close(fused["g_after"][k][clear], ref["g_after"][k][clear], rtol=0, atol=1e-7, msg=k)
    torch.testing.assert_close(fused["loss_s"], ref["loss_s"], rtol=1e-5, atol=1e-5)
    for k, p in ref["s_after"].items():
        torch.testing.assert_close(fused["s_after"][k], p, rtol=1e-4, atol=1e-6, msg=k)


def test_fit_evaluates_and_reports(tmp_path):
    tr = make_trainer()
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    tr.test_data = (images, labels)
    summary = tr.fit()
    assert summary["epochs"] == 2 and 0 <= summary["acc"] <= 1 and summary["best_acc"] >= summary["acc"]
    tr.sample_grid(tmp_path / "grid.png")
    from PIL import Image

    width, height = Image.open(tmp_path / "grid.png").size  # 6 per class, one row per class, a margin of labels
    assert height == 10 * 34 + 2 and width > 6 * 34 + 2
