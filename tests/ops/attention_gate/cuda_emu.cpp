// CPU emulation of the attention gate's CUDA kernels (csrc/attention_gate_kernels.cuh).
//
// Without a GPU, this is how the CUDA code's indexing, shared-memory staging, barriers,
// warp shuffles, vector-load alignment and WMMA tiling are checked: the kernels are
// compiled by g++ against the small CUDA shim below and run block by block, one OpenMP
// thread per CUDA thread (__syncthreads = omp barrier, __shared__ = static storage shared
// by the team, __shfl_xor_sync through a barrier-fenced buffer, WMMA fragments as whole
// 16x16 matrices computed per thread). Results are compared with an fp64 reference, also
// with NaN / Inf in an operand (then NaN and Inf must come out exactly where it has them).
// Built and run by tests/ops/attention_gate/test_cpu.py (test_gate_cuda_kernels_emulated_on_cpu);
// prints one line per case and exits non-zero on any mismatch.
#define RAUNET_AG_EMULATE 1

#include <omp.h>

#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

// ------------------------------------------------------------------------- CUDA shim
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define AG_ASSERT_ALIGNED(ptr, bytes)                                                      \
  do {                                                                                     \
    if (reinterpret_cast<uintptr_t>(ptr) % (bytes) != 0) {                                 \
      std::fprintf(stderr, "misaligned %d-byte access at %s:%d\n", (int)(bytes), __FILE__, \
                   __LINE__);                                                              \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

struct Dim3 {
  unsigned x, y, z;
};
static unsigned g_block_idx = 0;  // set by the launcher before each block
#define threadIdx (Dim3{static_cast<unsigned>(omp_get_thread_num()), 0u, 0u})
#define blockIdx (Dim3{g_block_idx, 0u, 0u})

inline void __syncthreads() {
#pragma omp barrier
}
inline void __trap() { std::abort(); }

template <typename T>
inline T __ldg(const T* p) {
  if (sizeof(T) == 16) AG_ASSERT_ALIGNED(p, 16);
  return *p;
}

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  static float buf[1024];
  const int t = omp_get_thread_num();
  // every thread of a warp shuffles together (the kernels call it uniformly)
  buf[t] = v;
#pragma omp barrier
  const float r = buf[(t & ~31) | ((t & 31) ^ lane_mask)];
#pragma omp barrier
  return r;
}

// IEEE half and bfloat16 with round-to-nearest-even conversions
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t s = (h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1f, m = h.bits & 0x3ff;
  uint32_t out;
  if (e == 0) {
    if (m == 0) {
      out = s;
    } else {  // subnormal
      float f = std::ldexp(static_cast<float>(m), -24);
      return s ? -f : f;
    }
  } else if (e == 31) {
    out = s | 0x7f800000u | (m << 13);
  } else {
    out = s | ((e + 112) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

inline __half __float2half_rn(float f) {
  // exact for everything the tests produce (normal range, no overflow); via double math
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (a == 0.f) return {sign};
  if (std::isnan(f)) return {static_cast<uint16_t>(sign | 0x7e00)};
  if (a >= 65520.f) return {static_cast<uint16_t>(sign | 0x7c00)};
  int e;
  std::frexp(a, &e);                         // a = m * 2^e, m in [0.5, 1)
  const int exp_unb = std::max(e - 1, -14);  // subnormals share exponent -14
  const double scaled = std::ldexp(static_cast<double>(a), 10 - exp_unb);
  double r = std::nearbyint(scaled);  // round half to even (default rounding mode)
  uint32_t mant = static_cast<uint32_t>(r);
  uint32_t biased = static_cast<uint32_t>(exp_unb + 15);
  if (mant >= 2048) {  // rounded up into the next binade
    mant >>= 1;
    biased += 1;
  }
  uint16_t bits;
  if (mant < 1024) {
    bits = static_cast<uint16_t>(mant);  // subnormal
  } else {
    bits = static_cast<uint16_t>((biased << 10) | (mant & 0x3ff));
  }
  return {static_cast<uint16_t>(sign | bits)};
}

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  const uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return {static_cast<uint16_t>(u >> 16)};
}

// WMMA: each thread holds the warp's whole 16x16 fragment (results are identical on all
// lanes, so the redundant stores write the same values)
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
enum layout_t { mem_row_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float v[16][16];
};

inline float emu_to_float(float v) { return v; }
inline float emu_to_float(__half v) { return __half2float(v); }
inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename F>
inline void fill_fragment(F& f, float value) {
  for (auto& row : f.v)
    for (float& e : row) e = value;
}

template <typename Use, typename T>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, row_major>& f, const T* p,
                             unsigned ldm) {
  AG_ASSERT_ALIGNED(p, 32);  // WMMA needs 256-bit aligned tile pointers
  if ((ldm * sizeof(T)) % 16 != 0) {
    std::fprintf(stderr, "wmma ldm %u not a multiple of 16 bytes\n", ldm);
    std::abort();
  }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = emu_to_float(p[r * ldm + c]);
}

template <typename T>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, T, row_major>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.v[r][n];
      for (int k = 0; k < 16; ++k) s += a.v[r][k] * b.v[k][n];
      out[r][n] = s;
    }
  std::memcpy(d.v, out, sizeof(out));
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t) {
  AG_ASSERT_ALIGNED(p, 32);
  if (ldm % 4 != 0) {
    std::fprintf(stderr, "wmma float ldm %u not a multiple of 4\n", ldm);
    std::abort();
  }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[r * ldm + c] = f.v[r][c];
}
}  // namespace wmma
}  // namespace nvcuda

