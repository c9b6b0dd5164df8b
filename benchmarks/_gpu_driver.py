"""The driver of benchmarks/gpu.sh (read the contract there): sections under one global deadline.

    python benchmarks/_gpu_driver.py --sections TEXT [--dry-run] [--deadline S] [--only a,b] [--no-build] [OUTDIR]

``TEXT`` holds one section per line: ``name  estimated_seconds  cap_seconds  [script]``. ``build``
and ``tests`` are built in; any other name runs ``script`` (default ``benchmarks/<name>.py``) with
``--out <scratch>/<name> [--dry-run]``. Sections run in order. Before each one the driver compares
its estimate with the time left before the deadline and skips it (recording why) when it no longer
fits; a section that runs over ``min(cap, time left)`` is interrupted (SIGINT, then SIGKILL) and
keeps what it wrote. After every section ``OUTDIR/gpu_results.json`` and ``gpu_results.md`` are
rewritten from everything measured so far, so a run cut short still brings its numbers home.

Files in OUTDIR (six, so the whole folder comes back from a machine that returns at most eight):
``gpu_results.md``, ``gpu_results.json``, ``gpu.log`` (timestamped phases and every script's
output), ``build.log``, ``pytest.log``, ``pytest_junit.xml``.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESERVE_S = 12  # kept back from every section's time limit: interrupt grace (8 s) and the final merge
GRACE_S = 8  # after SIGINT (pytest then writes its junit XML; scripts have written their rows already)
DRY_RUN_TESTS = ["tests/test_rm_loss.py", "tests/test_strides.py"]  # collected, CUDA ones skipped


def parse_sections(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        f = line.split()
        if len(f) not in (3, 4):
            raise SystemExit(f"bad section line (want: name est_s cap_s [script]): {line!r}")
        out.append({"name": f[0], "est_s": float(f[1]), "cap_s": float(f[2]),
                    "script": f[3] if len(f) == 4 else os.path.join("benchmarks", f[0] + ".py")})
    return out


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or r.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"


class Driver:
    def __init__(self, args):
        self.t0 = time.monotonic()
        self.args = args
        self.out = os.path.abspath(args.outdir)
        os.makedirs(self.out, exist_ok=True)
        self.scratch = tempfile.mkdtemp(prefix="gpu_run_")
        self.log_path = os.path.join(self.out, "gpu.log")
        self.log = open(self.log_path, "a", buffering=1)
        self.meta = {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(),
            "command": " ".join(sys.argv[1:] if not args.argv_text else [args.argv_text]),
            "dry_run": args.dry_run,
            "deadline_s": args.deadline,
            "nvidia_smi": _nvidia_smi(),
            "torch": _version("torch"),
            "triton": _version("triton"),
            "python": platform.python_version(),
        }
        self.sections: dict[str, dict] = {}
        self.order: list[str] = []

    # -- time and logging ---------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.args.deadline - self.elapsed()

    def say(self, msg: str) -> None:
        line = f"[{datetime.datetime.now():%H:%M:%S} +{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    # -- running commands ---------------------------------------------------------------------
    def run_cmd(self, cmd: list[str], timeout: float, log_path: str, env: dict | None = None):
        """Run ``cmd`` (its own process group) appending its output to ``log_path``; returns
        ``(returncode, timed_out)``. Over ``timeout``: SIGINT, then SIGKILL after GRACE_S."""
        with open(log_path, "a", buffering=1) as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                return proc.wait(timeout=max(1.0, timeout)), False
            except subprocess.TimeoutExpired:
                self.say(f"  time limit ({timeout:.0f} s) reached: interrupting {os.path.basename(cmd[-1])}")
                for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                log.write(f"\n[killed after {timeout:.0f} s: the run's deadline or the section's cap]\n")
                return proc.returncode if proc.returncode is not None else -9, True

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        if self.args.dry_run:
            env["TRITON_INTERPRET"] = "1"
        return env

    # -- sections -----------------------------------------------------------------------------
    def run_section(self, sec: dict) -> None:
        name = sec["name"]
        self.order.append(name)
        rec = {"status": "", "est_s": sec["est_s"], "cap_s": sec["cap_s"], "seconds": 0.0, "tables": {}}
        self.sections[name] = rec
        only = self.args.only
        if name == "build" and self.args.no_build:
            rec.update(status="skipped", reason="--no-build")
        elif name != "build" and only and name not in only and name.removeprefix("gpu_") not in only:
            rec.update(status="skipped", reason=f"not in --only {','.join(sorted(only))}")
        elif self.left() - RESERVE_S < sec["est_s"]:
            rec.update(status="skipped", reason=f"does not fit: needs ~{sec['est_s']:.0f} s, "
                                                f"{max(0.0, self.left() - RESERVE_S):.0f} s left before the deadline")
        else:
            limit = min(sec["cap_s"], self.left() - RESERVE_S)
            self.say(f"== {name}: start (estimate {sec['est_s']:.0f} s, limit {limit:.0f} s, "
                     f"{self.left():.0f} s left)")
            t = time.monotonic()
            try:
                if name == "build":
                    self.section_build(rec, limit)
                elif name == "tests":
                    self.section_tests(rec, limit)
                else:
                    self.section_script(rec, sec, limit)
            except Exception as exc:  # a driver bug must not lose the other sections
                rec.update(status="failed", reason=f"driver error: {type(exc).__name__}: {exc}")
            rec["seconds"] = round(time.monotonic() - t, 1)
        self.say(f"== {name}: {rec['status']}" + (f" ({rec['reason']})" if rec.get("reason") else "")
                 + (f" in {rec['seconds']} s" if rec["seconds"] else ""))
        self.merge()

    def _status(self, rec, rc, timed_out, what):
        if timed_out:
            rec.update(status="timed out", reason=f"{what} interrupted at its time limit; partial results kept")
        elif rc != 0:
            rec.update(status="failed", reason=f"{what} exited with status {rc}")
        else:
            rec["status"] = "ok"

    def _collect(self, rec, folder) -> None:
        """Tables written by a script (``*.json`` from :class:`_gpu_common.Results`), in write order."""
        for path in sorted(glob.glob(os.path.join(folder, "*.json")), key=os.path.getctime):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError) as exc:
                data = {"error": f"unreadable: {exc}"}
            md = path[:-5] + ".md"
            if os.path.exists(md):
                with open(md) as f:
                    data["markdown"] = f.read()
            rec["tables"][os.path.basename(path)[:-5]] = data

    def section_build(self, rec, limit) -> None:
        build_log = os.path.join(self.out, "build.log")
        env = self.env()
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
        check_s = 40.0  # kept for the import check after the compile
        t_sec = time.monotonic()
        if not self.args.dry_run:
            ninja = shutil.which("ninja", path=env.get("PATH"))
            if ninja is None:  # the pip package's binary, when it is installed but not on PATH
                try:
                    import ninja as _ninja

                    env["PATH"] = _ninja.BIN_DIR + os.pathsep + env.get("PATH", "")
                    ninja = shutil.which("ninja", path=env["PATH"])
                except ImportError:
                    pass
            with open(build_log, "a") as f:
                f.write(f"{self.meta['nvidia_smi']}\nTORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']} "
                        f"MAX_JOBS={env['MAX_JOBS']} ninja={ninja or 'not found (serial compile)'}\n")
            t = time.monotonic()
            rc, timed_out = self.run_cmd([sys.executable, "setup.py", "build_ext", "--inplace"],
                                         max(1.0, limit - check_s), build_log, env)
            rec["compile_s"] = round(time.monotonic() - t, 1)
            self.say(f"  compile: status {rc}{' (timed out)' if timed_out else ''} in {rec['compile_s']} s")
            if rc != 0 or timed_out:
                self._status(rec, rc, timed_out, "setup.py build_ext")
                rec["log_tail"] = _tail(build_log, 40)
        folder = os.path.join(self.scratch, "build")
        cmd = [sys.executable, "benchmarks/gpu_build_check.py", "--out", folder] + (["--dry-run"] if self.args.dry_run else [])
        left = min(limit - (time.monotonic() - t_sec), self.left() - RESERVE_S)
        rc, timed_out = self.run_cmd(cmd, max(1.0, left), build_log, env)
        self._collect(rec, folder)
        if not rec["status"]:
            self._status(rec, rc, timed_out, "the import check (import torch, rmkernels)")
            if rc != 0:
                rec["log_tail"] = _tail(build_log, 40)
        for t in rec["tables"].values():  # versions as the package sees them, for the report's header
            m = t.get("meta", {})
            for k in ("gpu", "cuda", "torch", "triton", "sms", "memory_gib", "capability", "l2_mib"):
                if k in m:
                    self.meta[k] = m[k]

    def section_tests(self, rec, limit) -> None:
        log = os.path.join(self.out, "pytest.log")
        junit = os.path.join(self.out, "pytest_junit.xml")
        targets = DRY_RUN_TESTS if self.args.dry_run else ["tests/"]
        if importlib.util.find_spec("pytest") is None:
            rec.update(status="skipped", reason="pytest is not installed on this machine")
            return
        # --continue-on-collection-errors: a test module needing an absent optional package
        # (hypothesis, transformers, ortools) must not stop the CUDA tests of the other modules
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", "-rfE",
               "--continue-on-collection-errors", f"--junitxml={junit}", "--durations=15", *targets]
        rc, timed_out = self.run_cmd(cmd, limit, log, self.env())
        rows = _junit_rows(junit) if os.path.exists(junit) else _log_rows(log)
        rec["tables"]["pytest"] = {"columns": ["test", "outcome", "seconds", "message"], "rows": rows,
                                   "meta": {"junit": os.path.exists(junit)}}
        counts = {}
        for r in rows:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        rec["counts"] = counts
        if rc == 5:  # pytest: no tests collected
            rc = 0
        self._status(rec, rc, timed_out, "pytest -m cuda")
        if self.args.dry_run and rec["status"] == "ok":
            rec["reason"] = "dry run: CUDA tests collected and skipped (no GPU)"

    def section_script(self, rec, sec, limit) -> None:
        folder = os.path.join(self.scratch, sec["name"])
        os.makedirs(folder, exist_ok=True)
        cmd = [sys.executable, sec["script"], "--out", folder] + (["--dry-run"] if self.args.dry_run else [])
        self.log.write(f"---- output of {sec['script']} ----\n")
        self.log.flush()
        rc, timed_out = self.run_cmd(cmd, limit, self.log_path, self.env())
        self._collect(rec, folder)
        self._status(rec, rc, timed_out, sec["script"])
        if rc != 0 or timed_out:
            rec["log_tail"] = _tail(self.log_path, 30)
        if not rec["tables"] and rec["status"] == "ok":
            rec.update(status="failed", reason=f"{sec['script']} wrote no result table")

    # -- merged results -----------------------------------------------------------------------
    def merge(self) -> None:
        self.meta["elapsed_s"] = round(self.elapsed(), 1)
        data = {"meta": self.meta, "sections": {n: self.sections[n] for n in self.order}}
        _atomic_write(os.path.join(self.out, "gpu_results.json"), json.dumps(data, indent=1, default=str))
        _atomic_write(os.path.join(self.out, "gpu_results.md"), self.markdown())

    def markdown(self) -> str:
        m = self.meta
        lines = ["# GPU run" + (" (dry run on CPU: plumbing only, no GPU numbers)" if m["dry_run"] else ""), "",
                 f"- device: {m.get('gpu', m['nvidia_smi'])}" + (f" ({m['sms']} SMs, {m['memory_gib']} GiB)" if "sms" in m else ""),
                 f"- torch {m['torch']}, Triton {m['triton']}, CUDA {m.get('cuda', '?')}, Python {m['python']}",
                 f"- started {m['started']} on {m['host']}; {m['elapsed_s']} s of a {m['deadline_s']:.0f} s deadline",
                 f"- command: `benchmarks/gpu.sh {m['command']}`", "",
                 "| section | status | seconds | estimate | note |", "|---|---|---|---|---|"]
        for n in self.order:
            r = self.sections[n]
            note = r.get("reason", "")
            if "counts" in r:
                note = ", ".join(f"{v} {k}" for k, v in sorted(r["counts"].items())) + (f"; {note}" if note else "")
            lines.append(f"| {n} | {r['status'] or 'running'} | {r['seconds']} | {r['est_s']:.0f} | {note} |")
        for n in self.order:
            r = self.sections[n]
            lines += ["", f"## {n}: {r['status'] or 'running'}" + (f" ({r['reason']})" if r.get("reason") else ""), ""]
            for tname, t in r["tables"].items():
                if tname == "pytest":
                    lines += _pytest_md(t["rows"])
                elif "markdown" in t:
                    lines += [t["markdown"].rstrip(), ""]
            if r.get("log_tail"):
                lines += ["```", r["log_tail"].rstrip(), "```"]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
def _tail(path: str, n: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _junit_rows(path: str) -> list[dict]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return [{"test": "(junit XML unreadable)", "outcome": "error", "seconds": 0.0, "message": str(exc)}]
    rows = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or el.text or "")[:300]
                break
        rows.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                     "seconds": round(float(case.get("time", 0) or 0), 2), "message": message})
    return rows


def _log_rows(path: str) -> list[dict]:
    """Per-test outcomes from ``pytest -v`` lines, when the junit XML was never written (killed run)."""
    rows = []
    words = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "skipped"}
    for line in _tail(path, 100000).splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in words:
            rows.append({"test": parts[0], "outcome": words[parts[1]], "seconds": 0.0, "message": "(from pytest.log)"})
    return rows


def _pytest_md(rows: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    lines = ["pytest -m cuda: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no test results"), ""]
    bad = [r for r in rows if r["outcome"] in ("failed", "error")]
    if bad:
        lines += ["| failed test | message |", "|---|---|"]
        lines += [f"| {r['test']} | {r['message'][:200].replace('|', '/').replace(chr(10), ' ')} |" for r in bad]
        lines.append("")
    slow = sorted((r for r in rows if r["outcome"] != "skipped"), key=lambda r: -r["seconds"])[:5]
    if slow:
        lines += ["slowest: " + ", ".join(f"{r['test'].split('::')[-1]} {r['seconds']} s" for r in slow), ""]
    return lines


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", required=True, help="one section per line: name est_s cap_s [script]")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--deadline", type=float, default=float(os.environ.get("GPU_DEADLINE_S", 540)))
    ap.add_argument("--only", default="", help="comma-separated sections to run (build always runs)")
    ap.add_argument("--no-build", action="store_true", help="reuse the extension already built here")
    ap.add_argument("--argv-text", default="", help=argparse.SUPPRESS)
    ap.add_argument("outdir", nargs="?", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    if not args.outdir:
        ap.error("OUTDIR is required when $OUT is not set")
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    sections = parse_sections(args.sections)
    known = {s["name"] for s in sections} | {s["name"].removeprefix("gpu_") for s in sections}
    unknown = args.only - known
    if unknown:
        ap.error(f"--only names unknown sections {sorted(unknown)}; sections: {[s['name'] for s in sections]}")
    d = Driver(args)
    d.say(f"gpu.sh: deadline {args.deadline:.0f} s, output {d.out}, sections "
          + ", ".join(s["name"] for s in sections) + (" (dry run)" if args.dry_run else ""))
    d.merge()
    try:
        for sec in sections:
            d.run_section(sec)
    finally:
        d.merge()
        shutil.rmtree(d.scratch, ignore_errors=True)
    summary = d.markdown().split("\n## ", 1)[0]  # the header and the sections table, for a terminal
    print(summary, flush=True)
    bad = [n for n in d.order if d.sections[n]["status"] in ("failed", "timed out")]
    d.say(f"done in {d.elapsed():.0f} s: " + ", ".join(f"{n} {d.sections[n]['status']}" for n in d.order))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
