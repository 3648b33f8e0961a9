// "cpp" backend of raunet_fast.ops.attention_gate: the per-pixel math of attention_gate.h
// built for the CPU (g++, OpenMP), register-blocked so it beats the eager module.
//
// Work split: OpenMP over tiles of kTile pixels. Per tile: x and g rows are converted to
// one float buffer (kTile x K, K = Cx + Cg), then for each chunk of kFB intermediate
// channels a micro kernel accumulates kPB pixels x kFB channels in registers over all K,
// and the header's epilogue (bias, ReLU, psi dot) adds into the pixel's logit. Finally
// alpha = sigmoid(logit + b_psi) and out = x * alpha. The micro kernel is compiled three
// times (baseline x86-64, AVX2+FMA, AVX-512) and the best the CPU supports is picked at
// run time; set_cpu_isa("generic" | "avx2" | "avx512") forces one (Python passes
// RAUNET_GATE_CPU_ISA through raunet_fast.ops.settings; tests run each).
#include <torch/extension.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention_gate.h"

namespace {

constexpr int kTile = 48;  // pixels per OpenMP work item (a multiple of every kPB below)
constexpr int kFPad = 32;  // F is padded to a multiple of every micro kernel's kFB

// s[p] += sum_j psi[j] relu(acc[p][j] + bias[j]) for the kTile pixels of `in`
// (kTile x K floats, rows past the last pixel are zeros), over the padded weight wt
// (K x Fp floats) in chunks of kFB channels; the epilogue reads the F real channels only.
// Micro kernel: kPB pixels x kFB channels of accumulators in registers (AVX2: 4 x 16 =
// 8 ymm; AVX-512: 6 x 32 = 12 zmm, 2 weight loads and 6 broadcasts per 12 FMAs).
template <int kPB, int kFB>
static inline __attribute__((always_inline)) void tile_logits_impl(
    const float* __restrict__ in, int K, const float* __restrict__ wt, int Fp, int F,
    const float* __restrict__ bias, const float* __restrict__ psi, float* __restrict__ s) {
  for (int f0 = 0; f0 < F; f0 += kFB) {  // chunks of padded channels only: skipped
    const int nf = std::min(kFB, F - f0);  // real channels of this chunk (see psi_dot_relu)
    for (int p0 = 0; p0 < kTile; p0 += kPB) {
      float acc[kPB][kFB];
      for (int p = 0; p < kPB; ++p)
        for (int j = 0; j < kFB; ++j) acc[p][j] = 0.f;
      const float* row = in + (int64_t)p0 * K;
      for (int k = 0; k < K; ++k) {
        const float* w = wt + (int64_t)k * Fp + f0;
        for (int p = 0; p < kPB; ++p) {
          const float v = row[(int64_t)p * K + k];
#pragma omp simd
          for (int j = 0; j < kFB; ++j) acc[p][j] += v * w[j];
        }
      }
      for (int p = 0; p < kPB; ++p)
        s[p0 + p] += raunet_ag::psi_dot_relu(acc[p], bias + f0, psi + f0, nf);
    }
  }
}

static_assert(kTile % 4 == 0 && kTile % 6 == 0, "tiles hold whole micro kernels");
static_assert(kFPad % 16 == 0 && kFPad % 32 == 0, "padding fits every kFB");

void tile_logits_generic(const float* in, int K, const float* wt, int Fp, int F,
                         const float* bias, const float* psi, float* s) {
  tile_logits_impl<4, 16>(in, K, wt, Fp, F, bias, psi, s);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) void tile_logits_avx2(const float* in, int K,
                                                          const float* wt, int Fp, int F,
                                                          const float* bias, const float* psi,
                                                          float* s) {
  tile_logits_impl<4, 16>(in, K, wt, Fp, F, bias, psi, s);
}

__attribute__((target("avx512f,avx512vl,fma,prefer-vector-width=512"))) void tile_logits_avx512(
    const float* in, int K, const float* wt, int Fp, int F, const float* bias, const float* psi,
    float* s) {
  tile_logits_impl<6, 32>(in, K, wt, Fp, F, bias, psi, s);
}
#endif

using TileFn = void (*)(const float*, int, const float*, int, int, const float*, const float*,
                       float*);

// The micro kernel set_cpu_isa() asked for ("": the best the CPU has).
std::string& forced_isa() {
  static std::string isa;
  return isa;
}

void set_cpu_isa(const std::string& isa) { forced_isa() = isa; }

// The micro kernel for this CPU, or the one set_cpu_isa() names (when supported).
TileFn pick_tile_fn() {
  const std::string want = forced_isa();
  if (want == "generic") return tile_logits_generic;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx512 && (want.empty() || want == "avx512")) return tile_logits_avx512;
  if (avx2 && (want.empty() || want == "avx2" || want == "avx512")) return tile_logits_avx2;
#endif
  return tile_logits_generic;
}

