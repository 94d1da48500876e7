"""ACGKD vs GFKD mode vs KD with real graphs on the TU datasets: GCN-5-64 teacher -> GCN-3-32 and GIN-3-32 students.

    python examples/acgkd_tu.py --data-root ../shared/data/TU                      # the study (resumable)
    python examples/acgkd_tu.py --data-root ../shared/data/TU --datasets MUTAG --seeds 3
    python examples/acgkd_tu.py --data-root ../shared/data/TU --table-only         # tables from the cache only
    python examples/acgkd_tu.py --data-root ../shared/data/TU --choose-teachers    # the teacher seeds, retrained
    python examples/acgkd_tu.py --data-root ../shared/data/TU --quick --cache /tmp/c --out /tmp/o   # smoke run
    python examples/acgkd_tu.py --data-root ../shared/data/TU --datasets MUTAG --split-seed 1 --teacher-seed 1 \
        --cache /tmp/dev --table /tmp/dev.md --readme none                     # a development split

For each dataset (MUTAG, PTC_MR, PROTEINS, IMDB-BINARY, NCI1): a GCN-5-64 teacher on GFKD's 70/30 split (seed 29),
seeded before it is built (the same command gives the same teacher), of seeds 0-4 the one with the highest accuracy on
its training graphs (``--choose-teachers`` retrains the candidates; no test label is read); then, for each seed,
ACGKD and GFKD mode each generate one set of pseudo-graphs (as many as the training set, plus ACGKD's held-out ones)
from which both students are distilled at each method's own recipe, and KD with the real training graphs gives the
reference. Every cell reports the student's accuracy on the real 30% test split after the last KD epoch, for the
label-free-selected student (``student.pt``: best agreement with the teacher on held-out pseudo-graphs; no test label
read) and for the best evaluated epoch (GFKD's protocol, which selects on test labels).

``--split-seed`` runs the same study on another 70/30 split (its teacher chosen the same way: ``--choose-teachers
--split-seed S``, then ``--teacher-seed``): a development split, so that a design choice is judged on test labels the
reported table never shows. ``--teacher gin-5-64`` (with ``--teacher-seed``) distils from another teacher
architecture.

Each (dataset, student, method, seed) is one JSON file under ``--cache`` (committed: examples/acgkd_tu_cache); a
rerun skips the cells it holds, so the study resumes after an interruption. Generations are kept under ``--out`` so a
second student reuses them. The tables (examples/acgkd_tu_results.md, and the README between ``<!-- study:begin -->``
and ``<!-- study:end -->``) are regenerated from the cache after every cell.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from dfkd_fast._cli_args import accept_both_spellings
from dfkd_fast.acgkd.config import make_config
from dfkd_fast.acgkd.methods import make_trainer
from dfkd_fast.acgkd.teacher import TEACHER_FILE, dataset_and_split, load_teacher, save_model, train_model
from dfkd_fast.acgkd.trainer import accuracy, class_fractions, graph_batches, predictions, pseudo_graph_count
from dfkd_fast.data.graphs import GFKD_SPLIT_SEED, TU_DATASETS
from dfkd_fast.errors import DfkdError
from dfkd_fast.models.gnn import build_gnn, parse_spec
from dfkd_fast.runs import atomic_save, load_checkpoint, seed_everything

HERE = Path(__file__).resolve().parent
TEACHER = "gcn-5-64"
STUDENTS = ("gcn-3-32", "gin-3-32")
METHODS = ("acgkd", "gfkd", "real")
NAMES = {"acgkd": "ACGKD", "gfkd": "GFKD mode", "real": "KD (real graphs)"}
# Each method's recipe (GFKD mode: GFKD's released script; ACGKD: this package's defaults) and the CPU budgets the
# study ran with on a shared 2-core machine: fewer KD epochs than the recipes' 300 except on MUTAG (cheap enough to run
# them) and, on the larger datasets, fewer GFKD generation steps (its lr decay scaled with them). The table header
# prints what was used. MUTAG's ACGKD draws three times its 131 training graphs' count of pseudo-graphs: chosen on the
# development splits of seeds 1 and 2 (gin-3-32 +1.7 and +1.2 points over 10 seeds, gcn-3-32 +0.4 and +1.1 over 5),
# not on GFKD's split, whose test labels the table reports.
RECIPE_STEPS = {"acgkd": 200, "gfkd": 1500}
SETTINGS = {
    "MUTAG": {"teacher_seed": 3, "teacher_epochs": 200, "epochs": 300,
              "acgkd": {"iterations": 200, "graph_factor": 3.0},
              "gfkd": {"iterations": 1500, "lr_structure": 1.0, "lr_decay_every": 700}},
    "PTC_MR": {"teacher_seed": 0, "teacher_epochs": 200, "epochs": 100, "acgkd": {"iterations": 200},
               "gfkd": {"iterations": 1000, "lr_structure": 1.0, "lr_decay_every": 500}},
    "PROTEINS": {"teacher_seed": 2, "teacher_epochs": 100, "epochs": 40, "acgkd": {"iterations": 100},
                 "gfkd": {"iterations": 400, "lr_structure": 5.0, "lr_decay_every": 200}},
    "IMDB-BINARY": {"teacher_seed": 2, "teacher_epochs": 100, "epochs": 50, "acgkd": {"iterations": 100},
                    "gfkd": {"iterations": 500, "lr_structure": 5.0, "lr_decay_every": 250}},
    "NCI1": {"teacher_seed": 1, "teacher_epochs": 60, "epochs": 20, "acgkd": {"iterations": 100},
             "gfkd": {"iterations": 300, "lr_structure": 1.0, "lr_decay_every": 150}},
}
# The teacher of each dataset: of seeds 0-4, the one with the highest accuracy on its own training graphs (ties: the
# lowest seed); no test label is read. `--choose-teachers` retrains the candidates and prints what this table holds.
TEACHER_SEEDS = range(5)
TEACHER_TRAIN_ACC = {"MUTAG": (72.5, 70.2, 83.2, 85.5, 85.5), "PTC_MR": (76.7, 65.4, 66.3, 65.8, 63.3),
                     "PROTEINS": (72.9, 75.7, 76.6, 74.7, 74.8), "IMDB-BINARY": (84.6, 83.9, 85.4, 85.1, 85.3),
                     "NCI1": (59.8, 74.4, 70.8, 71.9, 73.5)}
TEACHER_NOTE = ("Teachers: of seeds 0-4, the one with the highest accuracy on its own training graphs (ties: the "
                "lowest seed; no test label read); training accuracy (%) of seeds 0-4: " + "; ".join(
                    f"{name} {' / '.join(f'{a:.1f}' for a in accs)}" for name, accs in TEACHER_TRAIN_ACC.items())
                + " (`python examples/acgkd_tu.py --choose-teachers` retrains them).")
QUICK = {"teacher_seed": 0, "teacher_epochs": 2, "epochs": 2, "acgkd": {"iterations": 2}, "gfkd": {"iterations": 2}}
TIMED_STEPS = 10
STUDY_SEEDS = 5


def train_teacher(name: str, data_root: str, settings: dict, seed: int):
    """(teacher of ``seed``, its test accuracy, train graphs, test graphs), seeded before it is built (the initial
    weights are part of the seeded run). ``settings`` may name another ``split_seed`` and ``teacher_arch``."""
    dataset, train, test = dataset_and_split(name, data_root, split_seed=settings.get("split_seed", GFKD_SPLIT_SEED))
    seed_everything(seed)
    model = build_gnn(settings.get("teacher_arch", TEACHER), dataset.num_features, dataset.num_classes)
    acc = train_model(model, train, test, epochs=settings["teacher_epochs"], seed=seed,
                      desc=f"{name} teacher seed {seed}")
    return model, acc, train, test


def teacher_for(name: str, data_root: str, out: Path, settings: dict):
    """The dataset's teacher (seed ``teacher_seed``, trained once, kept under ``out``), its train and test graphs."""
    path = out / name / TEACHER_FILE
    split_seed = settings.get("split_seed", GFKD_SPLIT_SEED)
    if path.is_file():
        _, train, test = dataset_and_split(name, data_root, split_seed=split_seed)
    else:
        model, acc, train, test = train_teacher(name, data_root, settings, settings["teacher_seed"])
        save_model(path, model, role="teacher", dataset=name, split={"seed": split_seed}, train_size=len(train),
                   test_acc=acc)
    teacher, _ = load_teacher(path, settings.get("teacher_arch", TEACHER))
    return teacher, train, test


