// ATen glue shared by the "cuda" (conv_epilogue.cu) and "cpp" (conv_epilogue_cpu.cpp)
// backends of conv3x3_fused: the convolution of the folded weights (cuDNN / oneDNN via
// at::conv2d, no bias), the shortcut tensor (identity residual, or the 1x1 projection as a
// second at::conv2d), both brought to one layout, and the fp32 bias. The fused epilogue
// (conv_epilogue.h) then makes one in-place pass: y = relu?(y + bias + shortcut).
#pragma once

#include <optional>

#include <ATen/ATen.h>

namespace raunet_fast {
namespace conv_epilogue {

struct Prepared {
  at::Tensor y;     // conv output, N x Cout x H x W, contiguous NCHW or channels-last
  at::Tensor sc;    // undefined, or the shortcut with exactly y's strides and dtype
  at::Tensor bias;  // fp32, contiguous, Cout
  int64_t C = 0;
  int64_t inner = 1;  // channel of flat element i is (i / inner) % C
};

// The epilogue's operands around a finished convolution output ``y`` (N x C x H x W):
// y made contiguous in its own layout (NCHW or channels-last), ``sc`` (undefined, or the
// residual / projected shortcut) with exactly y's strides and dtype, fp32 bias.
inline Prepared operands(at::Tensor y, at::Tensor sc, const at::Tensor& bias) {
  TORCH_CHECK(y.dim() == 4, "conv epilogue: y must be N x C x H x W, got ", y.sizes());
  TORCH_CHECK(bias.numel() == y.size(1), "conv epilogue: bias must have ", y.size(1), " elements");
  Prepared p;
  p.y = std::move(y);
  const int64_t hw = p.y.size(2) * p.y.size(3);
  if (p.y.is_contiguous()) {
    p.inner = hw;
  } else if (p.y.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    p.inner = 1;
  } else {
    p.y = p.y.contiguous();
    p.inner = hw;
  }
  p.C = p.y.size(1);
  if (sc.defined()) {
    TORCH_CHECK(sc.sizes() == p.y.sizes(), "conv3x3_fused: shortcut/residual shape ",
                sc.sizes(), " != conv output shape ", p.y.sizes());
    if (sc.scalar_type() != p.y.scalar_type()) sc = sc.to(p.y.scalar_type());
    if (sc.strides() != p.y.strides()) sc = at::empty_like(p.y).copy_(sc);
    p.sc = std::move(sc);
  }
  p.bias = bias.to(at::kFloat).contiguous();
  return p;
}

inline Prepared prepare(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const std::optional<at::Tensor>& residual,
                        const std::optional<at::Tensor>& shortcut_input,
                        const std::optional<at::Tensor>& shortcut_weight) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_fused: x must be N x Cin x H x W, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "conv3x3_fused: weight must be Cout x ", x.size(1), " x 3 x 3, got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "conv3x3_fused: weight dtype ",
              weight.scalar_type(), " != x dtype ", x.scalar_type());
  const int64_t cout = weight.size(0);
  TORCH_CHECK(bias.numel() == cout, "conv3x3_fused: bias must have ", cout, " elements");
  TORCH_CHECK(!(residual.has_value() && shortcut_input.has_value()),
              "conv3x3_fused: give residual or shortcut_input, not both");
  TORCH_CHECK(shortcut_input.has_value() == shortcut_weight.has_value(),
              "conv3x3_fused: shortcut_input and shortcut_weight go together");

  at::Tensor sc;
  if (residual.has_value()) {
    sc = *residual;
  } else if (shortcut_input.has_value()) {
    const at::Tensor& s = *shortcut_input;
    TORCH_CHECK(shortcut_weight->numel() == cout * s.size(1), "conv3x3_fused: shortcut_weight must be ",
                cout, " x ", s.size(1));
    sc = at::conv2d(s, shortcut_weight->to(s.scalar_type()).reshape({cout, s.size(1), 1, 1}));
  }
  Prepared p = operands(at::conv2d(x, weight, {}, {1, 1}, {1, 1}), sc, bias);
  return p;
}

}  // namespace conv_epilogue
}  // namespace raunet_fast
