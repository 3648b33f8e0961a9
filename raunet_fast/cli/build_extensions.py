"""``raunet-fast build-extensions``: compile the C++ (and CUDA) extensions now."""
from __future__ import annotations


def run(args) -> int:
    from ..ops.extensions import build_extensions

    results = build_extensions(cuda=args.cuda)
    failed = [name for name, status, _ in results if status != "ok"]
    if failed:
        print(f"build-extensions: {len(failed)} of {len(results)} failed ({', '.join(failed)}); "
              f"the fused ops fall back to other backends for them")
        return 1
    print(f"build-extensions: {len(results)} extensions ready")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("build-extensions", help="compile the C++ / CUDA extensions now (else "
                                                "at first fused call)",
                       description="Build the csrc/ extensions of the fused ops ahead of use, "
                                   "into a folder keyed by the sources, torch and Python "
                                   "(RAUNET_EXTENSIONS_DIR, default ~/.cache/raunet_fast/"
                                   "extensions). Already built ones are found at once.")
    p.add_argument("--cuda", action="store_true", help="also the CUDA extensions (needs nvcc)")
    p.set_defaults(func=run)