def train_accuracy(name: str, data_root: str, settings: dict, seed: int) -> float:
    """Training-set accuracy of the candidate teacher of ``seed`` (trained as :func:`teacher_for` trains it)."""
    model, _, train, _ = train_teacher(name, data_root, settings, seed)
    return accuracy(model, graph_batches(train))


def cell_path(cache: Path, name: str, student: str, method: str, seed: int) -> Path:
    return cache / name / f"{method}-{student}-seed{seed}.json"


def run_cell(name: str, student: str, method: str, seed: int, teacher, train, test, settings: dict,
             out: Path, overrides: dict | None = None) -> dict:
    """One distillation; ACGKD and GFKD mode reuse the seed's generation (kept in ``out``) across students.
    ``overrides`` (``--set``) change the config of the method's cells (an ablation; its generations are kept apart)."""
    overrides = overrides or {}
    options = {"student": student, "seed": seed, "epochs": settings["epochs"], "num_graphs": len(train),
               **settings.get(method, {}), **overrides}
    trainer = make_trainer(make_config(method, **options), teacher, eval_graphs=test,
                           train_graphs=train if method == "real" else None)
    generation = {}
    if method != "real":
        tag = "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))
        path = out / name / f"generation-{method}-seed{seed}{tag}.pt"
        if path.is_file():
            state = load_checkpoint(path)
            trainer.load_generation(state)
        else:
            trainer.fit(max_steps=trainer.iterations)  # generation only
            state = trainer.state_dict()
            atomic_save(state, path)
        generation = {"gen_s": state["generation_s"], "gen_steps": state["step"]}
    summary = trainer.fit()
    top = max(class_fractions(predictions(trainer.selected_student(), graph_batches(test)), teacher.num_classes))
    return {"dataset": name, "student": student, "method": method, "seed": seed, "last": summary["last_acc"],
            "selected": summary["selected_acc"], "best": summary["best_acc"],
            "selected_epoch": summary["selected_epoch"], "selected_top_class_fraction": top,
            "kd_s": summary["kd_s"], **generation, "options": options}