// The micro kernel pick_tile_fn() chooses, by name (for tests and benchmarks).
std::string cpu_isa() {
  const TileFn fn = pick_tile_fn();
#if defined(__x86_64__) || defined(__i386__)
  if (fn == tile_logits_avx512) return "avx512";
  if (fn == tile_logits_avx2) return "avx2";
#endif
  return fn == tile_logits_generic ? "generic" : "unknown";
}

// out: P pixels of out_c channels (NHWC): the gated x in channels [0, Cx); with copy_g
// (out_c = Cx + Cg) also g in channels [Cx, Cx + Cg) - the decoder's concatenation, written
// here while g is in cache instead of by a separate cat pass. Values go through float and
// back: exact for float / half / bfloat16.
template <typename T>
void gate_cpu(const T* x, const T* g, const T* wx, const T* wg, const T* bias, const T* psi,
              float bpsi, T* out, T* alpha, const raunet_ag::GateDims d, int64_t out_c,
              bool copy_g) {
  const int K = d.cx + d.cg;
  const int Fp = (d.f + kFPad - 1) / kFPad * kFPad;
  // Packed fp32 weight wt (K x Fp): row k < Cx is column k of W_x, row Cx + k column k of
  // W_g. F is padded with zero columns: the micro kernels run full chunks, and their
  // epilogue skips the padded columns.
  std::vector<float> wpad((size_t)K * Fp, 0.f), bpad(Fp, 0.f), ppad(Fp, 0.f);
  for (int f = 0; f < d.f; ++f) {
    bpad[f] = static_cast<float>(bias[f]);
    ppad[f] = static_cast<float>(psi[f]);
  }
  const TileFn tile_fn = pick_tile_fn();
  const int64_t ntiles = (d.pixels + kTile - 1) / kTile;

#pragma omp parallel num_threads(std::max(1, at::get_num_threads()))
  {
    // the transposing pack, by rows of wpad (1 MB at C = 512: worth the threads)
#pragma omp for schedule(static)
    for (int k = 0; k < K; ++k) {
      float* row = &wpad[(size_t)k * Fp];
      if (k < d.cx) {
        for (int f = 0; f < d.f; ++f) row[f] = static_cast<float>(wx[(int64_t)f * d.cx + k]);
      } else {
        for (int f = 0; f < d.f; ++f)
          row[f] = static_cast<float>(wg[(int64_t)f * d.cg + (k - d.cx)]);
      }
    }  // implicit barrier: wpad complete before any tile uses it
    std::vector<float> in((size_t)kTile * K);
    float s[kTile];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t p_begin = t * kTile;
      const int np = (int)std::min<int64_t>(kTile, d.pixels - p_begin);
      for (int p = 0; p < kTile; ++p) {
        float* dst = &in[(size_t)p * K];
        if (p < np) {
          const T* xr = x + (p_begin + p) * d.cx;
          const T* gr = g + (p_begin + p) * d.cg;
          for (int c = 0; c < d.cx; ++c) dst[c] = static_cast<float>(xr[c]);
          for (int c = 0; c < d.cg; ++c) dst[d.cx + c] = static_cast<float>(gr[c]);
        } else {
          std::fill(dst, dst + K, 0.f);
        }
        s[p] = 0.f;
      }
      tile_fn(in.data(), K, wpad.data(), Fp, d.f, bpad.data(), ppad.data(), s);
      for (int p = 0; p < np; ++p) {
        const float a = raunet_ag::gate_alpha(s[p], bpsi);
        if (alpha != nullptr) alpha[p_begin + p] = static_cast<T>(a);
        const float* xr = &in[(size_t)p * K];
        T* o = out + (p_begin + p) * out_c;
        for (int c = 0; c < d.cx; ++c) o[c] = static_cast<T>(xr[c] * a);
        if (copy_g)
          for (int c = 0; c < d.cg; ++c) o[d.cx + c] = static_cast<T>(xr[d.cx + c]);
      }
    }
  }
}

