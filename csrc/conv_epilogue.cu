// "cuda" backend of conv3x3_fused: cuDNN convolution of the folded weights (at::conv2d),
// then one vectorised in-place epilogue kernel (conv_epilogue.cuh, math in conv_epilogue.h):
// y = relu?(y + bias + (residual | 1x1-projected shortcut)). Python binding in
// conv_epilogue_binding.cpp.
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "conv_epilogue.cuh"
#include "conv_epilogue_aten.h"

namespace rce = raunet_fast::conv_epilogue;

at::Tensor conv3x3_fused_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const std::optional<at::Tensor>& residual,
                              const std::optional<at::Tensor>& shortcut_input,
                              const std::optional<at::Tensor>& shortcut_weight, bool relu) {
  TORCH_CHECK(x.is_cuda(), "conv3x3_fused (cuda backend): CUDA tensors only");
  const c10::cuda::CUDAGuard guard(x.device());
  rce::Prepared p = rce::prepare(x, weight, bias, residual, shortcut_input, shortcut_weight);
  const int64_t numel = p.y.numel();
  if (numel == 0) return p.y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.y.scalar_type(), "conv_epilogue_cuda", [&] {
    rce::launch_epilogue<scalar_t>(p.y.data_ptr<scalar_t>(),
                                   p.sc.defined() ? p.sc.data_ptr<scalar_t>() : nullptr,
                                   p.bias.data_ptr<float>(), numel, p.C, p.inner, relu, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return p.y;
}
