"""Residual block throughput on CUDA: the fused "cuda" block (cuDNN fusion) against its two
bare cuDNN convolutions, 50 calls back to back (launch overhead hidden, unlike bench_conv.py,
which times single calls). Also reports whether the op had to copy its output to the promised
layout. bf16, channels_last, batch 8, encoder levels 2-5 of a 512x512 RAUNet."""
import torch, importlib, time
import torch.nn.functional as F
from raunet_fast.blocks import ResidualBlock
from raunet_fast.ops.fused_blocks import FusedResidualBlock
m = importlib.import_module("raunet_fast.ops.conv3x3")
torch.backends.cudnn.benchmark = True
def bench(fn, n=50):
    for _ in range(5): fn()
    torch.cuda.synchronize(); s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n): fn()
    e.record(); e.synchronize(); return s.elapsed_time(e)/n
for cin, cout, hw in ((64,128,256),(128,256,128),(256,512,64),(512,1024,32)):
    blk = ResidualBlock(cin, cout).eval().cuda()
    f = FusedResidualBlock.from_block(blk, dtype=torch.bfloat16, backend="cuda")
    x = torch.randn(8, cin, hw, hw, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    copies = []
    orig = m._as_out
    def spy(y, x_):
        copies.append(not (y.dtype == x_.dtype and y.stride() == m._out_strides(x_, y.shape[1])))
        return orig(y, x_)
    m._as_out = spy
    with torch.no_grad(): f(x)
    m._as_out = orig
    with torch.no_grad():
        t = bench(lambda: f(x))
        w1 = blk.conv1.conv.weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w2 = blk.conv2.conv.weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        h = F.conv2d(x, w1, padding=1)
        floor = bench(lambda: (F.conv2d(x, w1, padding=1), F.conv2d(h, w2, padding=1)))
    print(f"{cin}->{cout}@{hw}: as_out copies {copies}  fused {t:.3f} ms  floor {floor:.3f} ms  ratio {t/floor:.2f}", flush=True)
    print("  params:", {k: (v.dtype, v.is_contiguous(memory_format=torch.channels_last) if v.dim()==4 else v.is_contiguous()) for k, v in f.state_dict().items()})