void check_nhwc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, name, " must be N x C x H x W");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be dense channels_last (NHWC)");
}

void check_param(const at::Tensor& t, const at::Tensor& x, const char* name, int64_t numel) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == x.scalar_type() && t.is_contiguous(),
              name, " must be a contiguous CPU tensor of x's dtype");
  TORCH_CHECK(t.numel() == numel, name, " must have ", numel, " elements, got ", t.numel());
}

}  // namespace

// x: N x Cx x H x W, g: N x Cg x H x W (channels_last, same dtype); w_x: F x Cx,
// w_g: F x Cg, bias: F, psi: F, bpsi: 1 (contiguous, x's dtype); out: like x
// (channels_last), or with concat N x (Cx + Cg) x H x W: [gated x, g] (the decoder's cat);
// alpha: N x 1 x H x W contiguous of x's dtype (used when write_alpha).
void attention_gate_forward(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w_x,
                            const at::Tensor& w_g, const at::Tensor& bias, const at::Tensor& psi,
                            const at::Tensor& bpsi, const at::Tensor& out,
                            const at::Tensor& alpha, bool write_alpha, bool concat) {
  check_nhwc(x, "x");
  check_nhwc(g, "g");
  check_nhwc(out, "out");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && out.scalar_type() == x.scalar_type(),
              "x, g and out must share one dtype");
  TORCH_CHECK(g.size(0) == x.size(0) && g.size(2) == x.size(2) && g.size(3) == x.size(3),
              "g must have x's N, H, W");
  const int64_t out_c = concat ? x.size(1) + g.size(1) : x.size(1);
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == out_c && out.size(2) == x.size(2) &&
                  out.size(3) == x.size(3),
              concat ? "out must be N x (Cx + Cg) x H x W" : "out must have x's shape");
  raunet_ag::GateDims d{x.size(0) * x.size(2) * x.size(3), (int)x.size(1), (int)g.size(1),
                        (int)bias.numel()};
  check_param(w_x, x, "w_x", (int64_t)d.f * d.cx);
  check_param(w_g, x, "w_g", (int64_t)d.f * d.cg);
  check_param(bias, x, "bias", d.f);
  check_param(psi, x, "psi", d.f);
  check_param(bpsi, x, "bpsi", 1);
  if (write_alpha) {
    TORCH_CHECK(alpha.numel() == d.pixels && alpha.is_contiguous() &&
                    alpha.scalar_type() == x.scalar_type() && alpha.device().is_cpu(),
                "alpha must be a contiguous N x 1 x H x W CPU tensor of x's dtype");
  }
  if (d.pixels == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "attention_gate_cpu", [&] {
        gate_cpu<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                           w_x.data_ptr<scalar_t>(), w_g.data_ptr<scalar_t>(),
                           bias.data_ptr<scalar_t>(), psi.data_ptr<scalar_t>(),
                           static_cast<float>(bpsi.data_ptr<scalar_t>()[0]),
                           out.data_ptr<scalar_t>(),
                           write_alpha ? alpha.data_ptr<scalar_t>() : nullptr, d, out_c,
                           concat);
      });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "raunet_fast attention gate, CPU build of csrc/attention_gate.h";
  m.def("attention_gate_forward", &attention_gate_forward,
        "fused attention gate (NHWC) into out / alpha");
  m.def("cpu_isa", &cpu_isa, "micro kernel used: generic, avx2 or avx512");
  m.def("set_cpu_isa", &set_cpu_isa, "force a micro kernel: generic, avx2, avx512 or '' (best)");
}
