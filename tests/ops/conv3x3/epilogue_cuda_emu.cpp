// CPU emulation of the fused conv epilogue's CUDA kernels (csrc/conv_epilogue.cuh).
//
// Without a GPU, this checks the kernels' indexing: the grid-stride loops (also with a grid
// far smaller than the work), the 16-byte vector path (Pack<T, VEC>, channel of each lane,
// alignment checks) and the scalar path (any layout), for float, double and a bfloat16
// stand-in (8 lanes per vector, like bf16/fp16 on the GPU), also with NaN / Inf operands.
// The kernels are compiled by the host compiler against the small CUDA shim below and run
// thread by thread (they have no shared memory or barriers, so any order is a valid
// schedule). Results are compared with the element math written out here independently.
// Built and run by tests/ops/conv3x3/test_cpu.py (test_conv_cuda_epilogue_emulated_on_cpu);
// prints one line per case, exits non-zero on a mismatch.
#define RAUNET_CE_EMULATE 1

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

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
static Dim3 gridDim, blockDim, blockIdx, threadIdx;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// bfloat16 stand-in: round-to-nearest-even from float, exact widening to float
struct bf16 {
  uint16_t bits;
  bf16() = default;
  bf16(float f) {  // NOLINT: implicit, like the device types
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = 0x7fc0;
      return;
    }
    u += 0x7fff + ((u >> 16) & 1);
    bits = static_cast<uint16_t>(u >> 16);
  }
  operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

#include "conv_epilogue.cuh"

namespace rce = raunet_fast::conv_epilogue;

// ------------------------------------------------------------------------- launcher
// Mirrors launch_epilogue (same path decision, same block count unless max_blocks caps it
// to force grid-stride iterations); returns the vector width used.
template <typename T, int VEC, bool HAS_SC, bool RELU>
void run_vec(T* y, const T* sc, const float* bias, int64_t numel, int64_t C, int max_blocks) {
  const int threads = 64;
  const int64_t n_vec = numel / VEC;
  int blocks = rce::epilogue_blocks(n_vec, threads);
  if (max_blocks > 0 && blocks > max_blocks) blocks = max_blocks;
  gridDim.x = blocks;
  blockDim.x = threads;
  for (unsigned b = 0; b < gridDim.x; ++b)
    for (unsigned t = 0; t < blockDim.x; ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      rce::epilogue_vec_kernel<T, VEC, HAS_SC, RELU>(y, sc, bias, n_vec, C);
    }
}

template <typename T>
int run(T* y, const T* sc, const float* bias, int64_t numel, int64_t C, int64_t inner, bool relu,
        int max_blocks) {
  constexpr int VEC = 16 / sizeof(T);
  const int width = rce::epilogue_vec_width(y, sc, C, inner);
  if (width == VEC && VEC > 1) {
    if (sc) {
      if (relu) run_vec<T, VEC, true, true>(y, sc, bias, numel, C, max_blocks);
      else run_vec<T, VEC, true, false>(y, sc, bias, numel, C, max_blocks);
    } else {
      if (relu) run_vec<T, VEC, false, true>(y, sc, bias, numel, C, max_blocks);
      else run_vec<T, VEC, false, false>(y, sc, bias, numel, C, max_blocks);
    }
    return VEC;
  }
  const int threads = 64;
  int blocks = rce::epilogue_blocks(numel, threads);
  if (max_blocks > 0 && blocks > max_blocks) blocks = max_blocks;
  gridDim.x = blocks;
  blockDim.x = threads;
  for (unsigned b = 0; b < gridDim.x; ++b)
    for (unsigned t = 0; t < blockDim.x; ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      rce::epilogue_scalar_kernel<T>(y, sc, bias, numel, C, inner, relu);
    }
  return 1;
}

// ------------------------------------------------------------------------- cases
static int failures = 0;

// n x C x H x W tensor; channels_last: memory order n, h, w, c (inner = 1), else n, c, h, w
// (inner = H*W). offset: elements the data starts after a 16-byte aligned base.
static unsigned g_seed = 1234u;

