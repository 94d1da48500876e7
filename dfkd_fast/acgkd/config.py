"""Configurations of the graph distillation trainers: ACGKD, the GFKD baseline, and KD with real graphs.

Each field's ``help`` metadata documents it and becomes the ``dfkd-fast acgkd`` option of the same name. Where the
ACGKD paper leaves a mechanism open (``shared/notes/acgkd.md`` §3), the field says which reading the default takes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dfkd_fast.errors import DfkdError
from dfkd_fast.models.gnn import parse_spec

METHODS = ("acgkd", "gfkd", "real")
CURRICULA = ("confidence", "size", "density", "none")
PROJECTORS = ("gat", "linear", "none")
FEATURE_LOSSES = ("cosine", "mean", "sum")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DistillConfig:
    """Fields shared by every method: the models, the pseudo-graph batch, the KD stage and the run."""

    student: str = _f("gcn-3-32", "student architecture, gcn-L-H or gin-L-H")
    teacher_arch: str | None = _f(None, "expected teacher architecture (e.g. gcn-5-64); checked against the checkpoint")
    num_graphs: int | None = _f(None, "number of pseudo-graphs (default: the teacher's training-set size, as GFKD)")
    min_nodes: int = _f(10, "smallest pseudo-graph (GFKD draws node counts uniformly from 10..29)")
    max_nodes: int = _f(29, "largest pseudo-graph")
    iterations: int = _f(200, "pseudo-graph optimisation steps")
    epochs: int = _f(300, "KD epochs over the pseudo-graphs (GFKD's code: 300)")
    batch_size: int = _f(32, "KD batch size (GFKD: 32)")
    lr: float = _f(0.01, "student learning rate (Adam, linear decay to 0 as in GFKD)")
    kd_temperature: float = _f(2.0, "KD temperature when it is not learnt (GFKD: T = 2)")
    seed: int = _f(0, "seed of the pseudo-graphs, the sampler stream and the student")
    fused: bool = _f(True, "fused ops (the C++ Binary Concrete sampler, fused BN statistics on CUDA) or the reference")
    eval_every: int = _f(10, "evaluate the student on the real test split every this many KD epochs (and score it "
                         "for the label-free selection)")
    holdout: float = _f(0.2, "held-out pseudo-graphs for the label-free selection of student.pt, as a fraction of "
                        "--num-graphs (at least 4; generated with the others, never trained on; 0: student.pt is the "
                        "last student). The student that agrees best with the teacher on them (class-balanced "
                        "agreement, then KL) is kept; KD with real graphs scores on its training graphs instead")
    selection_start: float = _f(0.8, "only students after this fraction of the KD epochs are candidates for the "
                                "label-free selection: earlier GIN students can agree with the teacher on the "
                                "held-out pseudo-graphs while predicting one class on real graphs (MUTAG: 24 of 50 "
                                "runs at some epoch of the second half, recovering as the learning rate decays)")
    collapse_threshold: float = _f(0.9, "warn (one line) when one class gets at least this fraction of the student's "
                                   "predictions on the evaluation graphs (a collapsed student; labels not read)")
    ema: float | None = _f(0.99, "evaluate, select and save an exponential moving average of the student's weights "
                           "(this decay per KD step; None: the raw student). The raw student's accuracy swung by up "
                           "to 10 points between evaluations; the average is what a user can rely on")
    recalibrate_bn: bool = _f(True, "before each evaluation, re-estimate the student's BatchNorm running statistics "
                              "in one pass over all the KD graphs (exact averages instead of the momentum averages "
                              "of the last few batches, which swung the evaluated accuracy); training is unchanged")
    fixed_order: bool = _f(False, "keep one KD batch order for every epoch (GFKD's loader) instead of reshuffling")
    even_batches: bool = _f(True, "split each KD epoch into ceil(graphs / batch_size) near-equal batches instead of "
                            "full batches plus a small remainder (a 3-graph batch of one class destabilised GIN's BN)")
    checkpoint_every: int = _f(50, "write the checkpoint every this many generation steps (and every eval)")
    pictures: int = _f(16, "pseudo-graphs drawn in pictures.png (0: none)")


@dataclass
class ACGKDConfig(DistillConfig):
    """ACGKD: Binary Concrete pseudo-graphs, a widened student on the teacher's classifier, curriculum, adversarial
    temperature (Jia et al., arXiv 2504.00540; mechanisms as reconstructed in shared/notes/acgkd.md §3)."""

    method: str = _f("acgkd", "distillation method", choices=METHODS)
    # pseudo-graphs
    graph_factor: float = _f(1.0, "pseudo-graphs per graph of --num-graphs (the training-set size): more graphs, "
                             "more node-feature patterns and KD steps per epoch for the student, at proportionally "
                             "more time. On MUTAG (131 training graphs) 3 raised both students by 0.4-1.7 points on two "
                             "development splits; 1 is GFKD's count")
    tau: float = _f(1.0, "Binary Concrete temperature at the first generation step")
    tau_end: float | None = _f(0.3, "temperature at the last step (geometric annealing); None keeps tau")
    # the spatial budget: --edge-budget, else --xi, else --mean-degree (the default); none of them: no budget
    mean_degree: float | None = _f(2.0, "spatial complexity as a mean degree: at most floor(mean_degree * nodes / 2) "
                                   "edges per graph, whatever its size (real MUTAG 2.2, NCI1 2.2, PROTEINS 3.7). xi "
                                   "gave small graphs too few edges and large ones too many (mean degree 1.5 at 10-14 "
                                   "nodes, 2.5 at 25-29), and students 0.7-1.8 points lower on MUTAG and PROTEINS")
    xi: float | None = _f(None, "spatial complexity xi as a fraction of the node pairs: at most floor(xi * pairs) "
                          "edges per graph (notes §3.2 (b); real MUTAG: 0.13); given, it replaces --mean-degree")
    edge_budget: int | None = _f(None, "spatial complexity as an absolute edge budget per graph (replaces --xi and "
                                 "--mean-degree)")
    init_density: float = _f(0.1, "initial mean edge probability (GFKD starts at 0.5)")
    symmetric: bool = _f(True, "undirected pseudo-graphs (mirrored upper triangle), like the real TU graphs")
    degree_cap: float | None = _f(2.0, "per-node degree bound inside the budget, as a multiple of the budget's mean "
                                  "degree (at least 2): each node keeps its strongest edges. Without it a few hubs "
                                  "took the budget (MUTAG: degrees up to 12, 17% isolated nodes), and a sum-GIN "
                                  "student learnt BN statistics that real graphs never match. None: no bound")
    connect_isolated: bool = _f(True, "join each node the budget left isolated to its strongest partner (a constant "
                                "edge; real TU graphs have almost no isolated nodes)")
    straight_through: bool = _f(True, "hard 0/1 edges forward, relaxed gradient backward (Binary Concrete ST)")
    hard_features: bool = _f(False, "one-hot argmax node features forward, softmax gradient backward (off: on "
                             "MUTAG the students then collapsed to one class)")
    lr_structure: float = _f(0.1, "Adam learning rate of the edge logits")
    lr_features: float = _f(0.05, "Adam learning rate of the node-feature logits")
    w_ce: float = _f(1.0, "weight of the CE between the teacher's prediction and the sampled label")
    w_bn: float = _f(0.5, "weight of the BN-statistics loss over the teacher's BatchNorm layers (valid nodes); "
                     "matching the statistics is what makes the students transfer to real graphs")
    w_entropy: float = _f(0.01, "weight of the mean node-feature entropy (pushes features to one-hot)")
    # student
    projector: str = _f("gat", "projector from the student's width to the teacher's, feeding the teacher's "
                        "frozen classifier (none: the student keeps its own classifier)", choices=PROJECTORS)
    feature_loss: str = _f("cosine", "feature term between projected student and teacher pooled features: cosine "
                           "(1 - cosine similarity: scale-free), mean (MSE of mean-pooled features) or sum (MSE of "
                           "the sum-pooled features; swung between 8 and 119 between epochs)", choices=FEATURE_LOSSES)
    w_feat: float = _f(1.0, "weight of the feature term (with --feature-loss sum, 0.1 kept the KD term in play)")
    w_kd: float = _f(1.0, "weight of the logit KD term")
    # curriculum over pseudo-graphs
    curriculum: str = _f("confidence", "difficulty order of the pseudo-graphs, easy first", choices=CURRICULA)
    curriculum_start: float = _f(0.4, "fraction of the pseudo-graphs (the easiest) used in the first KD epoch")
    curriculum_ramp: float = _f(0.5, "fraction of the KD epochs after which every pseudo-graph is used")
    balanced_curriculum: bool = _f(True, "class-balanced curriculum pools: easiest first within each class of the "
                                   "teacher's prediction, interleaved (unbalanced, the first pool was 85-94% one "
                                   "class and the students collapsed onto it)")
    resample: bool = _f(True, "draw fresh edges from the learnt distribution every KD epoch")
    selection_draws: int = _f(8, "edge draws of the held-out pseudo-graphs the label-free selection scores (with one, "
                              "the ~26 held-out MUTAG graphs scored agreement in steps of 4 points)")
    # adversarial temperature (CTKD)
    adversarial: bool = _f(True, "learn the KD temperature adversarially (gradient reversal, CTKD)")
    t_min: float = _f(1.0, "smallest adversarial temperature (CTKD t_start)")
    t_range: float = _f(10.0, "temperature range: tau = t_min + t_range * sigmoid(theta)")
    reversal_max: float = _f(1.0, "final gradient-reversal strength")
    reversal_ramp: int = _f(10, "KD epochs of the cosine ramp of the reversal strength from 0")


@dataclass
class GFKDConfig(DistillConfig):
    """GFKD (Deng & Zhang, IJCAI 2021): dense asymmetric Bernoulli structure, ARM gradients, then plain KD."""

    method: str = _f("gfkd", "distillation method", choices=METHODS)
    iterations: int = _f(1500, "pseudo-graph optimisation steps (GFKD's script: 1500; paper: 2500)")
    eval_every: int = _f(1, "evaluate every this many KD epochs (GFKD: every epoch, reporting the best)")
    fixed_order: bool = _f(True, "one KD batch order for every epoch (GFKD's released loader)")
    even_batches: bool = _f(False, "near-equal KD batches (GFKD: batches of 32 and the remainder)")
    recalibrate_bn: bool = _f(False, "re-estimate the student's BN statistics before evaluating (GFKD: no)")
    ema: float | None = _f(None, "weight average of the student (GFKD: none, the raw student is evaluated)")
    lr_structure: float = _f(1.0, "Adam learning rate of the structure logits (GFKD: 1.0; `dfkd-fast acgkd` uses 5.0 "
                             "for a PROTEINS, COLLAB or REDDIT-BINARY teacher unless given)")
    lr_features: float = _f(0.01, "Adam learning rate of the feature logits")
    lr_decay_every: int = _f(700, "multiply both learning rates by 0.1 every this many steps (GFKD's code)")
    w_bn: float = _f(0.01, "weight of the BN-statistics loss (GFKD: 0.01)")
    w_entropy: float = _f(1e-6, "weight of the node-feature entropy (GFKD's script: 1e-6)")


@dataclass
class RealKDConfig(DistillConfig):
    """KD on the teacher's real training graphs (the upper bound GFKD compares against); no generation."""

    method: str = _f("real", "distillation method", choices=METHODS)
    iterations: int = _f(0, "unused: no pseudo-graphs")


