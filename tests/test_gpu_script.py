"""benchmarks/gpu.sh without a GPU: the dry run's plumbing, the global deadline, a section cut short.

The dry run is the same driver as the GPU run with tiny shapes on CPU (Triton in the interpreter,
no compile, CUDA tests collected and skipped), so what is checked here is what the one GPU run
relies on: every section ends up in ``gpu_results.json`` / ``.md`` with rows or a reason, the
files in the output folder are few enough to come back, and results written before a kill survive.
"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_SH = os.path.join(ROOT, "benchmarks", "gpu.sh")
FILES = {"gpu_results.md", "gpu_results.json", "gpu.log", "build.log", "pytest.log", "pytest_junit.xml"}


def sections_of_gpu_sh() -> list[str]:
    text = open(GPU_SH).read()
    block = re.search(r'SECTIONS="\n(.*?)\n"', text, re.S).group(1)
    return [line.split()[0] for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run(args, env=None, timeout=600):
    env = {**os.environ, **(env or {})}
    env.pop("TRITON_INTERPRET", None)  # the driver sets it for the dry run's scripts itself
    env.pop("OUT", None)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    res = run(["bash", GPU_SH, "--dry-run", "--deadline", "400", str(out)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = set(os.listdir(out))
    assert files == FILES, files  # <= 8 files, nothing nested: all of it comes back from a GPU machine
    data = json.loads((out / "gpu_results.json").read_text())
    md = (out / "gpu_results.md").read_text()
    assert data["meta"]["dry_run"] is True and data["meta"]["torch"] and data["meta"]["triton"]
    names = sections_of_gpu_sh()
    assert names[:2] == ["build", "tests"] and len(names) > 2
    assert list(data["sections"]) == names
    for name in names:
        sec = data["sections"][name]
        assert f"## {name}: " in md
        assert sec["status"] == "ok", (name, sec)
        tables = sec["tables"]
        assert tables, name
        for tname, t in tables.items():
            assert t["rows"], (name, tname)  # each benchmark table has rows
            if name != "tests":  # every script's table says where and with what it ran
                assert {"gpu", "torch", "triton", "cuda", "date"} <= set(t["meta"]), (name, tname)
                assert t["markdown"].strip() in md
    # the build section checks the package import and lists the registered ops
    ops = {r["op"] for r in data["sections"]["build"]["tables"]["build"]["rows"]}
    assert {"rmkernels::rm_stats_triton", "rmkernels::rm_ce_fwd"} <= ops
    # pytest ran with junit XML; the CUDA tests were collected and skipped
    tests = data["sections"]["tests"]
    assert tests["counts"].get("skipped", 0) > 0 and set(tests["counts"]) == {"skipped"}
    assert "<testsuite" in (out / "pytest_junit.xml").read_text()
    # memory-bound benchmarks report GB/s, % of the copy bandwidth and the speed-up vs eager
    cols = data["sections"]["gpu_rm_stats"]["tables"]["rm_stats"]["columns"]
    assert {"GB/s", "copy_%", "speedup", "speedup_graph"} <= set(cols)
    assert "copy_GBps" in data["sections"]["gpu_rm_stats"]["tables"]["rm_stats"]["meta"]
    # the 8B-shaped model is built directly on the device in bf16 (no fp32 copy on the host)
    assert any("in bf16" in n for n in data["sections"]["gpu_decode"]["tables"]["decode"]["notes"])
    # every phase is timestamped in the log
    log = (out / "gpu.log").read_text()
    for name in names:
        assert re.search(rf"^\[\d\d:\d\d:\d\d \+ *[\d.]+s\] == {name}: ok", log, re.M), name


def test_deadline_skips_what_does_not_fit_and_says_so(tmp_path):
    res = run([sys.executable, os.path.join(ROOT, "benchmarks", "_gpu_driver.py"), "--dry-run", "--deadline", "20",
               "--only", "rm_stats", "--sections", "build 90 100\ntests 9 10\ngpu_rm_stats 45 60\ngpu_decode 1 5",
               str(tmp_path)])
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((tmp_path / "gpu_results.json").read_text())
    secs = data["sections"]
    assert secs["build"]["status"] == "skipped" and "does not fit" in secs["build"]["reason"]
    assert secs["gpu_rm_stats"]["status"] == "skipped" and "does not fit" in secs["gpu_rm_stats"]["reason"]
    for name in ("tests", "gpu_decode"):
        assert secs[name]["status"] == "skipped" and "not in --only" in secs[name]["reason"]
    md = (tmp_path / "gpu_results.md").read_text()
    assert md.count("does not fit") >= 2 and "not in --only" in md
    # --only with a name that is no section is an error, not a silent no-op
    bad = run([sys.executable, os.path.join(ROOT, "benchmarks", "_gpu_driver.py"), "--only", "rm_stat",
               "--sections", "build 1 1\ngpu_rm_stats 1 1", str(tmp_path / "x")])
    assert bad.returncode != 0 and "unknown sections" in bad.stderr


SLOW_SCRIPT = '''
import json, os, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
meta = {"gpu": "none", "torch": "-", "triton": "-", "cuda": "-", "date": "-"}
json.dump({"meta": meta, "columns": ["n"], "rows": [{"n": 1}], "notes": []}, open(os.path.join(out, "t.json"), "w"))
open(os.path.join(out, "t.md"), "w").write("#### t\\n\\n| n |\\n|---|\\n| 1 |\\n")
print("first row written", flush=True)
time.sleep(120)
'''


def test_a_section_cut_short_keeps_its_rows_and_the_run_goes_on(tmp_path):
    script = tmp_path / "gpu_slow.py"
    script.write_text(SLOW_SCRIPT)
    fast = tmp_path / "gpu_fast.py"
    fast.write_text(SLOW_SCRIPT.replace("time.sleep(120)", ""))
    out = tmp_path / "out"
    sections = f"gpu_slow 1 3 {script}\ngpu_fast 1 30 {fast}"
    res = run([sys.executable, os.path.join(ROOT, "benchmarks", "_gpu_driver.py"), "--dry-run", "--no-build",
               "--deadline", "100", "--sections", sections, str(out)], timeout=90)
    data = json.loads((out / "gpu_results.json").read_text())
    slow, after = data["sections"]["gpu_slow"], data["sections"]["gpu_fast"]
    assert slow["status"] == "timed out" and slow["seconds"] < 20, slow
    assert slow["tables"]["t"]["rows"] == [{"n": 1}]  # written before the kill, merged after it
    assert after["status"] == "ok" and after["tables"]["t"]["rows"]
    assert res.returncode == 1  # a timed-out section makes the run's status non-zero
    assert "first row written" in (out / "gpu.log").read_text()
