"""CPSC-DFKD trainer steps: one generator step and one student step, in one run: ``fused`` (the trainer's defaults:
fused ops, bf16 autocast and channels_last on CUDA), ``eager`` (the reference ops, the other speed options on),
``compile`` (``torch.compile`` of the reference loss computation) and ``upstream``, the upstream-style step: the
reference ops with every speed option off (fp32, contiguous, no compile, cuDNN deterministic, as upstream runs).

On a GPU: ResNet-34 -> ResNet-18 at batch 512 / 100 classes and WRN-40-2 -> WRN-16-2 (batch 512 / 100 classes),
bf16 autocast + channels_last (the trainer's CUDA defaults). On a CPU: WRN-16-2 -> WRN-16-1 at batch 16 / 10
classes, eager and upstream only (the same step there: autocast and channels_last are CUDA options; the Triton
kernels are benchmarked on a GPU; compiling on a CPU costs more than CI allows).
Teachers are randomly initialised: the work per step does not depend on the weights.

    pytest bench/bench_cpsc.py --benchmark-autosave            # record; GPU results go to bench/results/<gpu>/
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, key_on_gpu, peaks, skip_unless_runnable, time_op
from dfkd_fast.cpsc.config import CPSCConfig
from dfkd_fast.cpsc.trainer import CPSCTrainer
from dfkd_fast.models import build_model
from dfkd_fast.runs import seed_everything

# (teacher, student, batch, classes, TFLOP per generator step, per student step): notes/cpsc-dfkd.md §4, with the
# teacher's and student's weight gradients skipped in the generator step
GPU_PAIRS = [key_on_gpu(("resnet34", "resnet18", 512, 100, 3.87, 3.01)), ("wrn_40_2", "wrn_16_2", 512, 100, 1.24, 0.77)]
CPU_PAIRS = [("wrn_16_2", "wrn_16_1", 16, 10, None, None)]
PAIRS = GPU_PAIRS if ON_GPU else CPU_PAIRS
IMPL_CONFIG = {"fused": dict(fused=True), "eager": dict(fused=False), "compile": dict(fused=False, compile=True),
               "upstream": dict(fused=False, amp="off", channels_last=False, compile=False, deterministic=True)}
NOTES = {"fused": "the trainer's defaults (fused ops; bf16 autocast and channels_last on CUDA)",
         "eager": "the reference ops, the other speed options on", "compile": "torch.compile of the reference losses",
         "upstream": "the upstream-style step: reference ops, fp32, contiguous, no compile, cuDNN deterministic"}

_trainers: dict[tuple, CPSCTrainer] = {}


@pytest.fixture(scope="module", autouse=True)
def _restore_cudnn_flags():
    """Each trainer sets cuDNN's benchmark / deterministic flags (upstream: deterministic); the later suites get
    the flags they started with back."""
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    _trainers.clear()


def trainer_for(pair, impl: str) -> CPSCTrainer:
    key = (pair, impl)
    if key not in _trainers:
        teacher_name, student_name, batch, classes = pair[:4]
        seed_everything(0)
        cfg = CPSCConfig(teacher=teacher_name, student=student_name, dataset="cifar100", batch_size=batch,
                         **IMPL_CONFIG[impl])
        teacher = build_model(teacher_name, classes)
        _trainers.clear()  # one set of networks on the device at a time
        _trainers[key] = CPSCTrainer.from_config(cfg, teacher, in_channels=3, image_size=32,
                                                 norm=((0.5,) * 3, (0.25,) * 3), device=DEVICE, log=lambda *a: None)
    return _trainers[key]


@pytest.mark.parametrize("impl", list(IMPL_CONFIG))
@pytest.mark.parametrize("step", ["generator", "student"])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}-b{p[2]}-c{p[3]}")
def test_cpsc_step(benchmark, pair, step, impl):
    skip_unless_runnable(impl)
    if impl == "compile" and not ON_GPU:
        pytest.skip("torch.compile of whole steps is benchmarked on a GPU (compiling on a CPU exceeds CI's budget)")
    trainer = trainer_for(pair, impl)
    run = trainer.generator_step if step == "generator" else trainer.student_step
    tflop = pair[4] if step == "generator" else pair[5]
    flops = {"fwd": tflop * 1e12, "bwd": 0.0} if tflop else None
    time_op(benchmark, run, (), "fwd", op=f"cpsc_{step}_step", impl=impl, impl_note=NOTES[impl],
            shape=[pair[2], pair[3]], flops=flops, rounds=10 if ON_GPU else 3)
    info = benchmark.extra_info
    autocast = ON_GPU and impl != "upstream"
    # one table row for every impl (dtype "-"): the precision differs by impl and is recorded beside it
    info.update(mode="step", pair=f"{pair[0]}->{pair[1]}", dtype="-", precision="bf16 autocast" if autocast else "fp32")
    if ON_GPU:
        info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        if "TFLOPs" in info and peaks() and autocast:  # the convolutions run in bf16 on tensor cores
            info["pct_peak_flops"] = 100 * info["TFLOPs"] * 1e12 / peaks()[1]