// Equal values, NaN equal to NaN (IEEE semantics: no NaN dropped, none made).
inline bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// nonfinite: NaN, +Inf and -Inf written into some elements of y and sc and one bias.
template <typename T>
void check_case(const char* tname, int n, int C, int H, int W, bool channels_last, bool with_sc,
                bool relu, int offset, int max_blocks, int expect_width, bool nonfinite = false) {
  const int64_t numel = static_cast<int64_t>(n) * C * H * W;
  const int64_t inner = channels_last ? 1 : static_cast<int64_t>(H) * W;
  std::mt19937 rng(g_seed + C * 7 + H);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<T> ybuf(numel + 16), sbuf(numel + 16), ref(numel);
  std::vector<float> bias(C);
  // aligned bases (vector allocations are 16-byte aligned for these types' allocators
  // only by luck): align by hand
  auto align16 = [](T* p) {
    uintptr_t u = reinterpret_cast<uintptr_t>(p);
    return reinterpret_cast<T*>((u + 15) & ~uintptr_t(15));
  };
  T* y = align16(ybuf.data()) + offset;
  T* s = align16(sbuf.data()) + offset;
  for (int64_t i = 0; i < numel; ++i) {
    y[i] = T(dist(rng));
    s[i] = T(dist(rng));
  }
  for (int c = 0; c < C; ++c) bias[c] = dist(rng);
  if (nonfinite) {
    const float special[] = {std::nanf(""), INFINITY, -INFINITY};
    for (int j = 0; j < 6; ++j) {
      y[rng() % numel] = T(special[j % 3]);
      s[rng() % numel] = T(special[(j + 1) % 3]);
    }
    bias[rng() % C] = special[rng() % 3];
  }
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t c = channels_last ? i % C : (i / inner) % C;
    float v = static_cast<float>(y[i]) + bias[c] + (with_sc ? static_cast<float>(s[i]) : 0.f);
    if (relu && v < 0.f) v = 0.f;
    ref[i] = T(v);
  }
  const int width = run<T>(y, with_sc ? s : nullptr, bias.data(), numel, C, inner, relu,
                           max_blocks);
  int64_t bad = 0;
  for (int64_t i = 0; i < numel; ++i)
    if (!same(static_cast<float>(y[i]), static_cast<float>(ref[i]))) ++bad;
  const bool ok = bad == 0 && width == expect_width;
  std::printf("%-6s %dx%dx%dx%d %s sc=%d relu=%d offset=%d max_blocks=%d vec=%d%s bad=%lld %s\n",
              tname, n, C, H, W, channels_last ? "NHWC" : "NCHW", with_sc, relu, offset,
              max_blocks, width, nonfinite ? " nan/inf" : "", static_cast<long long>(bad),
              ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

template <typename T>
void sweep(const char* tname) {
  constexpr int VEC = 16 / sizeof(T);
  for (int sc = 0; sc < 2; ++sc)
    for (int relu = 0; relu < 2; ++relu) {
      // vector path: channels-last, C % VEC == 0, aligned
      check_case<T>(tname, 2, 4 * VEC, 5, 7, true, sc, relu, 0, 0, VEC);
      check_case<T>(tname, 3, 2 * VEC, 7, 13, true, sc, relu, 0, 3, VEC);  // grid-stride
      // scalar path: C not a multiple of VEC, misaligned data, NCHW
      check_case<T>(tname, 3, 41, 7, 13, true, sc, relu, 0, 2, 1);
      check_case<T>(tname, 1, 4 * VEC, 3, 5, true, sc, relu, 1, 0, 1);
      check_case<T>(tname, 2, 24, 7, 13, false, sc, relu, 0, 5, 1);
      // NaN / +-Inf operands, vector and scalar paths
      check_case<T>(tname, 2, 4 * VEC, 5, 7, true, sc, relu, 0, 0, VEC, true);
      check_case<T>(tname, 2, 24, 7, 13, false, sc, relu, 0, 5, 1, true);
    }
}

int main(int argc, char** argv) {
  // seed from the test (fresh per run, replayable with RAUNET_TEST_SEED)
  g_seed = argc > 1 ? static_cast<unsigned>(std::strtoul(argv[1], nullptr, 10)) : 1234u;
  std::printf("seed %u\n", g_seed);
  sweep<float>("float");
  sweep<double>("double");
  sweep<bf16>("bf16");
  std::printf("%s: %d failing case(s)\n", failures ? "FAIL" : "OK", failures);
  return failures ? 1 : 0;
}