CONFIGS = {"acgkd": ACGKDConfig, "gfkd": GFKDConfig, "real": RealKDConfig}


def make_config(method: str = "acgkd", **overrides) -> DistillConfig:
    """The config of ``method`` with ``overrides`` (unknown names and impossible values are DfkdErrors); the
    options that accept None take it as given."""
    if method not in CONFIGS:
        raise DfkdError(f"--method must be one of {METHODS}, got {method!r}")
    cls = CONFIGS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise DfkdError(f"--method {method} has no option {', '.join('--' + u.replace('_', '-') for u in unknown)}")
    config = cls(**overrides)  # an explicit None is a value (e.g. --ema none, --tau-end none)
    validate(config)
    return config


def validate(c: DistillConfig) -> None:
    """One-line DfkdErrors for values no run can use (the edge budget against the node pairs included)."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise DfkdError(message)

    parse_spec(c.student)
    if c.teacher_arch is not None:
        parse_spec(c.teacher_arch)
    need(2 <= c.min_nodes <= c.max_nodes, f"--min-nodes {c.min_nodes} / --max-nodes {c.max_nodes}: need "
         "2 <= min-nodes <= max-nodes")
    need(c.num_graphs is None or c.num_graphs >= 1, f"--num-graphs must be >= 1, got {c.num_graphs}")
    for name in ("epochs", "batch_size", "eval_every", "checkpoint_every"):
        need(getattr(c, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(c, name)}")
    need(c.iterations >= 0, f"--iterations must be >= 0, got {c.iterations}")
    need(c.lr > 0 and c.kd_temperature > 0, "--lr and --kd-temperature must be > 0")
    need(c.ema is None or 0 <= c.ema < 1, f"--ema must be in [0, 1) or None, got {c.ema}")
    need(0 <= c.holdout <= 1, f"--holdout must be in [0, 1], got {c.holdout}")
    need(0 <= c.selection_start < 1, f"--selection-start must be in [0, 1), got {c.selection_start}")
    need(0 < c.collapse_threshold <= 1, f"--collapse-threshold must be in (0, 1], got {c.collapse_threshold}")
    if isinstance(c, ACGKDConfig):
        need(c.tau > 0 and (c.tau_end is None or c.tau_end > 0), "--tau and --tau-end must be > 0")
        need(c.curriculum in CURRICULA, f"--curriculum must be one of {CURRICULA}, got {c.curriculum!r}")
        need(c.projector in PROJECTORS, f"--projector must be one of {PROJECTORS}, got {c.projector!r}")
        need(c.feature_loss in FEATURE_LOSSES,
             f"--feature-loss must be one of {FEATURE_LOSSES}, got {c.feature_loss!r}")
        need(c.degree_cap is None or c.degree_cap > 0, f"--degree-cap must be > 0 or None, got {c.degree_cap}")
        need(c.mean_degree is None or c.mean_degree > 0, f"--mean-degree must be > 0 or None, got {c.mean_degree}")
        need(c.selection_draws >= 1, f"--selection-draws must be >= 1, got {c.selection_draws}")
        need(c.graph_factor > 0, f"--graph-factor must be > 0, got {c.graph_factor}")
        need(0 < c.init_density < 1, f"--init-density must be in (0, 1), got {c.init_density}")
        need(0 < c.curriculum_start <= 1 and 0 <= c.curriculum_ramp <= 1,
             "--curriculum-start must be in (0, 1] and --curriculum-ramp in [0, 1]")
        if c.edge_budget is not None:
            pairs = c.min_nodes * (c.min_nodes - 1) // (2 if c.symmetric else 1)
            need(c.edge_budget >= 1, f"--edge-budget must be >= 1, got {c.edge_budget}")
            need(c.edge_budget <= pairs,
                 f"--edge-budget {c.edge_budget} is larger than the {pairs} node pairs of a {c.min_nodes}-node "
                 f"pseudo-graph (--min-nodes {c.min_nodes}): it would not bound the edges")
        elif c.xi is not None:
            need(0 < c.xi <= 1, f"--xi must be in (0, 1] (a fraction of the node pairs), got {c.xi}")
    if isinstance(c, GFKDConfig):
        need(c.lr_decay_every >= 1, f"--lr-decay-every must be >= 1, got {c.lr_decay_every}")