#define __CUDA_ARCH__ 900
#include "attention_gate_kernels.cuh"

// ----------------------------------------------------------------------------- harness
using raunet_ag::attention_gate_kernel;
using raunet_ag::attention_gate_mma_kernel;

template <typename T>
T from_f(float v);
template <>
float from_f<float>(float v) { return v; }
template <>
__half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
inline double to_d(float v) { return v; }
inline double to_d(__half v) { return __half2float(v); }
inline double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }

template <int NT, typename Kernel>
void run_blocks(int64_t blocks, Kernel&& body) {
  omp_set_dynamic(0);
  for (int64_t b = 0; b < blocks; ++b) {
    g_block_idx = static_cast<unsigned>(b);
#pragma omp parallel num_threads(NT)
    {
      if (omp_get_num_threads() != NT) {
        std::fprintf(stderr, "OpenMP gave %d threads, need %d\n", omp_get_num_threads(), NT);
        std::abort();
      }
      body();
    }
  }
}

struct Case {
  int cx, cg, f;
  int64_t P;
};

// A non-finite value written into one operand before the run (site: nullptr for none).
// site "x-off" / "g-off": +Inf in channel 0 of two pixels whose weights for that channel
// are all negative, so ReLU switches it off and the reference stays finite but for the
// Inf itself (it must not meet a padded zero weight and come out as NaN).
struct Poison {
  const char* site;  // "x", "g", "wx", "wg", "bias", "psi", "bpsi", "x-off" or "g-off"
  float value;
};

// got against the fp64 reference: NaN where it has NaN, the same infinity where it has one
// (IEEE semantics: no NaN dropped, none made), else within tol.
inline bool same_value(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::fabs(got - want) <= tol * (1 + std::fabs(want));
}

