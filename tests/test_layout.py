"""The package's seams: one implementation vocabulary (every value x every op, directly and through
``generate`` / the trainer), package assets, ``atomic_write``, the ``rmk`` command line, the C++
op registry beside the Python custom ops, and the repository layout."""
import ast
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest
import torch

from rmkernels import DecodeConfig, generate
from rmkernels._ext import extension_available
from rmkernels._utils import IMPL_TABLE, IMPLS, atomic_write, available_impls, resolve_impl, triton_interpret

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_EXT = extension_available("cpu")
OPS = ("rm_stats", "rm_linear_stats", "rm_loss", "rm_linear_loss", "history_embed")
needs_cpu_setup = pytest.mark.skipif(
    torch.cuda.is_available() or not triton_interpret() or not HAS_EXT,
    reason="the expected table below is the CPU one: Triton in the interpreter, rmkernels._C built")

pytestmark = pytest.mark.usefixtures("one_thread")

# What each op runs on CPU tensors here (interpreter on, extension built), written out by hand:
# an impl the op has no kernel for raises when asked directly, and falls back to "auto" when it is
# a preference handed down by generate(kernels=...) / the trainer.
DIRECT_CPU = {
    "rm_stats": {"auto": "triton", "triton": "triton", "ext": "ext", "reference": "reference"},
    "rm_linear_stats": {"auto": "triton", "triton": "triton", "ext": "ext", "reference": "reference"},
    "rm_loss": {"auto": "triton", "triton": "triton", "ext": ValueError, "reference": "reference"},
    "rm_linear_loss": {"auto": "triton", "triton": "triton", "ext": ValueError, "reference": "reference"},
    "history_embed": {"auto": "ext", "triton": ValueError, "ext": "ext", "reference": "reference"},
}


# --------------------------------------------------------------------------------------------
# the vocabulary table
# --------------------------------------------------------------------------------------------
def test_table_covers_every_op_with_known_kernels():
    assert IMPLS == ("auto", "triton", "ext", "reference")
    assert set(IMPL_TABLE) == set(OPS)
    for op, row in IMPL_TABLE.items():
        for kernel, devices in row:
            assert kernel in ("triton", "ext") and set(devices) <= {"cpu", "cuda"}, op
        assert available_impls(op, "cpu")[-1] == "reference"


@needs_cpu_setup
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", IMPLS)
def test_resolve_direct_and_as_preference(op, impl):
    want = DIRECT_CPU[op][impl]
    if want is ValueError:
        with pytest.raises(ValueError, match=f"impl='{impl}'.*{op}"):
            resolve_impl(op, impl, "cpu")
        assert resolve_impl(op, impl, "cpu", fallback=True) == DIRECT_CPU[op]["auto"]
    else:
        assert resolve_impl(op, impl, "cpu") == want
        assert resolve_impl(op, impl, "cpu", fallback=True) == want


def test_resolve_rejects_unknown_names():
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("rm_stats", "cpp", "cpu")  # the old name of "ext"
    with pytest.raises(ValueError, match="op must be one of"):
        resolve_impl("rm_magic", "auto", "cpu")


def test_resolve_without_interpreter_or_extension(monkeypatch):
    import rmkernels._ext as ext

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(ext, "_C", None)
    assert available_impls("rm_stats", "cpu") == ("reference",)
    assert resolve_impl("rm_stats", "auto", "cpu") == "reference"
    assert resolve_impl("history_embed", "triton", "cpu", fallback=True) == "reference"
    with pytest.raises(ValueError, match="CPU interpreter"):
        resolve_impl("rm_loss", "triton", "cpu")
    with pytest.raises(ValueError, match="rmkernels._C is unavailable"):
        resolve_impl("history_embed", "ext", "cpu")
    with pytest.raises(ValueError, match="runs on cpu tensors only"):
        resolve_impl("rm_stats", "ext", "cuda")


# --------------------------------------------------------------------------------------------
# every value x every op, called directly
# --------------------------------------------------------------------------------------------
def _op_inputs():
    g = torch.Generator().manual_seed(3)
    N, V, D, B, H, L = 7, 37, 8, 2, 3, 5
    logits = torch.randn(N, V, generator=g)
    tokens = torch.randint(0, V, (N,), generator=g)
    labels = torch.randint(0, V, (N,), generator=g)
    part = torch.tensor([0, 1, 2, -1, 0, 2, 1])
    hidden, w = torch.randn(N, D, generator=g), torch.randn(V, D, generator=g) / 3
    emb = torch.randn(V, D, generator=g)
    ids, hist = torch.randint(0, V, (B, L), generator=g), torch.randint(0, V, (B, H, L), generator=g)
    hlen, gen = torch.tensor([1, 3]), torch.ones(B, L, dtype=torch.bool)
    return {
        "rm_stats": lambda impl: tuple(__import__("rmkernels").rm_stats(logits, tokens, V - 1, impl=impl)),
        "rm_linear_stats": lambda impl: tuple(__import__("rmkernels").rm_linear_stats(hidden, w, tokens, V - 1,
                                                                                      impl=impl)),
        "rm_loss": lambda impl: tuple(__import__("rmkernels").rm_loss(logits, labels, part, impl=impl)),
        "rm_linear_loss": lambda impl: tuple(__import__("rmkernels").rm_linear_loss(hidden, w, labels, part, impl=impl)),
        "history_embed": lambda impl: (__import__("rmkernels").history_embed(emb, ids, hist, hlen, gen, decay=0.2,
                                                                             impl=impl),),
    }