def time_generation(teacher, graphs: int, steps: int) -> dict:
    """CPU seconds per generation step of each method at the same graph count (after one warm-up step)."""
    per_step = {}
    for method in ("acgkd", "gfkd"):
        trainer = make_trainer(make_config(method, num_graphs=graphs, holdout=0), teacher)
        trainer.generation_step()
        start = time.process_time()
        for _ in range(steps):
            trainer.generation_step()
        per_step[method] = (time.process_time() - start) / steps
    return per_step


def graph_count_phrase(acgkd: dict) -> str:
    """The budget line's words for ACGKD settings that draw other than the training-set count of pseudo-graphs."""
    factor = acgkd.get("graph_factor", 1.0)
    return "" if factor == 1.0 else f" on {factor:g}x the training-set count of pseudo-graphs"


def mean_std(values: list) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "–"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def load_cells(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob("*/*.json")) if p.name != "dataset.json"]


def tables(cache: Path, seeds: list[int], datasets: list[str], variant: dict | None = None) -> str:
    """The study's Markdown tables, from the cache alone (what is missing is marked and listed); ``variant`` is what
    the run changed of every dataset's settings (``split_seed``, ``teacher_arch``, ``teacher_seed``)."""
    variant = variant or {}
    split_seed, teacher = variant.get("split_seed", GFKD_SPLIT_SEED), variant.get("teacher_arch", TEACHER)
    teacher_seed = variant.get("teacher_seed")
    cells = load_cells(cache)
    info = {p.parent.name: json.loads(p.read_text()) for p in cache.glob("*/dataset.json")}
    split = ("GFKD's 70/30 split (seed 29)" if split_seed == GFKD_SPLIT_SEED else
             f"the development 70/30 split of seed {split_seed}, not GFKD's")
    lines = [f"Teacher {teacher} (seeded) on {split}. Test accuracy (%) of the student, mean "
             f"± std over the seeds present (of {seeds}): after the last KD epoch, label-free selected (`student.pt`: "
             "best agreement with the teacher on held-out pseudo-graphs, or for real-graph KD on its training graphs; no "
             "test label read), and the best evaluated epoch (GFKD's protocol: selects on test labels); the worst "
             "seed of the selected student; the majority-class rate of the test split. Each method at its own recipe "
             "under the CPU budgets listed below the table.", "",
             "| dataset | teacher | majority | student | method | seeds | last | selected | best evaluated "
             "| worst seed (selected) |", "|---|---|---|---|---|---|---|---|---|---|"]
    missing = {}
    for name in datasets:
        d = info.get(name)
        for student in STUDENTS:
            for method in METHODS:
                runs = [c for c in cells if (c["dataset"], c["student"], c["method"]) == (name, student, method)
                        and c["seed"] in seeds]
                done = sorted(c["seed"] for c in runs)
                lacking = [str(s) for s in seeds if s not in done]
                if lacking:
                    missing.setdefault(name, []).append(f"{student} {NAMES[method]} seeds {', '.join(lacking)}")
                if d is None:
                    continue
                worst = f"{100 * min(c['selected'] for c in runs):.1f}" if runs else "–"
                lines.append(f"| {name} | {100 * d['teacher_acc']:.1f} | {100 * d['majority']:.1f} | {student} "
                             f"| {NAMES[method]} | {len(runs)} | {mean_std([c['last'] for c in runs])} "
                             f"| {mean_std([c['selected'] for c in runs])} | {mean_std([c['best'] for c in runs])} "
                             f"| {worst} |")
    lines += ["", "Pseudo-graph generation at equal graph count (the training-set size): CPU seconds per step (one "
              f"thread, mean of {TIMED_STEPS} steps after a warm-up) and per recipe (ACGKD {RECIPE_STEPS['acgkd']} "
              f"steps, GFKD's script {RECIPE_STEPS['gfkd']}); and the study's own generations (wall seconds, mean over "
              "seeds, steps as run, on a 2-core machine shared with other jobs at low priority: only the ratio means "
              "anything):", "",
              "| dataset | graphs | ACGKD s/step | GFKD s/step | ACGKD recipe | GFKD recipe | recipe speed-up "
              "| study: ACGKD / GFKD |", "|---|---|---|---|---|---|---|---|"]
    for name in datasets:
        d = info.get(name)
        if d is None or "per_step" not in d:
            continue
        a, g = d["per_step"]["acgkd"], d["per_step"]["gfkd"]
        ra, rg = a * RECIPE_STEPS["acgkd"], g * RECIPE_STEPS["gfkd"]
        study = []
        for method in ("acgkd", "gfkd"):
            gens = list({c["seed"]: c for c in cells
                         if c["dataset"] == name and c["method"] == method and "gen_s" in c}.values())
            if not gens:
                study.append("–")
                continue
            options = gens[0]["options"]
            count = pseudo_graph_count(options["num_graphs"], options.get("graph_factor", 1.0))
            study.append(f"{statistics.mean(c['gen_s'] for c in gens):.0f} s ({gens[0]['gen_steps']} steps"
                         f"{'' if count == d['graphs'] else f', {count} graphs'})")
        lines.append(f"| {name} | {d['graphs']} | {a:.3f} | {g:.3f} | {ra:.1f} s | {rg:.1f} s | {rg / ra:.1f}x "
                     f"| {study[0]} / {study[1]} |")
    teachers = TEACHER_NOTE if (split_seed, teacher) == (GFKD_SPLIT_SEED, TEACHER) else (
        f"Teachers: chosen as the study's are (`--choose-teachers --split-seed {split_seed} --teacher {teacher}`), "
        f"seed {teacher_seed} below.")
    lines += ["", teachers, "", "Budgets (KD epochs; generation steps): " + "; ".join(
        f"{name}: KD {s['epochs']} epochs, ACGKD {s['acgkd']['iterations']} steps{graph_count_phrase(s['acgkd'])}, "
        f"GFKD {s['gfkd']['iterations']} steps (lr_structure {s['gfkd']['lr_structure']}, decay every "
        f"{s['gfkd']['lr_decay_every']}), teacher seed "
        f"{s['teacher_seed'] if teacher_seed is None else teacher_seed} ({s['teacher_epochs']} epochs)"
        for name, s in SETTINGS.items() if name in datasets)
        + ".", ""]
    for name, what in missing.items():
        if len(what) == len(STUDENTS) * len(METHODS) and name not in info:
            lines.append(f"Not run yet: {name}.")
        else:
            lines.append(f"Missing on {name}: " + "; ".join(what) + ".")
    lines += [""] if missing else []
    return "\n".join(lines)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (two study processes may refresh the tables at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tables(text: str, table: Path, readme: Path | None, cache: Path) -> None:
    where = cache.resolve()
    where = where.relative_to(HERE.parent) if where.is_relative_to(HERE.parent) else where
    _replace(table, "# ACGKD vs GFKD mode vs KD with real graphs on TU datasets\n\n"
             f"Written by `examples/acgkd_tu.py` from `{where.as_posix()}/`.\n\n" + text)
    if readme is not None and readme.is_file():
        begin, end = "<!-- study:begin -->", "<!-- study:end -->"
        body = readme.read_text()
        if begin in body and end in body:
            head, rest = body.split(begin, 1)
            _replace(readme, f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder with <NAME>/raw for the TU datasets")
    parser.add_argument("--datasets", nargs="+", default=list(TU_DATASETS), choices=TU_DATASETS)
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--cache", default=str(HERE / "acgkd_tu_cache"), help="per-cell JSON results")
    parser.add_argument("--out", default="runs/acgkd_tu", help="teachers and generations (not committed)")
    parser.add_argument("--table", default=str(HERE / "acgkd_tu_results.md"))
    parser.add_argument("--readme", default=str(HERE.parent / "README.md"),
                        help="README whose study block is regenerated ('none': leave it)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets for everything (smoke test)")
    parser.add_argument("--table-only", action="store_true", help="only regenerate the tables from the cache")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="config overrides of the --methods' cells, e.g. xi=0.1 mean_degree=None (an ablation: "
                        "give it its own --cache, --table and --readme none)")
    parser.add_argument("--split-seed", type=int, default=GFKD_SPLIT_SEED,
                        help="seed of the 70/30 split (default: GFKD's 29); another one is a development split (give "
                        "it its own --cache, --table and --readme none)")
    parser.add_argument("--teacher", default=TEACHER, metavar="ARCH",
                        help=f"teacher architecture (default {TEACHER}, the issue's; e.g. gin-5-64, a degree-sensitive "
                        "teacher; give it its own --cache, --table and --readme none and a --teacher-seed)")
    parser.add_argument("--teacher-seed", type=int, default=None,
                        help="teacher seed of every --datasets (default: the study's choice on GFKD's split)")
    parser.add_argument("--choose-teachers", action="store_true",
                        help="train the candidate teachers (seeds 0-4) of --datasets and print each one's training "
                        "accuracy and the chosen seed (the highest; no test label read)")
    args = accept_both_spellings(parser).parse_args(argv)
    study_outputs = any(getattr(args, k) == parser.get_default(k) for k in ("cache", "table", "readme"))
    if args.quick and study_outputs:
        parser.error("--quick must not overwrite the study's results: pass --cache, --table and --readme (or none)")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected NAME=VALUE")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value  # a plain string, e.g. curriculum=size
    for flag, given in (("--set", bool(overrides)), ("--split-seed", args.split_seed != GFKD_SPLIT_SEED),
                        ("--teacher-seed", args.teacher_seed is not None), ("--teacher", args.teacher != TEACHER)):
        if given and study_outputs:
            parser.error(f"{flag} must not overwrite the study's results: pass --cache, --table and --readme (or none)")
    torch.set_num_threads(1)  # tiny graphs: extra threads only contend (and CPU seconds stay comparable)
    cache, out = Path(args.cache), Path(args.out)
    if args.split_seed != GFKD_SPLIT_SEED:
        out = out / f"split{args.split_seed}"  # its own teachers and generations
    if args.teacher != TEACHER:
        try:
            parse_spec(args.teacher)
        except DfkdError as error:
            parser.error(f"--teacher: {error}")
        out = out / f"teacher-{args.teacher}"
    readme = None if args.readme == "none" else Path(args.readme)
    seeds = list(range(args.seeds))

    # what this run changes of every dataset's settings (a development split, another teacher)
    variant = {"split_seed": args.split_seed, "teacher_arch": args.teacher,
               **({} if args.teacher_seed is None else {"teacher_seed": args.teacher_seed})}

    def refresh() -> None:  # the whole study's table (every dataset, STUDY_SEEDS seeds), whatever this run does
        write_tables(tables(cache, list(range(STUDY_SEEDS)), list(TU_DATASETS), variant), Path(args.table), readme,
                     cache)

    def settings_of(name: str) -> dict:
        return {**(QUICK if args.quick else SETTINGS[name]), **variant}

    if args.choose_teachers:
        for name in args.datasets:
            accs = [train_accuracy(name, args.data_root, settings_of(name), seed) for seed in TEACHER_SEEDS]
            best = max(TEACHER_SEEDS, key=lambda s: (accs[s], -s))
            print(f"{name}: training accuracy of seeds {list(TEACHER_SEEDS)}: "
                  f"{' / '.join(f'{100 * a:.1f}' for a in accs)} %; teacher seed {best}", flush=True)
        return 0
    if args.table_only:
        refresh()
        print(Path(args.table).read_text())
        return 0
    for name in args.datasets:
        settings = settings_of(name)
        teacher, train, test = teacher_for(name, args.data_root, out, settings)
        info_path = cache / name / "dataset.json"
        if not info_path.is_file():
            labels = torch.tensor([int(g.y) for g in test])
            info = {"teacher_acc": accuracy(teacher, graph_batches(test)), "graphs": len(train),
                    "majority": float(torch.bincount(labels).max()) / len(labels),
                    "per_step": time_generation(teacher, len(train), 1 if args.quick else TIMED_STEPS)}
            info_path.parent.mkdir(parents=True, exist_ok=True)
            info_path.write_text(json.dumps(info, indent=1))
        print(f"{name}: {json.loads(info_path.read_text())}", flush=True)
        for seed in seeds:
            for method in args.methods:
                for student in args.students:
                    path = cell_path(cache, name, student, method, seed)
                    if path.is_file():
                        continue
                    cell = run_cell(name, student, method, seed, teacher, train, test, settings, out, overrides)
                    path.write_text(json.dumps(cell, indent=1))
                    print(f"{name} seed {seed} {method:5s} {student}: last {cell['last']:.3f} selected "
                          f"{cell['selected']:.3f} best {cell['best']:.3f}", flush=True)
                    refresh()
    refresh()
    print(Path(args.table).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