// Runs one kernel variant; returns the number of mismatching values (and prints a line).
template <typename T>
int run_case(const char* tname, const Case& cs, bool mma, bool misalign, std::mt19937& rng,
             double tol, Poison poison = {nullptr, 0.f}) {
  std::normal_distribution<float> nd(0.f, 1.f);
  const int cx = cs.cx, cg = cs.cg, F = cs.f;
  const int64_t P = cs.P;
  const int off = misalign ? 1 : 0;  // shift data by one element: not 16-byte aligned
  // 64-byte aligned backing stores (+ off elements)
  auto alloc = [](size_t n) { return std::vector<T>(n + 64); };
  auto aligned_ptr = [off](std::vector<T>& v) {
    uintptr_t a = reinterpret_cast<uintptr_t>(v.data());
    uintptr_t al = (a + 63) & ~uintptr_t(63);
    return reinterpret_cast<T*>(al) + off;
  };
  std::vector<T> xb = alloc(P * cx + 8), gb = alloc(P * cg + 8), ob = alloc(P * cx + 8);
  T* x = aligned_ptr(xb);
  T* g = aligned_ptr(gb);
  T* out = aligned_ptr(ob);
  std::vector<T> wx(static_cast<size_t>(F) * cx), wg(static_cast<size_t>(F) * cg), bias(F),
      psi(F), bpsi(1), alpha(P);
  for (int64_t i = 0; i < P * cx; ++i) x[i] = from_f<T>(nd(rng));
  for (int64_t i = 0; i < P * cg; ++i) g[i] = from_f<T>(nd(rng));
  for (auto& w : wx) w = from_f<T>(nd(rng) / std::sqrt(static_cast<float>(cx)));
  for (auto& w : wg) w = from_f<T>(nd(rng) / std::sqrt(static_cast<float>(cg)));
  for (auto& b : bias) b = from_f<T>(0.5f * nd(rng));
  for (auto& p : psi) p = from_f<T>(nd(rng) / std::sqrt(static_cast<float>(F)));
  bpsi[0] = from_f<T>(0.5f * nd(rng));
  for (int64_t i = 0; i < P * cx; ++i) out[i] = from_f<T>(-777.f);
  const std::string site = poison.site != nullptr ? poison.site : "";
  if (site == "x-off" || site == "g-off") {
    const bool on_x = site == "x-off";
    for (int f = 0; f < F; ++f) {
      T& w = on_x ? wx[(size_t)f * cx] : wg[(size_t)f * cg];
      w = from_f<T>(-std::fabs(static_cast<float>(to_d(w))) - 0.1f);
    }
    for (int j = 0; j < 2; ++j)
      (on_x ? x[(rng() % P) * cx] : g[(rng() % P) * cg]) = from_f<T>(INFINITY);
  } else if (!site.empty()) {  // two elements of the named operand
    T* data = site == "x" ? x : site == "g" ? g : site == "wx" ? wx.data()
            : site == "wg" ? wg.data() : site == "bias" ? bias.data()
            : site == "psi" ? psi.data() : bpsi.data();
    const int64_t n = site == "x" ? P * cx : site == "g" ? P * cg : site == "wx" ? (int64_t)F * cx
                    : site == "wg" ? (int64_t)F * cg : site == "bpsi" ? 1 : F;
    for (int j = 0; j < 2; ++j) data[rng() % n] = from_f<T>(poison.value);
  }

  constexpr int VEC = 16 / sizeof(T);
  const bool vec = !misalign && cx % VEC == 0 && cg % VEC == 0;
  const bool tf32 = F <= 32;
  const T* wxp = wx.data();
  const T* wgp = wg.data();
  const T* bp = bias.data();
  const T* pp = psi.data();
  const T* bpp = bpsi.data();
  T* ap = alpha.data();
#define AG_ARGS x, g, wxp, wgp, bp, pp, bpp, out, ap, P, cx, cg, F
  if (mma) {
    if constexpr (sizeof(T) == 2) {
      const int64_t blocks = (P + raunet_ag::kMmaTP - 1) / raunet_ag::kMmaTP;
      constexpr int NT = raunet_ag::kMmaThreads;
      if (tf32 && vec) run_blocks<NT>(blocks, [&] { attention_gate_mma_kernel<T, 32, VEC>(AG_ARGS); });
      if (tf32 && !vec) run_blocks<NT>(blocks, [&] { attention_gate_mma_kernel<T, 32, 1>(AG_ARGS); });
      if (!tf32 && vec) run_blocks<NT>(blocks, [&] { attention_gate_mma_kernel<T, 64, VEC>(AG_ARGS); });
      if (!tf32 && !vec) run_blocks<NT>(blocks, [&] { attention_gate_mma_kernel<T, 64, 1>(AG_ARGS); });
    }
  } else {
    constexpr int NT = raunet_ag::kThreads;
    const int tp = tf32 ? (NT / 8) * 4 : (NT / 16) * 4;
    const int64_t blocks = (P + tp - 1) / tp;
    if (tf32 && vec) run_blocks<NT>(blocks, [&] { attention_gate_kernel<T, 32, VEC>(AG_ARGS); });
    if (tf32 && !vec) run_blocks<NT>(blocks, [&] { attention_gate_kernel<T, 32, 1>(AG_ARGS); });
    if (!tf32 && vec) run_blocks<NT>(blocks, [&] { attention_gate_kernel<T, 64, VEC>(AG_ARGS); });
    if (!tf32 && !vec) run_blocks<NT>(blocks, [&] { attention_gate_kernel<T, 64, 1>(AG_ARGS); });
  }
#undef AG_ARGS

  // fp64 reference on the rounded inputs
  int bad = 0;
  double max_err = 0.0;
  std::vector<double> acc(F);
  for (int64_t p = 0; p < P; ++p) {
    for (int f = 0; f < F; ++f) {
      double s = to_d(bias[f]);
      for (int k = 0; k < cx; ++k) s += to_d(x[p * cx + k]) * to_d(wx[(size_t)f * cx + k]);
      for (int k = 0; k < cg; ++k) s += to_d(g[p * cg + k]) * to_d(wg[(size_t)f * cg + k]);
      acc[f] = s;
    }
    double s = to_d(bpsi[0]);
    for (int f = 0; f < F; ++f) s += to_d(psi[f]) * (acc[f] < 0 ? 0.0 : acc[f]);  // NaN stays
    const double a = 1.0 / (1.0 + std::exp(-s));
    if (!same_value(to_d(alpha[p]), a, tol)) ++bad;
    if (std::isfinite(a)) max_err = std::max(max_err, std::fabs(to_d(alpha[p]) - a));
    for (int c = 0; c < cx; ++c) {
      const double want = to_d(x[p * cx + c]) * a;
      const double got = to_d(out[p * cx + c]);
      if (!same_value(got, want, tol)) ++bad;
      if (std::isfinite(want) && std::isfinite(got)) max_err = std::max(max_err, std::fabs(got - want));
    }
  }
  char label[32] = "";
  if (poison.site != nullptr) std::snprintf(label, sizeof label, " %s=%g", poison.site, poison.value);
  std::printf("%-5s %-4s %-10s Cx=%-3d Cg=%-3d F=%-3d P=%-5lld%s max_err=%.3g %s\n", tname,
              mma ? "mma" : "fma", misalign ? "misaligned" : (vec ? "vector" : "scalar"), cx, cg,
              F, static_cast<long long>(P), label, max_err, bad ? "FAIL" : "ok");
  return bad;
}

