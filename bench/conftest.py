"""``pytest bench/ --benchmark-only``: the benchmark suites under pytest-benchmark.

* Collects the suites ``bench/bench_*.py`` (pytest's own pattern is ``test_*.py``; the
  suites keep their script names, ``python bench/bench_conv.py ...`` still works).
* Every case carries a ``bench_device`` mark: on a machine with CUDA the GPU (full-size)
  cases run and the CPU-sized ones are skipped, without CUDA the reverse; each skip says
  why. ``--bench-device cpu|cuda`` picks explicitly.
* The session header shows the environment (device, ISA / GPU, versions, commit) and warns
  when torch's thread count exceeds the free cores.
* The ``bench_record`` fixture turns a finished measurement into a harness row: GB/s and
  TFLOP/s go into ``benchmark.extra_info`` and the summary table at the end, and the row is
  appended to ``--bench-csv FILE`` (the harness CSV schema, docs/benchmarks.md).
"""
from __future__ import annotations

import fnmatch
import warnings

import pytest
import torch

from raunet_fast.bench_harness import BenchRow, Stats, append_rows, environment, thread_warning

#: a per-case time limit above the repository's 300 s test timeout (compiles, autotuning)
CASE_TIMEOUT_S = 900


def pytest_addoption(parser):
    group = parser.getgroup("raunet-fast bench")
    group.addoption("--bench-device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="which cases run: cuda (full sizes), cpu (CPU sizes); default: cuda "
                         "where available")
    group.addoption("--bench-csv", default=None, metavar="FILE",
                    help="append every measured case as a harness CSV row to FILE")
    group.addoption("--bench-compile", action="store_true",
                    help="CPU: also run the torch.compile cases of the kernel suites (minutes "
                         "of compilation on a few cores)")


def pytest_collect_file(file_path, parent):
    """The suites are ``bench_*.py``; files pytest collects anyway (an explicit path, a
    ``python_files`` pattern that matches) are left to its own collector."""
    if not fnmatch.fnmatch(file_path.name, "bench_*.py") or parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_device(kind): the device a benchmark case runs "
                                       "on (cpu: CPU-sized, cuda: full sizes)")
    config.bench_rows = []
    config.bench_baselines = {}
    config.bench_envs = {}   # device type -> Env (one date and commit per session)


def chosen_device(config) -> str:
    kind = config.getoption("--bench-device")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return kind


def pytest_report_header(config):
    kind = chosen_device(config)
    env = environment(kind if torch.cuda.is_available() else "cpu")
    lines = [f"raunet-fast bench: the {kind} cases on {env.describe()}"]
    warning = thread_warning() if kind == "cpu" else None
    if warning:
        lines.append(f"WARNING: {warning}")
        warnings.warn(warning, RuntimeWarning, stacklevel=1)
    return lines


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CASE_TIMEOUT_S))


def pytest_runtest_setup(item):
    mark = item.get_closest_marker("bench_device")
    if mark is None:
        return
    want, have = mark.args[0], chosen_device(item.config)
    if want == "cuda" and not torch.cuda.is_available():
        pytest.skip("GPU-sized case: needs a CUDA device")
    if want != have:
        pytest.skip(f"{want}-sized case; this session runs the {have} cases "
                    f"(--bench-device {want} to run it)")
    if mark.kwargs.get("compile") and want == "cpu" and not item.config.getoption("--bench-compile"):
        pytest.skip("torch.compile case on the CPU: minutes of compilation (--bench-compile)")


def stats_of(benchmark) -> Stats | None:
    """The :class:`Stats` of a finished pytest-benchmark measurement (None when timing was
    disabled, e.g. ``--benchmark-disable``)."""
    result = getattr(benchmark, "stats", None)
    data = getattr(getattr(result, "stats", None), "data", None)
    if not data:
        return None
    return Stats.of(t * 1e3 for t in data)


class Recorder:
    """``bench_record(benchmark, suite=..., case=..., shape=..., dtype=..., variant=...,
    device=..., nbytes=..., flops=..., err=..., err_kind=..., baseline=...)`` after a
    measurement: fills ``benchmark.extra_info`` (shape, GB/s, TFLOP/s, ratio) and keeps
    the harness row. A case whose variant is its own ``baseline`` sets the baseline for
    the later cases of the same (suite, case, shape, dtype)."""

    def __init__(self, config):
        self.config = config

    def __call__(self, benchmark, *, device, nbytes=None, flops=None, baseline="",
                 extra=None, **fields) -> BenchRow | None:
        stats = stats_of(benchmark)
        if stats is None:
            return None
        envs = self.config.bench_envs
        kind = torch.device(device).type
        env = envs.get(kind) or envs.setdefault(kind, environment(device))
        row = env.row(stats=stats, bytes=nbytes, flops=flops, extra=dict(extra or {}), **fields)
        key = (row.suite, row.case, row.shape, row.dtype)
        if baseline and row.variant == baseline:
            self.config.bench_baselines[key] = row.median_ms
        if baseline and key in self.config.bench_baselines:
            row.baseline = baseline
            row.ratio_vs_baseline = self.config.bench_baselines[key] / row.median_ms
        benchmark.extra_info.update(
            {k: v for k, v in (("shape", row.shape), ("dtype", row.dtype),
                               ("device", row.device), ("arch", row.arch),
                               ("gb_per_s", row.gb_per_s), ("tflop_per_s", row.tflop_per_s),
                               ("vs_" + (row.baseline or "baseline"), row.ratio_vs_baseline),
                               ("err", row.err)) if v is not None})
        self.config.bench_rows.append(row)
        return row


@pytest.fixture
def bench_record(request):
    return Recorder(request.config)


def pytest_sessionfinish(session):
    path = session.config.getoption("--bench-csv")
    if path and session.config.bench_rows:
        append_rows(path, session.config.bench_rows)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pytest_terminal_summary(terminalreporter, config):
    rows = config.bench_rows
    if not rows:
        return
    tr = terminalreporter
    tr.section("raunet-fast bench: harness rows (median; GB/s, TFLOP/s where known)")
    tr.write_line(f"{'suite':<15} {'shape':<18} {'dtype':<5} {'variant':<22} {'ms':>9} "
                  f"{'p10-p90 ms':>17} {'GB/s':>8} {'TFLOP/s':>8} {'vs base':>8} {'err':>9}")
    for r in rows:
        spread = f"{r.p10_ms:.3f}-{r.p90_ms:.3f}"
        tr.write_line(f"{r.suite:<15} {r.shape:<18} {r.dtype:<5} {r.variant:<22} "
                      f"{r.median_ms:>9.3f} {spread:>17} {fmt(r.gb_per_s, '8.1f')} "
                      f"{fmt(r.tflop_per_s, '8.3f')} {fmt(r.ratio_vs_baseline, '8.2f')} "
                      f"{fmt(r.err, '9.2e')}")
    path = config.getoption("--bench-csv")
    if path:
        tr.write_line(f"appended {len(rows)} rows to {path}")
