"""ACGKD trainer steps, fused vs reference: one pseudo-graph generation step and one KD step on PROTEINS-sized batches.

* ``acgkd_generation``: sample every pseudo-graph (Binary Concrete under the xi budget), the teacher's forward with
  the BN-statistics hooks, CE + BN + entropy, and the backward to the edge and feature logits (``fwd+bwd``; the
  ``fwd`` mode times the loss alone). The optimiser update is left out (it is the same for both implementations).
* ``acgkd_kd``: one batch of 32 hard pseudo-graphs through the teacher and the widened student, feature MSE + KD
  at the adversarial temperature, and the backward to the student.
* ``gfkd_generation``: GFKD mode's step at the same graph count (two ARM forwards + the feature backward), for scale.

Implementations: ``fused`` (the trainer's ``fused=True``: the C++/CUDA Binary Concrete sampler, Triton BN statistics
on CUDA) and ``upstream``, the upstream-style step (``fused=False``: the reference ops; the trainer has no other speed
option to turn off). ``torch.compile`` of a whole step is not timed: node masks
are data-dependent (graph breaks). Sizes: PROTEINS' 779 training graphs on a GPU, 128 on a CPU.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, record_case, skip_unless_runnable, time_op
from dfkd_fast.acgkd import losses
from dfkd_fast.acgkd.config import make_config
from dfkd_fast.acgkd.methods import make_trainer
from dfkd_fast.models.gnn import build_gnn

GRAPHS = 779 if ON_GPU else 128  # PROTEINS: 1113 graphs, 70% train
FEATURES, CLASSES = 3, 2  # PROTEINS' node labels and classes
IMPLS = ["fused", "upstream"]
NOTES = {"fused": "the trainer's fused=True (the C++/CUDA sampler; fused BN statistics on CUDA)",
         "upstream": "the upstream-style step: the reference ops (fused=False)"}
pytestmark = [pytest.mark.key] if ON_GPU else []  # bench/gpu_session.sh times the key cases first


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_gnn("gcn-5-64", FEATURES, CLASSES).eval()


def _trainer(impl: str, method: str = "acgkd"):
    config = make_config(method, num_graphs=GRAPHS, fused=impl == "fused", student="gin-3-32")
    return make_trainer(config, _teacher(), device=DEVICE)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_acgkd_generation_step(benchmark, impl, mode):
    skip_unless_runnable(impl, kind="cpp")  # fused = the Binary Concrete kernel of dfkd_fast._C
    trainer = _trainer(impl)
    graphs = trainer.graphs

    def loss(edge_logits, feature_logits):  # the two tensors are graphs' own parameters
        return trainer.generation_objective(0.5)[0]["loss"]

    time_op(benchmark, loss, [graphs.edge_logits, graphs.feature_logits], mode, op="acgkd_generation",
            impl=impl, impl_note=NOTES[impl], shape=list(graphs.edge_logits.shape))


@pytest.mark.parametrize("impl", IMPLS)
def test_acgkd_kd_step(benchmark, impl):
    skip_unless_runnable(impl, kind="cpp")
    trainer = _trainer(impl)
    trainer.finish_generation()
    batch = next(iter(trainer.kd_batches()))
    params = [p for p in trainer.student.parameters() if p.requires_grad]

    def loss(*_params):
        with torch.no_grad():
            t_feat, t_logits = trainer.teacher.features(batch)
        s_feat, s_logits = trainer.student.features(batch)
        return losses.feature_loss(s_feat, t_feat) + losses.kd_loss(s_logits, t_logits, trainer.temperature(1.0))

    time_op(benchmark, loss, params, "fwd+bwd", op="acgkd_kd", impl=impl,
            impl_note=NOTES[impl], shape=list(batch.adj.shape))


def test_gfkd_generation_step(benchmark):
    trainer = _trainer("upstream", "gfkd")
    record_case(benchmark, op="gfkd_generation", impl="upstream", mode="step", shape=trainer.graphs.structure.shape,
                impl_note="GFKD mode's generation step, reference ops (for scale)")
    benchmark.pedantic(trainer.generation_step, rounds=20 if ON_GPU else 3, warmup_rounds=1, iterations=1)