@needs_cpu_setup
@pytest.mark.parametrize("op", OPS)
def test_every_impl_of_every_op_directly(op):
    run = _op_inputs()[op]
    ref = run("reference")
    for impl in IMPLS:
        if DIRECT_CPU[op][impl] is ValueError:
            with pytest.raises(ValueError, match=f"impl='{impl}'"):
                run(impl)
            continue
        for a, b in zip(run(impl), ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{op} impl={impl}")


# --------------------------------------------------------------------------------------------
# every value through generate and the trainer
# --------------------------------------------------------------------------------------------
@needs_cpu_setup
def test_generate_accepts_every_kernels_value(monkeypatch):
    import rmkernels.ops.history_embed as he_mod
    import rmkernels.ops.rm_stats as stats_mod
    from test_decode import M, random_norm, tiny_model

    seen = []
    real_stats, real_embed = stats_mod.rm_stats, he_mod.history_embed
    monkeypatch.setattr(stats_mod, "rm_stats", lambda *a, impl, **k: seen.append(("rm_stats", impl))
                        or real_stats(*a, impl=impl, **k))
    monkeypatch.setattr(he_mod, "history_embed", lambda *a, impl, **k: seen.append(("history_embed", impl))
                        or real_embed(*a, impl=impl, **k))
    model, norm = tiny_model(1), random_norm(32, 2)
    ids = torch.randint(0, M, (2, 4), generator=torch.Generator().manual_seed(0))
    cfg = DecodeConfig(steps=4, history_steps=2, remask=True, fill_remaining=True)  # the finish calls rm_stats too
    outs = {}
    for kernels in IMPLS:
        seen.clear()
        outs[kernels] = generate(model, ids, cfg, mask_id=M, gen_length=4, history_norm=norm, kernels=kernels)
        want = {"rm_stats": DIRECT_CPU["rm_stats"], "history_embed": DIRECT_CPU["history_embed"]}
        expect = {op: t[kernels] if t[kernels] is not ValueError else t["auto"] for op, t in want.items()}
        assert set(seen) == set(expect.items()), kernels
    for kernels in IMPLS:
        assert torch.equal(outs[kernels].sequences, outs["reference"].sequences), kernels
    with pytest.raises(ValueError, match="kernels must be one of"):
        generate(model, ids, cfg, mask_id=M, gen_length=4, kernels="cpp")


@needs_cpu_setup
def test_trainer_resolves_its_preferences_by_the_table():
    from test_trainer import make_trainer, tiny_data

    for impl in IMPLS:
        tr = make_trainer(tiny_data(16), loss_impl=impl, history_impl=impl, total_steps=1, batch_size=4)
        assert tr.loss_impl == resolve_impl("rm_loss", impl, "cpu", fallback=True)
        assert tr.history_impl == resolve_impl("history_embed", impl, "cpu", fallback=True)
    assert (tr.loss_impl, tr.history_impl) == ("reference", "reference")
    tr = make_trainer(tiny_data(16), loss_impl="ext", history_impl="triton", total_steps=1, batch_size=4)
    assert (tr.loss_impl, tr.history_impl) == ("triton", "ext")
    tr.train_step()  # runs with the fallbacks
    with pytest.raises(ValueError, match="loss_impl must be one of"):
        make_trainer(tiny_data(16), loss_impl="cpp")


# --------------------------------------------------------------------------------------------
# package assets (importlib.resources) and package data
# --------------------------------------------------------------------------------------------
def test_assets_are_package_data_found_through_importlib_resources():
    from importlib.resources import files

    from rmkernels.tasks.sudoku import assets
    from rmkernels.tasks.sudoku.evaluate import CHECKPOINT_DIR, DEFAULT_BOARDS, DEFAULT_CEILING

    root = files("rmkernels.tasks.sudoku") / "assets"
    names = sorted(p.name for p in root.joinpath("checkpoints").iterdir())
    assert names == sorted(f"sudoku_{v}.{ext}" for v in ("base", "rm", "rm_hist", "rm_hist_decay", "full")
                           for ext in ("json", "safetensors"))
    for path in (CHECKPOINT_DIR, DEFAULT_BOARDS, DEFAULT_CEILING):
        assert os.path.exists(path) and pathlib.Path(path).is_relative_to(pathlib.Path(assets.__file__).parent)
    # every asset is matched by the package-data globs, so an installed (non-editable) copy has it
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    pkg_dir = ROOT / "rmkernels" / "tasks" / "sudoku"
    shipped = {p for pattern in globs["rmkernels.tasks.sudoku"] for p in pkg_dir.glob(pattern)}
    on_disk = {p for p in (pkg_dir / "assets").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert on_disk and on_disk <= shipped


def test_assets_load_from_another_working_directory(tmp_path):
    code = ("from rmkernels.tasks.sudoku.checkpoint import load_checkpoint\n"
            "from rmkernels.tasks.sudoku.evaluate import checkpoint_path, load_boards\n"
            "m, norm, meta = load_checkpoint(checkpoint_path('full'))\n"
            "c, s = load_boards(limit=3)\n"
            "assert norm is not None and meta['variant'] == 'full' and c.shape == (3, 81)\n"
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# atomic_write
# --------------------------------------------------------------------------------------------
def test_atomic_write_text_bytes_callable_and_failure(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    assert atomic_write(p, "one\n") == str(p) and p.read_text() == "one\n"  # creates the folder
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    umask = os.umask(0o022)
    try:
        atomic_write(p, lambda tmp: pathlib.Path(tmp).write_text("three"))
    finally:
        os.umask(umask)
    assert p.read_text() == "three" and (p.stat().st_mode & 0o777) == 0o644

    def fail(tmp):
        pathlib.Path(tmp).write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, fail)
    assert p.read_text() == "three" and sorted(x.name for x in p.parent.iterdir()) == ["f.txt"]


# --------------------------------------------------------------------------------------------
# the rmk command line
# --------------------------------------------------------------------------------------------
def _subcommands(parser, prefix=()):
    """Every (sub)command path of an argparse parser, depth first."""
    import argparse

    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, prefix + (name,))


def test_every_subcommand_has_help(capsys):
    from rmkernels.cli import TASKS, build_parser, main

    paths = [p for p, _ in _subcommands(build_parser())]
    for want in [("kernels",), ("train",), ("sudoku", "eval"), ("sudoku", "train", "variant")] + [(t,) for t in TASKS]:
        assert want in paths
    for path, sub in _subcommands(build_parser()):
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: rmk") and len(text) > 80, path
        if path:
            assert sub.description or sub.format_help().count("\n") > 3, path


def test_rmk_kernels_runs_every_op_at_tiny_size(capsys):
    from rmkernels.cli import main

    assert main(["kernels", "--rows", "8", "--vocab", "64", "--dim", "16", "--repeat", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| op")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(OPS)
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[3] == "ok" and float(cells[4]) > 0 and float(cells[5]) > 0, r


def test_rmk_kernels_reports_a_mismatch(monkeypatch, capsys):
    import rmkernels.ops.rm_stats as stats_mod
    from rmkernels.cli import main

    real = stats_mod.rm_stats_reference

    def off_by_half(*a, **k):  # the reference path now disagrees with the kernel on top_p
        out = list(real(*a, **k))
        out[1] = out[1] + 0.5
        return tuple(out)

    monkeypatch.setattr(stats_mod, "rm_stats_reference", off_by_half)
    assert main(["kernels", "--rows", "4", "--vocab", "32", "--dim", "8", "--repeat", "1", "--quiet",
                 "--ops", "rm_stats"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# C++ schemas (TORCH_LIBRARY) beside Python custom ops, both import orders
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_EXT, reason="rmkernels._C not built")
@pytest.mark.parametrize("first", ["extension", "custom_ops"])
def test_cpp_library_and_python_custom_ops_in_either_import_order(first):
    ext = "import torch, rmkernels._C\n"
    ops = "import rmkernels.ops.rm_stats, rmkernels.ops.rm_loss\n"
    code = (ext + ops if first == "extension" else ops + ext) + (
        "import torch, rmkernels.ops.history_embed\n"
        "names = ['rm_stats_cpu_out', 'history_embed', 'history_embed_backward', 'rm_stats_triton', 'rm_ce_fwd']\n"
        "assert all(hasattr(torch.ops.rmkernels, n) for n in names)\n"
        "z, x = torch.randn(3, 11), torch.tensor([0, 5, 10])\n"
        "a = rmkernels.ops.rm_stats.rm_stats(z, x, 10, impl='ext')\n"
        "b = rmkernels.ops.rm_stats.rm_stats(z, x, 10, impl='triton')\n"
        "assert all(torch.allclose(p.float(), q.float()) for p, q in zip(a, b))\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_all_cpp_schemas_in_one_block():
    defs = {f.name: f.read_text().count("m.def(") for f in (ROOT / "csrc").rglob("*") if f.suffix in (".cpp", ".cu")}
    assert defs.pop("module.cpp") >= 3 and not any(defs.values()), defs
    sources = "".join(f.read_text() for f in (ROOT / "csrc").rglob("*") if f.suffix in (".cpp", ".cu", ".h"))
    assert sources.count("TORCH_LIBRARY(rmkernels") == 1 and "TORCH_LIBRARY_FRAGMENT" not in sources


# --------------------------------------------------------------------------------------------
# repository layout
# --------------------------------------------------------------------------------------------
def _is_module(name: str) -> bool:
    """A (private) submodule such as rmkernels._utils may be imported; private names may not."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_no_private_names_imported_across_modules():
    bad = []
    for path in (ROOT / "rmkernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
                bad += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not _is_module(f"{node.module}.{a.name}")]
    assert not bad


def test_results_hold_data_only_and_assets_are_named_in_one_place():
    scripts = [p for p in (ROOT / "results").rglob("*") if p.suffix in (".py", ".sh")]
    assert not scripts
    naming = [p.relative_to(ROOT) for p in (ROOT / "rmkernels").rglob("*.py")
              if "sudoku_test" in p.read_text() and p.name != "assets.py"]
    assert not naming
    for p in (ROOT / "experiments").rglob("*"):
        if p.suffix in (".py", ".sh"):
            text = p.read_text()
            assert "/tmp" not in text and "git mv" not in text and "python -m rmkernels" not in text, p


# the layers of docs/design.md, lowest first: a module imports only from its own layer or below
LAYERS = {"_utils": 0, "_ext": 0, "reference": 1, "ops": 2, "history": 3, "models": 3, "decode": 4,
          "training": 4, "tasks": 5, "cli": 5, "demo": 5, "__init__": 5}


def test_imports_never_run_upward():
    def layer(module):
        parts = module.split(".")
        return None if parts[0] != "rmkernels" else 5 if len(parts) == 1 else LAYERS.get(parts[1], -1)

    bad = []
    for path in (ROOT / "rmkernels").rglob("*.py"):
        me = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert me != -1, f"{path}: a package folder missing from LAYERS (and docs/design.md)"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "rmkernels":  # from rmkernels import _utils
                names = [f"rmkernels.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in names if (layer(m) or 0) > me]
    assert not bad


DOCTESTED = ["rmkernels.ops.rm_stats", "rmkernels.ops.rm_loss", "rmkernels.ops.linear_loss", "rmkernels.ops.history_embed",
             "rmkernels.decode.generate", "rmkernels.decode.trajectory", "rmkernels.decode.model", "rmkernels._utils",
             "rmkernels.training.synth", "rmkernels.training.data", "rmkernels.tasks.sudoku.assets",
             "rmkernels.tasks.sudoku.grids", "rmkernels.tasks.sudoku.data", "rmkernels.tasks.sudoku.evaluate",
             "rmkernels.tasks.sudoku.checkpoint"]


@pytest.mark.skipif(not HAS_EXT, reason="the examples assume rmkernels._C is built")
def test_docstring_examples_run():
    """The Example sections, as a user runs them: a fresh process without the Triton interpreter."""
    code = ("import doctest, importlib, torch\n"
            "torch.set_num_threads(1)\n"
            f"for name in {DOCTESTED!r}:\n"
            "    r = doctest.testmod(importlib.import_module(name), extraglobs={'torch': torch})\n"
            "    print(name, r.attempted, r.failed)\n"
            "    assert r.attempted > 0 and r.failed == 0, name\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("\n") == len(DOCTESTED)


def test_api_page_renders_and_entry_points_are_documented():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import api_doc
    finally:
        sys.path.remove(str(ROOT / "tools"))
    page, problems, _ = api_doc.render()
    assert not problems  # rm_stats, rm_loss, generate, ...: Parameters, Returns and Example
    for name in ("rm_stats", "rm_loss", "rm_linear_loss", "history_embed", "generate", "Trainer", "resolve_impl"):
        assert f"[`{name}`](../" in page, name


def test_one_atomic_write():
    """Every writer goes through rmkernels._utils.atomic_write: no other rename-into-place."""
    hand_rolled = [p.relative_to(ROOT) for p in (ROOT / "rmkernels").rglob("*.py")
                   if p.name != "_utils.py" and ("os.replace(" in p.read_text() or "mkstemp(" in p.read_text())]
    assert not hand_rolled
