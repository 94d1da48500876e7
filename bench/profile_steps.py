"""torch.profiler summaries of the trainer steps on this machine (bench/PROFILE.md records the CPU ones).

    python bench/profile_steps.py                 # CPSC iteration (generator + student step) and ACGKD steps
    python bench/profile_steps.py --only cpsc --rows 25
    python bench/profile_steps.py --only ops          # GPU: each fused op at its key size (notes/kernels.md section 7)

CPSC: the bench's CPU pair (WRN-16-2 -> WRN-16-1, batch 16, 10 classes; the CUDA pair on a GPU), fused defaults.
ACGKD: PROTEINS-sized pseudo-graphs (bench/bench_acgkd.py's setup), one generation step and one KD step. Each is
run twice first (warm-up), then profiled over ``--steps`` repetitions; the table is sorted by self time (CPU, or
the device's on a GPU). ``ops``: forward + backward of each fused op at the key GPU sizes, the kernels' share of the
time: the profiler evidence for a roofline target that is missed.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

CONV_MATMUL = ("conv", "mm", "matmul", "linear", "bmm", "addmm", "baddbmm")


def summary(prof, rows: int) -> str:
    """The top ops by self time, and the share of conv/matmul kernels in the total self time."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    events = prof.key_averages()
    # the device column is self_device_time_total in recent torch (self_cuda_time_total before)
    key = "self_cpu_time_total" if device == "cpu" else next(
        (k for k in ("self_device_time_total", "self_cuda_time_total") if events and hasattr(events[0], k)),
        "self_cpu_time_total")
    total = sum(getattr(e, key) for e in events) or 1
    heavy = sum(getattr(e, key) for e in events if any(w in e.key.lower() for w in CONV_MATMUL))
    table = events.table(sort_by=key, row_limit=rows, max_name_column_width=48)
    return f"{table}\nconv/matmul share of self {device} time: {100 * heavy / total:.1f} %\n"


def profiled(fn, steps: int, rows: int) -> str:
    for _ in range(2):
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return summary(prof, rows)


def cpsc(steps: int, rows: int) -> None:
    from bench.bench_cpsc import PAIRS, trainer_for

    pair = PAIRS[0].values[0] if hasattr(PAIRS[0], "values") else PAIRS[0]
    trainer = trainer_for(pair, "fused")

    def iteration():
        trainer.generator_step()
        trainer.student_step()

    print(f"## CPSC iteration (generator + student step), {pair[0]} -> {pair[1]}, batch {pair[2]}\n")
    print(profiled(iteration, steps, rows))


def acgkd(steps: int, rows: int) -> None:
    from bench.bench_acgkd import _trainer

    trainer = _trainer("fused")
    print(f"## ACGKD generation step, {trainer.graphs.edge_logits.shape[0]} pseudo-graphs\n")
    print(profiled(trainer.generation_step, steps, rows))
    trainer.finish_generation()
    batch = next(iter(trainer.kd_batches()))
    print("## ACGKD KD step, one batch of pseudo-graphs (forward, backward, optimiser update)\n")
    print(profiled(lambda: trainer.kd_step(batch), steps, rows))


def ops(steps: int, rows: int) -> None:
    if not torch.cuda.is_available():
        print("## ops: the fused Triton / CUDA kernels are profiled on a GPU only")
        return
    from bench import bench_bn_stats, bench_cond_norm, bench_supcon
    from dfkd_fast import binary_concrete_adjacency

    def fwd_bwd(fn, inputs):
        def run():
            out = fn(*inputs)
            leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
            torch.autograd.grad(out, leaves, torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out))
        return run

    features, labels = bench_supcon._inputs(16384, 128, torch.bfloat16)
    cases = [("supcon_loss N=16384 D=128 bf16", fwd_bwd(bench_supcon._fused, (features, labels)))]
    inputs, fn = bench_cond_norm._case((256, 128, 32, 32), torch.bfloat16)["fused"]
    cases.append(("cond_norm (256, 128, 32, 32) bf16", fwd_bwd(fn, inputs)))
    inputs, fns = bench_bn_stats._case(torch.bfloat16)
    cases.append(("bn_stats ResNet-34 B=512 bf16", fwd_bwd(fns["fused"], inputs)))
    logits = torch.randn(64, 1024, 1024, device="cuda", requires_grad=True)
    counts = torch.full((64,), 1024, device="cuda")
    cases.append(("binary_concrete (64, 1024, 1024) fp32 relaxed", fwd_bwd(
        lambda l: binary_concrete_adjacency(l, counts, 2.0 / 3.0, seed=1, symmetric=True, backend="fused"),
        (logits,))))
    for title, run in cases:
        print(f"## {title}: forward + backward\n")
        print(profiled(run, steps, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["cpsc", "acgkd", "ops"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "ops"):
        ops(args.steps, args.rows)
    if args.only in (None, "cpsc"):
        cpsc(args.steps, args.rows)
    if args.only in (None, "acgkd"):
        acgkd(args.steps, args.rows)


if __name__ == "__main__":
    main()
