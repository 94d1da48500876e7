"""Multi-process CPSC-DFKD (DDP, gloo on CPU): one generator step and one student step on 2 processes equal the
single-process computation over the same global batch, where each process's batch is a chunk with its own batch
statistics and the contrastive loss contrasts each chunk's anchors with the whole batch."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from test_cpsc_trainer import make_trainer  # noqa: E402

from dfkd_fast.cpsc.distributed import DistInfo  # noqa: E402
from dfkd_fast.runs import seed_everything  # noqa: E402

WORLD, BATCH, STEP_SEED = 2, 16, 123


def run_steps(tr):
    """One generator step and one student step as the trainer does them, keeping what the test compares."""
    seed_everything(STEP_SEED)
    z, y = tr.sample()
    with tr._student_frozen():
        loss_g, _ = tr.generator_loss(z, y)
        loss_g.backward()
    grads = {k: p.grad.clone() for k, p in tr.generator.named_parameters()}
    tr.update_generator()
    generator = {k: v.detach().clone() for k, v in tr.generator.state_dict().items()}
    stats = tr.student_step()
    return {"loss_G": loss_g.detach(), "grads": grads, "generator": generator, "loss_S": stats["loss_S"],
            "student": {k: p.detach().clone() for k, p in tr.student.named_parameters()}}


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        tr = make_trainer(dist=DistInfo(rank, WORLD, torch.device("cpu")), batch_size=BATCH, fused=False)
        torch.save(run_steps(tr), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process_reference(generator_after_g_step):
    """The same two steps in one process over the global batch of 2 x 16, chunk by chunk."""
    tr = make_trainer(batch_size=BATCH, fused=False)
    seed_everything(STEP_SEED)
    z = torch.randn(WORLD * BATCH, tr.cfg.nz)
    y = torch.randint(0, 10, (WORLD * BATCH,))
    chunks = [(z[r * BATCH:(r + 1) * BATCH], y[r * BATCH:(r + 1) * BATCH]) for r in range(WORLD)]
    with tr._student_frozen():
        outs = [tr.generator_forward(zc, yc) for zc, yc in chunks]
        anchors = [torch.cat([o["s_feat"], o["t_feat"]]) for o in outs]
        contrast = (torch.cat(anchors), torch.cat([yc.repeat(2) for _, yc in chunks]))
        losses = [tr.generator_objective(out, yc, contrast, rank=r)[0]
                  for r, (out, (_, yc)) in enumerate(zip(outs, chunks))]
        loss_g = torch.stack(losses).mean()
        loss_g.backward()
    grads = {k: p.grad.clone() for k, p in tr.generator.named_parameters()}
    tr.update_generator()
    generator = {k: v.detach().clone() for k, v in tr.generator.state_dict().items()}
    # the student step starts from the multi-process run's generator, so that the two comparisons are independent
    tr.generator.load_state_dict(generator_after_g_step)
    zs = torch.randn(WORLD * BATCH, tr.cfg.nz)
    ys = torch.randint(0, 10, (WORLD * BATCH,))
    losses = [tr.student_loss(zs[r * BATCH:(r + 1) * BATCH], ys[r * BATCH:(r + 1) * BATCH])[0] for r in range(WORLD)]
    loss_s = torch.stack(losses).mean()
    tr.opt_S.zero_grad()
    loss_s.backward()
    tr.opt_S.step()
    return {"loss_G": loss_g.detach(), "grads": grads, "generator": generator, "loss_S": loss_s.detach(),
            "student": {k: p.detach().clone() for k, p in tr.student.named_parameters()}}


@pytest.mark.skipif(not dist.is_gloo_available(), reason="needs the gloo backend")
def test_two_processes_match_the_single_process_step(tmp_path):
    mp.start_processes(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # DDP keeps the processes in sync: identical gradients and parameters on every rank
    for k in ranks[0]["grads"]:
        assert torch.equal(ranks[0]["grads"][k], ranks[1]["grads"][k]), k
    for k in ranks[0]["student"]:
        assert torch.equal(ranks[0]["student"][k], ranks[1]["student"][k]), k
    ref = single_process_reference(ranks[0]["generator"])
    torch.testing.assert_close((ranks[0]["loss_G"] + ranks[1]["loss_G"]) / 2, ref["loss_G"], rtol=1e-5, atol=1e-5)
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    for k, g in ref["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][k], g, rtol=1e-4, atol=1e-5 * scale, msg=k)
        clear = g.abs() > 1e-3 * scale  # the sign update is ill-conditioned only where the gradient is ~0
        torch.testing.assert_close(ranks[0]["generator"][k][clear], ref["generator"][k][clear], rtol=0, atol=1e-7)
    torch.testing.assert_close((ranks[0]["loss_S"] + ranks[1]["loss_S"]) / 2, ref["loss_S"], rtol=1e-5, atol=1e-5)
    for k, p in ref["student"].items():
        torch.testing.assert_close(ranks[0]["student"][k], p, rtol=1e-4, atol=1e-6, msg=k)
