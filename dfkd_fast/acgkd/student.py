"""ACGKD's widened student: the student GNN, a projector to the teacher's width, and the teacher's frozen classifier.

This is the SimKD recipe (Chen et al., CVPR 2022) with ACGKD's GAT projector (shared/notes/acgkd.md §3.3): node
embeddings of the student (width ``H_s``) are projected to the teacher's width ``H_t`` over the same graph, sum-pooled
like the teacher's readout, and classified by a frozen copy of the teacher's ``Linear(H_t, C)``. The deployed
student is the whole module. Training loss: ``w_feat * MSE(pooled, teacher pooled) + w_kd * KD(logits)``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dfkd_fast.models.gnn import GNN, Structure, build_gnn


class GATProjector(nn.Module):
    """One single-head GAT layer ``H_s -> H_t`` (Velickovic et al.) over the graph's edges and self-loops."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(out_dim))
        self.att_dst = nn.Parameter(torch.empty(out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        bound = out_dim**-0.5
        nn.init.uniform_(self.att_src, -bound, bound)
        nn.init.uniform_(self.att_dst, -bound, bound)

    def forward(self, h: Tensor, s: Structure) -> Tensor:
        z = self.lin(h)
        return s.attend(z, z @ self.att_src, z @ self.att_dst) + self.bias


class LinearProjector(nn.Module):
    """A per-node ``Linear(H_s, H_t)`` (the structure is not used)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, h: Tensor, s: Structure) -> Tensor:
        return self.lin(h)


PROJECTOR_CLASSES = {"gat": GATProjector, "linear": LinearProjector}


class ProjectedStudent(nn.Module):
    """``classifier_T(sum_pool(projector(student.embed(G))))``; the classifier is frozen (``requires_grad=False``)."""

    def __init__(self, student: GNN, projector: str, classifier: nn.Linear) -> None:
        super().__init__()
        student.linears_prediction = None  # the teacher's classifier replaces the student's own
        self.student = student
        self.projector_kind = projector
        self.projector = PROJECTOR_CLASSES[projector](student.hidden, classifier.in_features)
        self.classifier = classifier
        self.classifier.requires_grad_(False)

    def features(self, graph) -> tuple[Tensor, Tensor]:
        """(projected pooled feature ``[B, H_t]``, logits ``[B, C]``)."""
        h, s = self.student.embed(graph)
        pooled = s.pool(self.projector(h, s))
        return pooled, self.classifier(pooled)

    def forward(self, graph) -> Tensor:
        return self.features(graph)[1]


def build_student(spec: str, projector: str, teacher: GNN) -> nn.Module:
    """The student of ``spec`` (same input width and classes as the teacher), widened unless ``projector='none'``."""
    student = build_gnn(spec, teacher.in_dim, teacher.num_classes)
    if projector == "none":
        return student
    return ProjectedStudent(student, projector, copy.deepcopy(teacher.linears_prediction))


def describe(model: nn.Module) -> dict:
    """What :func:`rebuild` needs to construct ``model`` again (stored next to its state_dict)."""
    if isinstance(model, ProjectedStudent):
        return {"arch": model.student.spec, "projector": model.projector_kind, "in_dim": model.student.in_dim,
                "num_classes": model.student.num_classes, "teacher_hidden": model.classifier.in_features}
    return {"arch": model.spec, "projector": "none", "in_dim": model.in_dim, "num_classes": model.num_classes}


def rebuild(meta: dict) -> nn.Module:
    student = build_gnn(meta["arch"], meta["in_dim"], meta["num_classes"])
    if meta.get("projector", "none") == "none":
        return student
    return ProjectedStudent(student, meta["projector"], nn.Linear(meta["teacher_hidden"], meta["num_classes"]))
