// Fused additive attention gate: the per-pixel math, shared by host and device.
//
// Compiled by nvcc into csrc/attention_gate.cu (the "cuda" backend) and by g++ into
// csrc/attention_gate_cpu.cpp (the "cpp" backend), so the CPU build tests the same math a
// GPU runs. No torch headers here: plain C++17 (+ CUDA qualifiers when nvcc compiles it).
//
// Per pixel p (folded BatchNorms, fp32 accumulation):
//   acc[f] = bias[f] + sum_k in[p][k] * wt[k][f],   k over the Cx channels of x, then Cg of g
//   s      = b_psi + sum_f psi[f] * relu(acc[f])
//   alpha  = sigmoid(s),        out[p][c] = x[p][c] * alpha
//
// Layouts both backends take (T = float / half / bfloat16, one T for every tensor):
//   x   : P x Cx (NHWC, i.e. channels_last; P = N*H*W pixels)      g : P x Cg (NHWC)
//   w_x : F x Cx row-major, w_g : F x Cg row-major, bias, psi : F, bpsi : 1
//   out : P x Cx (NHWC), alpha : P values (optional)
// Inside, the math runs in fp32: in[p][k] is x's channels then g's (K = Cx + Cg), and
// wt[k][f] the matching weight (W_x^T stacked over W_g^T); the CPU build packs wt so,
// the CUDA kernel stages the same values tile by tile in shared memory.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define AG_HD __host__ __device__ __forceinline__
#else
#define AG_HD inline
#endif

namespace raunet_ag {

struct GateDims {
  int64_t pixels;  // P = N*H*W
  int cx;          // channels of x
  int cg;          // channels of g
  int f;           // intermediate channels F
};

// Keeps NaN, like torch.relu (a `v > 0 ? v : 0` / fmaxf form would turn NaN into 0).
AG_HD float relu(float v) { return v < 0.f ? 0.f : v; }

// 1 / (1 + exp(-s)); exp(-s) = inf for very negative s gives exactly 0, never NaN; a NaN
// logit stays NaN (no clamp of s).
AG_HD float sigmoid(float s) { return 1.f / (1.f + expf(-s)); }

// acc[0..n) += v * w[0..n)   (one channel's contribution to a chunk of F accumulators)
AG_HD void axpy(float* __restrict__ acc, float v, const float* __restrict__ w, int n) {
  for (int i = 0; i < n; ++i) acc[i] += v * w[i];
}

// Epilogue of one chunk of F: sum_j psi[j] * relu(acc[j] + bias[j]) over j in [0, n).
// n counts real channels only: a padded channel's accumulator can hold 0 * inf = NaN (an
// Inf input times its zero weight), which psi = 0 does not cancel.
AG_HD float psi_dot_relu(const float* __restrict__ acc, const float* __restrict__ bias,
                         const float* __restrict__ psi, int n) {
  float s = 0.f;
  for (int j = 0; j < n; ++j) s += psi[j] * relu(acc[j] + bias[j]);
  return s;
}

// The same epilogue for a single accumulator (the CUDA kernel's per-thread micro tile).
AG_HD float psi_term(float acc, float bias, float psi) { return psi * relu(acc + bias); }

// alpha from the summed psi logit.
AG_HD float gate_alpha(float s_sum, float bpsi) { return sigmoid(s_sum + bpsi); }

// Whole gate for ONE pixel given its inputs already in float: xin (Cx), gin (Cg);
// acc is caller scratch of F floats. Returns alpha. Reference-order math: used by the
// CPU backend's tail and by tests of the header itself.
AG_HD float pixel_alpha(const float* xin, const float* gin, const float* wt,
                        const float* bias, const float* psi, float bpsi, int cx, int cg,
                        int f, float* acc) {
  for (int j = 0; j < f; ++j) acc[j] = 0.f;
  for (int k = 0; k < cx; ++k) axpy(acc, xin[k], wt + (int64_t)k * f, f);
  for (int k = 0; k < cg; ++k) axpy(acc, gin[k], wt + (int64_t)(cx + k) * f, f);
  return gate_alpha(psi_dot_relu(acc, bias, psi, f), bpsi);
}

}  // namespace raunet_ag