int main(int argc, char** argv) {
  // seed from the test (fresh per run, replayable with RAUNET_TEST_SEED)
  const unsigned seed = argc > 1 ? static_cast<unsigned>(std::strtoul(argv[1], nullptr, 10)) : 1234u;
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  // awkward channels, a model level, tiny channels, F over several chunks; P leaves a
  // partial last block
  const Case cases[] = {{48, 80, 24, 2 * 7 * 13}, {64, 64, 32, 150}, {3, 5, 1, 70},
                        {16, 24, 72, 100}, {40, 24, 40, 65}};
  int bad = 0;
  for (const Case& c : cases) {
    for (bool mis : {false, true}) {
      bad += run_case<float>("fp32", c, false, mis, rng, 2e-5);
      bad += run_case<__half>("fp16", c, false, mis, rng, 2e-3);
      bad += run_case<__half>("fp16", c, true, mis, rng, 2e-3);
      bad += run_case<__nv_bfloat16>("bf16", c, false, mis, rng, 1.6e-2);
      bad += run_case<__nv_bfloat16>("bf16", c, true, mis, rng, 1.6e-2);
    }
  }
  // non-finite operands (IEEE semantics): F = 24 and 40 leave padded columns in every F
  // tile, where an Inf input meets zero weights (0 * inf = NaN must stay out of the logit)
  const float nan = std::nanf(""), inf = INFINITY;
  const Poison poisons[] = {{"x", nan}, {"x", inf}, {"x", -inf}, {"g", inf}, {"wx", nan},
                            {"wg", -inf}, {"bias", inf}, {"psi", -inf}, {"bpsi", nan},
                            {"x-off", inf}, {"g-off", inf}};
  const Case nf_cases[] = {{48, 80, 24, 100}, {40, 24, 40, 65}};
  for (const Case& c : nf_cases) {
    for (const Poison& pz : poisons) {
      bad += run_case<float>("fp32", c, false, false, rng, 2e-5, pz);
      bad += run_case<__half>("fp16", c, false, false, rng, 2e-3, pz);
      bad += run_case<__half>("fp16", c, true, false, rng, 2e-3, pz);
      bad += run_case<__nv_bfloat16>("bf16", c, true, true, rng, 1.6e-2, pz);
    }
  }
  std::printf("%s\n", bad ? "MISMATCHES" : "all cases ok");
  return bad ? 1 : 0;
}
