"""The one benchmark harness: a row, its CSV schema, the environment it was measured in,
the timing method and the statistics every benchmark of the package reports.

Every writer (``raunet-fast benchmark``, the ``bench/`` scripts and the
``pytest bench/ --benchmark-only`` suites) builds :class:`BenchRow` objects and appends them
with :func:`append_rows`, so one CSV file can hold rows of every suite, device and run::

    env = environment(device)
    stats = Stats.of(times_ms)
    row = env.row(suite="attention_gate", case="level1", shape="1x64x256x256",
                  dtype="fp32", variant="cpp", stats=stats, nbytes=gate_bytes(x, g))
    append_rows("bench/results/cpu-20261127/attention_gate.csv", [row])

The columns are the fields of :class:`BenchRow`, in order (``CSV_FIELDS``); docs/benchmarks.md
has the table. Speed is shown by benchmarks, never asserted by tests.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

#: bench dtype names -> torch dtypes (one map for every benchmark)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: CPU flags worth knowing when reading a CPU timing (those /proc/cpuinfo lists)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


# ---------------------------------------------------------------------------- the row
@dataclasses.dataclass
class BenchRow:
    """One measurement: what was timed, where, and how fast. ``None`` is an empty cell.

    ``ratio_vs_baseline`` is ``baseline median / this median`` (a speed-up, > 1 is faster)
    against the row named in ``baseline`` measured in the same run; ``err`` is the error
    against the reference named in ``err_kind``; ``extra`` holds a suite's own columns
    (a JSON object in the CSV)."""

    suite: str
    case: str
    shape: str
    dtype: str
    variant: str
    median_ms: float
    p10_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    min_ms: Optional[float] = None
    rounds: Optional[int] = None
    bytes: Optional[int] = None
    gb_per_s: Optional[float] = None
    flops: Optional[float] = None
    tflop_per_s: Optional[float] = None
    baseline: str = ""
    ratio_vs_baseline: Optional[float] = None
    err: Optional[float] = None
    err_kind: str = ""
    device: str = ""
    device_type: str = ""
    arch: str = ""
    threads: Optional[int] = None
    python: str = ""
    torch: str = ""
    triton: str = ""
    date: str = ""
    commit: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.bytes is not None and self.gb_per_s is None and self.median_ms > 0:
            self.gb_per_s = self.bytes / self.median_ms / 1e6
        if self.flops is not None and self.tflop_per_s is None and self.median_ms > 0:
            self.tflop_per_s = self.flops / self.median_ms / 1e9


CSV_FIELDS = [f.name for f in dataclasses.fields(BenchRow)]
_TYPES = {f.name: f.type for f in dataclasses.fields(BenchRow)}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # strict JSON: a nan value is written as null
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v
                 for k, v in value.items()}
        return json.dumps(clean, sort_keys=True) if clean else ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _parse(name: str, text: str) -> Any:
    kind = _TYPES[name]
    if kind == "dict":
        return json.loads(text) if text else {}
    if kind == "str":
        return text
    if text == "":
        return None
    return int(text) if "int" in kind else float(text)


def row_to_dict(row: BenchRow) -> dict[str, str]:
    """The row as CSV cells (strings; floats written exactly, ``extra`` as JSON)."""
    return {name: _cell(getattr(row, name)) for name in CSV_FIELDS}


def row_from_dict(cells: dict[str, str]) -> BenchRow:
    return BenchRow(**{name: _parse(name, cells.get(name, "")) for name in CSV_FIELDS})


# ------------------------------------------------------------------------- the CSV file
def check_csv(path: str | Path) -> None:
    """Raise ``ValueError`` if ``path`` exists and holds rows with other columns (an older
    schema, another tool's file): appending would misalign them. Call it before timing."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if header is not None and header != CSV_FIELDS:
        raise ValueError(f"{path} holds rows with other columns ({', '.join(header[:6])}, ...); "
                         f"write to a new file")


def append_rows(path: str | Path, rows: Iterable[BenchRow]) -> int:
    """Append ``rows`` to the CSV at ``path`` (created with its parents; the header is
    written once, when the file is new or empty). Returns the number of rows written."""
    rows = list(rows)
    if not rows:
        return 0
    path = Path(path)
    check_csv(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(row_to_dict(r) for r in rows)
    return len(rows)


def read_rows(path: str | Path) -> list[BenchRow]:
    """The rows of a harness CSV (``ValueError`` for a file with other columns)."""
    check_csv(path)
    with open(path, newline="") as f:
        return [row_from_dict(cells) for cells in csv.DictReader(f)]


# ------------------------------------------------------------------------ environment
def cpu_arch() -> str:
    """PyTorch's CPU kernel level and the CPU's vector / matrix flags, e.g.
    ``"AVX512: avx2 fma avx512f ... amx_tile"`` (flags from /proc/cpuinfo where it exists)."""
    try:
        level = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        level = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    have = " ".join(fl for fl in CPU_FLAGS if fl in flags)
    return f"{level}: {have}" if have else level or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "")
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "cpu"


def device_arch(device: torch.device | str) -> str:
    """``sm_XY`` of a CUDA device, else :func:`cpu_arch`."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    return cpu_arch()


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def git_commit(where: str | Path | None = None) -> str:
    """The short commit of the checkout holding ``where`` (default: this package), or ""
    outside a git checkout (an installed wheel)."""
    where = Path(where) if where else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Env:
    """Where a run is measured: the environment columns of every row it writes."""

    device: str
    device_type: str
    arch: str
    threads: Optional[int]
    python: str
    torch: str
    triton: str
    date: str
    commit: str

    def row(self, *, stats: "Stats", **fields: Any) -> BenchRow:
        """A :class:`BenchRow` of this environment with ``stats``' timing columns."""
        return BenchRow(**fields, **stats.columns(), **dataclasses.asdict(self))

    def describe(self) -> str:
        threads = f"  {self.threads} threads" if self.threads is not None else ""
        commit = f"  commit {self.commit}" if self.commit else ""
        return (f"{self.device} ({self.arch}){threads}  python {self.python}  torch "
                f"{self.torch}  triton {self.triton or 'none'}  {self.date}{commit}")


def environment(device: torch.device | str = "cpu") -> Env:
    device = torch.device(device)
    return Env(device=device_name(device), device_type=device.type, arch=device_arch(device),
               threads=torch.get_num_threads() if device.type == "cpu" else None,
               python=platform.python_version(), torch=torch.__version__,
               triton=triton_version(), date=utc_now(), commit=git_commit())


def free_cores() -> float:
    """CPUs this process may run on minus the load average (what other processes use)."""
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        ncpu = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(0.0, ncpu - load)


def thread_warning() -> str | None:
    """A one-line warning when torch's intra-op thread count exceeds the free cores (a
    shared machine: threads then wait for each other and small ops read many times their
    time), else None."""
    threads, free = torch.get_num_threads(), free_cores()
    if threads <= max(1.0, free) + 0.5:
        return None
    return (f"torch uses {threads} threads but about {free:.1f} cores are free (load average "
            f"{os.getloadavg()[0]:.2f}): CPU timings will be inflated; set OMP_NUM_THREADS / "
            f"torch.set_num_threads to the free cores or measure on an idle machine")


# ------------------------------------------------------------------------- statistics
@dataclasses.dataclass(frozen=True)
class Stats:
    """Median, 10th / 90th percentile and minimum of per-call times in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    rounds: int

    @classmethod
    def of(cls, times_ms: Iterable[float]) -> "Stats":
        t = sorted(times_ms)
        if not t:
            raise ValueError("no times to summarise")
        return cls(statistics.median(t), percentile(t, 10), percentile(t, 90), t[0], len(t))

    def columns(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile of an ascending list."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def set_ratios(rows: list[BenchRow], baseline: str, key: Callable[[BenchRow], Any] = None) -> None:
    """Fill ``baseline`` / ``ratio_vs_baseline`` of ``rows`` against the row of variant
    ``baseline`` with the same ``key`` (default: suite, case, shape, dtype)."""
    key = key or (lambda r: (r.suite, r.case, r.shape, r.dtype))
    base = {key(r): r.median_ms for r in rows if r.variant == baseline}
    for r in rows:
        if key(r) in base and r.median_ms > 0:
            r.baseline, r.ratio_vs_baseline = baseline, base[key(r)] / r.median_ms


# ----------------------------------------------------------------------------- timing
class Timer:
    """Median milliseconds of ``fn()`` on ``device`` (CUDA: events, L2 flushed before each
    call; CPU: perf_counter). After a call, ``last`` holds the :class:`Stats` of that
    measurement and ``last_min`` its fastest call.

    ``head_start`` (CUDA): after the flush the GPU also spins ~0.5 ms before the start
    event, so the host has enqueued the call's kernels before the GPU reaches them and the
    time is the device's, not the Python launch latency of the first kernel. Host time
    *between* a variant's kernels still counts wherever the GPU catches up with the host.
    Kernel benchmarks use it; end-to-end latency (``raunet-fast benchmark``) does not:
    without it the GPU is idle when the start event is recorded."""

    SPIN_CYCLES = 1_000_000

    def __init__(self, device: torch.device | str, warmup: int = 5, iters: int = 20,
                 head_start: bool = True):
        self.device, self.warmup, self.iters = torch.device(device), warmup, iters
        self.head_start = head_start
        self.last: Optional[Stats] = None
        self.last_min = float("nan")
        self.flush_buffer = (torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=self.device)
                             if self.device.type == "cuda" else None)

    def __call__(self, fn: Callable[[], Any]) -> float:
        with torch.no_grad():
            for _ in range(self.warmup):
                fn()
            times = self.cuda_times(fn) if self.device.type == "cuda" else self.cpu_times(fn)
        self.last = Stats.of(times)
        self.last_min = self.last.min_ms
        return self.last.median_ms

    def cpu_times(self, fn: Callable[[], Any]) -> list[float]:
        times = []
        for _ in range(self.iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return times

    def cuda_times(self, fn: Callable[[], Any]) -> list[float]:
        torch.cuda.synchronize(self.device)
        times = []
        for _ in range(self.iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            self.flush_buffer.zero_()
            if self.head_start:
                torch.cuda._sleep(self.SPIN_CYCLES)
            else:  # from an idle GPU: the host's launch time counts in full
                torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error ``|a - ref| / |ref|`` (float64)."""
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def max_abs(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item()


def shape_str(shape: Iterable[int]) -> str:
    """``(1, 3, 128, 128)`` -> ``"1x3x128x128"`` (the ``shape`` column and test ids)."""
    return "x".join(str(int(s)) for s in shape)


def script_rows_written(path: str | Path | None, rows: list[BenchRow],
                        print_fn: Callable[[str], None] = print) -> None:
    """The bench scripts' ``--out``: append ``rows`` and say so (nothing without a path)."""
    if path and rows:
        append_rows(path, rows)
        print_fn(f"# appended {len(rows)} rows to {path}")


if __name__ == "__main__":  # python -m raunet_fast.bench_harness: this machine's env line
    print(environment("cuda" if torch.cuda.is_available() else "cpu").describe())
    print(thread_warning() or "threads: ok", file=sys.stderr)
