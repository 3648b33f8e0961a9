"""Run under ``torchrun`` by tests/test_distributed.py: the jobs of a JSON file, in order, in
one gloo process group (one start-up for all of them).

Each job is ``{"kind": "cli", "argv": [...]}`` (``raunet-fast`` with these arguments; must
succeed) or ``{"kind": "predict", "options": {...}}`` (``raunet_fast.engine.predict``);
``OUT/rank<r>.json`` records, per job name, the exit code or the files this rank wrote.
"""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist


def main(jobs_file: str, out: str) -> int:
    from raunet_fast import cli
    from raunet_fast.engine import predict

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results = {}
    for name, job in json.loads(Path(jobs_file).read_text()).items():
        if job["kind"] == "cli":
            results[name] = cli.main(job["argv"])
            if results[name] != 0:
                raise SystemExit(f"job {name} failed ({results[name]})")
        else:
            results[name] = predict(**job["options"])["rank_files"]
        dist.barrier()
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
