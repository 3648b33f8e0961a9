"""Residual block throughput on CUDA, 50 calls back to back (launch overhead hidden, unlike
bench_conv.py, which times single calls): the fused block with the "cuda" backend (cuDNN's
runtime fusion), "triton" (the flat-K kernel for the narrow first conv; on sm_90 the TMA
kernel with the projection in its K loop, elsewhere the pointer kernel) and "auto" (the
per-layer one-time pick between them), each against the block's two bare cuDNN
convolutions. bf16, channels_last, batch 8, the five encoder levels of a 512x512 RAUNet.
Also reports whether an op had to copy its output to the promised layout, and what "auto"
picked per layer."""
import importlib

import torch
import torch.nn.functional as F

from raunet_fast.blocks import ResidualBlock
from raunet_fast.ops.fused_blocks import FusedResidualBlock

m = importlib.import_module("raunet_fast.ops.conv3x3")
torch.backends.cudnn.benchmark = True


def bench(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True)
    e = torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / n


def main():
    for cin, cout, hw in ((3, 64, 512), (64, 128, 256), (128, 256, 128), (256, 512, 64),
                          (512, 1024, 32)):
        torch.manual_seed(0)
        blk = ResidualBlock(cin, cout).eval().cuda()
        x = torch.randn(8, cin, hw, hw, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            w1 = blk.conv1.conv.weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            w2 = blk.conv2.conv.weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            h = F.conv2d(x, w1, padding=1)
            floor = bench(lambda: (F.conv2d(x, w1, padding=1), F.conv2d(h, w2, padding=1)))
            ref = FusedResidualBlock.from_block(blk, dtype=torch.bfloat16, backend="torch")(x)
        line = [f"{cin}->{cout}@{hw}: floor {floor:.3f} ms"]
        for be in ("cuda", "triton", "auto"):
            f = FusedResidualBlock.from_block(blk, dtype=torch.bfloat16, backend=be)
            copies = []
            orig = m._as_out

            def spy(y, x_):
                copies.append(not (y.dtype == x_.dtype and
                                   y.stride() == m._out_strides(x_, y.shape[1])))
                return orig(y, x_)

            m._as_out = spy
            picked_before = dict(m._PICKED)
            try:
                with torch.no_grad():
                    y = f(x)
            except Exception as e:  # one backend failing is a result, not the end of the run
                line.append(f"{be}: failed {type(e).__name__}: {str(e)[:120]}")
                continue
            finally:
                m._as_out = orig
            err = float((y.float() - ref.float()).abs().max() / ref.float().abs().max())
            with torch.no_grad():
                t = bench(lambda: f(x))
            picks = {k[:3]: v for k, v in m._PICKED.items() if k not in picked_before}
            extra = f" picks {picks}" if be == "auto" and picks else ""
            line.append(f"{be} {t:.3f} ms ({t / floor:.2f}x floor, err {err:.1e}, "
                        f"copies {sum(copies)}){extra}")
        print("\n  ".join(line), flush=True)


if __name__ == "__main__":
    main()
