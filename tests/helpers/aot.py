"""Ahead-of-time compilation of Triton kernels for GPUs that are not here.

``aot_reports(jobs)`` compiles each job with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`` and runs ptxas ``-v`` on the PTX to read registers,
spill stores/loads, stack and shared memory. Jobs run in one subprocess with
``TRITON_INTERPRET`` unset, because under the interpreter ``@triton.jit`` gives
interpreted functions that cannot be compiled.

A job is a dict::

    {"module": "raunet_fast.ops.attention_gate.triton.kernel", "kernel": "attention_gate_kernel",
     "signature": {"x_ptr": "*fp16", "n": "i32", "BLOCK": "constexpr", ...},
     "constexprs": {"BLOCK": 64, ...}, "arch": 90, "num_warps": 4, "num_stages": 3}

Optional ``"divisible_by_16": ["x_ptr", "n", ...]``: arguments Triton's runtime would
specialise as 16-divisible (aligned pointers, ints % 16 == 0), as a real launch does.

Its report adds ``registers``, ``spill_stores``, ``spill_loads``, ``stack``,
``shared`` (bytes of shared memory from the compiled metadata), ``ptxas_log``,
``ptx_ops`` (counts of wgmma / mma.sync / cp.async / TMA instructions in the PTX) and
``loop_local_loads`` (shared-to-register copies inside each ``scf.for`` of the TTGIR, in
program order; nested loops are counted in their parent too).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

_RUNNER = r'''
import json, os, re, subprocess, sys, tempfile, importlib, shutil
from pathlib import Path
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget

def ptxas_candidates():
    # the newest ptxas first: triton's PTX .version may be newer than its bundled ptxas
    b = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    cands = [shutil.which("ptxas"), str(b / "ptxas-blackwell"), str(b / "ptxas")]
    return [c for c in cands if c and os.path.exists(c)]

out = []
for job in json.load(sys.stdin):
    kern = getattr(importlib.import_module(job["module"]), job["kernel"])
    kern = getattr(kern, "fn", kern) if not isinstance(kern, triton.runtime.jit.JITFunction) else kern
    # autotuned / heuristics wrappers hold the JITFunction in .fn
    while not isinstance(kern, triton.runtime.jit.JITFunction):
        kern = kern.fn
    consts = job.get("constexprs", {})
    sig = dict(job["signature"])
    # runtime specialisation: Triton marks pointers 16-byte aligned and ints divisible by 16
    # ("tt.divisibility"); without it AOT builds miss vectorised / async (cp.async) loads
    attrs = {(kern.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in job.get("divisible_by_16", [])}
    src = ASTSource(fn=kern, signature=sig, constexprs=consts, attrs=attrs)
    arch = job["arch"]
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": job.get("num_warps", 4),
                                       "num_stages": job.get("num_stages", 3)})
    ptx = compiled.asm["ptx"]
    m = re.search(r"\.target\s+(sm_\w+)", ptx)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.ptx")
        open(p, "w").write(ptx)
        for exe in ptxas_candidates():
            r = subprocess.run([exe, "-v", f"--gpu-name={m.group(1)}", p, "-o",
                                os.path.join(d, "k.cubin")], capture_output=True, text=True)
            if r.returncode == 0:
                break
    log = r.stdout + r.stderr
    def num(pat):
        mm = re.search(pat, log)
        return int(mm.group(1)) if mm else None
    # shared -> register copies (ttg.local_load) inside each scf.for loop, in program order:
    # 0 for a K loop whose MMA operands stay in shared memory
    ttgir = compiled.asm.get("ttgir", "")
    loops, lines = [], ttgir.splitlines()
    for i, line in enumerate(lines):
        if "scf.for" in line and line.rstrip().endswith("{"):
            depth, count = 0, 0
            for inner in lines[i:]:
                depth += inner.count("{") - inner.count("}")
                count += inner.count("ttg.local_load")
                if depth <= 0:
                    break
            loops.append(count)
    out.append(dict(job, loop_local_loads=loops, registers=num(r"Used (\d+) registers"),
                    spill_stores=num(r"(\d+) bytes spill stores"),
                    spill_loads=num(r"(\d+) bytes spill loads"),
                    stack=num(r"(\d+) bytes stack frame"),
                    shared=int(compiled.metadata.shared), ptxas_ok=r.returncode == 0,
                    ptxas_log=log[-3000:],
                    # which matrix instructions and async copies the code generator chose
                    ptx_ops={"wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
                             "mma.sync": len(re.findall(r"\bmma\.sync", ptx)),
                             "cp.async": len(re.findall(r"cp\.async\.(?:ca|cg)", ptx)),
                             "tma": len(re.findall(r"cp\.async\.bulk\.tensor", ptx))}))
json.dump(out, sys.stdout)
'''


def aot_reports(jobs: list[dict], timeout: float = 600) -> list[dict]:
    """Compile every job for its target; return one report per job (see module doc)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(jobs), env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"AOT compile failed:\n{r.stderr[-5000:]}")
    return json.loads(r.stdout)


def nvcc_compile(source: str, arch: int, include_dirs: list[str], extra: list[str] | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """Compile a .cu file to an object for sm_<arch> (no GPU needed). Returns the process."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cmd = ["nvcc", "-c", source, "-o", os.path.join(d, "k.o"), "-std=c++17", "-O3",
               f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas=-v",
               *[f"-I{i}" for i in include_dirs], *(extra or [])]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def ptxas_spills(log: str) -> list[int]:
    """Spill-store byte counts of every function in a ptxas -v log."""
    return [int(x) for x in re.findall(r"(\d+) bytes spill stores", log)]


#: Where the AOT tests write their build tables (registers, spills, shared memory per
#: config): kept out of pytest's output, one file per table.
LOG_DIR = Path(__file__).resolve().parents[2] / "build" / "test-logs"


def write_table(name: str, title: str, lines) -> Path:
    """Write one build table to ``LOG_DIR/<name>.txt`` and return its path."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{name}.txt"
    path.write_text(title + "\n" + "\n".join(lines) + "\n")
    return path
