// Torch binding of the "cuda" backend of raunet_fast.ops.attention_gate.
// Checks the tensors, then calls attention_gate_cuda_launch() (csrc/attention_gate.cu)
// with raw pointers on the current CUDA stream of x's device.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

// Defined in attention_gate.cu. dtype: 0 float32, 1 float16, 2 bfloat16 (of every tensor).
cudaError_t attention_gate_cuda_launch(int dtype, const void* x, const void* g, const void* wx,
                                       const void* wg, const void* bias, const void* psi,
                                       const void* bpsi, void* out, void* alpha, int64_t P, int cx,
                                       int cg, int F, int tensor_cores, cudaStream_t stream);

namespace {

void check_nhwc(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), name, " must be on x's CUDA device");
  TORCH_CHECK(t.dim() == 4, name, " must be N x C x H x W");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be dense channels_last (NHWC)");
}

void check_param(const at::Tensor& t, const at::Tensor& x, const char* name, int64_t numel) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device() && t.scalar_type() == x.scalar_type() &&
                  t.is_contiguous(),
              name, " must be a contiguous tensor of x's dtype on x's device");
  TORCH_CHECK(t.numel() == numel, name, " must have ", numel, " elements, got ", t.numel());
}

}  // namespace

// Same contract as the CPU build (csrc/attention_gate_cpu.cpp): x, g, out channels_last;
// w_x F x Cx, w_g F x Cg, bias F, psi F, bpsi 1 (read on the device: no sync), all
// contiguous in x's dtype; alpha N x 1 x H x W contiguous, x's dtype, written when
// write_alpha. tensor_cores: half / bfloat16 on sm_80+ use the WMMA kernel.
void attention_gate_forward(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w_x,
                            const at::Tensor& w_g, const at::Tensor& bias, const at::Tensor& psi,
                            const at::Tensor& bpsi, const at::Tensor& out,
                            const at::Tensor& alpha, bool write_alpha, bool tensor_cores) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
  check_nhwc(x, x, "x");
  check_nhwc(g, x, "g");
  check_nhwc(out, x, "out");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && out.scalar_type() == x.scalar_type(),
              "x, g and out must share one dtype");
  TORCH_CHECK(g.size(0) == x.size(0) && g.size(2) == x.size(2) && g.size(3) == x.size(3),
              "g must have x's N, H, W");
  TORCH_CHECK(out.sizes() == x.sizes(), "out must have x's shape");
  const int64_t P = x.size(0) * x.size(2) * x.size(3);
  const int cx = static_cast<int>(x.size(1));
  const int cg = static_cast<int>(g.size(1));
  const int F = static_cast<int>(bias.numel());
  check_param(w_x, x, "w_x", static_cast<int64_t>(F) * cx);
  check_param(w_g, x, "w_g", static_cast<int64_t>(F) * cg);
  check_param(bias, x, "bias", F);
  check_param(psi, x, "psi", F);
  check_param(bpsi, x, "bpsi", 1);
  if (write_alpha) {
    TORCH_CHECK(alpha.is_cuda() && alpha.device() == x.device() && alpha.numel() == P &&
                    alpha.is_contiguous() && alpha.scalar_type() == x.scalar_type(),
                "alpha must be a contiguous N x 1 x H x W tensor of x's dtype on x's device");
  }
  int code;
  switch (x.scalar_type()) {
    case at::kFloat: code = 0; break;
    case at::kHalf: code = 1; break;
    case at::kBFloat16: code = 2; break;
    default: TORCH_CHECK(false, "attention_gate (cuda): dtype must be float32, float16 or bfloat16");
  }
  if (P == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err = attention_gate_cuda_launch(
      code, x.data_ptr(), g.data_ptr(), w_x.data_ptr(), w_g.data_ptr(), bias.data_ptr(),
      psi.data_ptr(), bpsi.data_ptr(), out.data_ptr(),
      write_alpha ? alpha.data_ptr() : nullptr, P, cx, cg, F, tensor_cores ? 1 : 0, stream);
  TORCH_CHECK(err == cudaSuccess, "attention_gate (cuda) launch failed: ", cudaGetErrorString(err));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "raunet_fast attention gate, CUDA build of csrc/attention_gate.h";
  m.def("attention_gate_forward", &attention_gate_forward,
        "fused attention gate (NHWC) into out / alpha");
}
