// prunekit's masked optimizer steps (built on first use by prunekit.native; used by core.mask's
// MaskEnforcer with fused=True).
//
// torch's SGD / Adam / AdamW on CPU update a tensor in 4-6 passes over it (one per elementwise
// op); masking the gradient first is one more pass, 5% of a LeNet-300-100 training step. Here
// the whole update of a pruned tensor, mask included, is one pass: each element's gradient is
// multiplied by its 0/1 mask and the optimizer's update applied while it is in registers. The
// arithmetic is torch's, element by element (torch/optim/sgd.py, adam.py), so a pruned weight
// and its state stay exactly 0 and a kept one follows torch's update up to float rounding.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr int64_t GRAIN = 16384;  // elements per parallel chunk

void check(const torch::Tensor& t, const torch::Tensor& like, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu() && t.numel() == like.numel(),
              "masked_step: ", what, " must be a contiguous float32 CPU tensor of the parameter's size");
}

// The mask as 0/1 bytes: a quarter of a float mask's memory traffic (the step is memory-bound).
void check_mask(const torch::Tensor& t, const torch::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kByte && t.is_contiguous() && t.device().is_cpu() && t.numel() == like.numel(),
              "masked_step: the mask must be a contiguous uint8 (0/1) CPU tensor of the parameter's size");
}

// One chunk of SGD, the options as template arguments so that the loop has no branch and
// vectorises (torch's fused kernel is vectorised; a branchy loop here was 7% slower than it).
template <bool WD, bool MOMENTUM, bool FIRST, bool NESTEROV>
void sgd_chunk(float* __restrict p, const float* __restrict g, const uint8_t* __restrict k, float* __restrict b,
               int64_t lo, int64_t hi, float lr, float m, float keep, float wd, float sign) {
  for (int64_t j = lo; j < hi; ++j) {
    float d = sign * g[j] * static_cast<float>(k[j]);
    if (WD) d += wd * p[j];
    if (MOMENTUM) {
      const float nb = FIRST ? d : m * b[j] + keep * d;
      b[j] = nb;
      d = NESTEROV ? d + m * nb : nb;
    }
    p[j] -= lr * d;
  }
}

template <bool WD, bool MOMENTUM, bool FIRST>
void sgd_dispatch_nesterov(bool nesterov, float* p, const float* g, const uint8_t* k, float* b, int64_t n, float lr,
                           float m, float keep, float wd, float sign) {
  at::parallel_for(0, n, GRAIN, [&](int64_t lo, int64_t hi) {
    if (nesterov) sgd_chunk<WD, MOMENTUM, FIRST, true>(p, g, k, b, lo, hi, lr, m, keep, wd, sign);
    else sgd_chunk<WD, MOMENTUM, FIRST, false>(p, g, k, b, lo, hi, lr, m, keep, wd, sign);
  });
}

}  // namespace

// torch.optim.SGD on each (param, grad * mask), mask uint8 0/1: g = +-grad * mask (+ wd * p); with momentum,
// buf = g on the first step (``first``), else momentum * buf + (1 - dampening) * g; then
// g = g + momentum * buf (nesterov) or buf; p -= lr * g.
void masked_sgd(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                const std::vector<torch::Tensor>& masks, const std::vector<torch::Tensor>& bufs, bool first,
                double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool maximize) {
  const float lr_ = lr, m = momentum, keep = 1.0 - dampening, wd = weight_decay, sign = maximize ? -1.f : 1.f;
  for (size_t i = 0; i < params.size(); ++i) {
    check(grads[i], params[i], "grad"); check_mask(masks[i], params[i]);
    if (momentum != 0) check(bufs[i], params[i], "momentum buffer");
    float* p = params[i].data_ptr<float>();
    const float* g = grads[i].data_ptr<float>();
    const uint8_t* k = masks[i].data_ptr<uint8_t>();
    float* b = momentum != 0 ? bufs[i].data_ptr<float>() : nullptr;
    const int64_t n = params[i].numel();
    const bool has_wd = weight_decay != 0;
    if (momentum == 0) {
      if (has_wd) sgd_dispatch_nesterov<true, false, false>(false, p, g, k, b, n, lr_, m, keep, wd, sign);
      else sgd_dispatch_nesterov<false, false, false>(false, p, g, k, b, n, lr_, m, keep, wd, sign);
    } else if (first) {
      if (has_wd) sgd_dispatch_nesterov<true, true, true>(nesterov, p, g, k, b, n, lr_, m, keep, wd, sign);
      else sgd_dispatch_nesterov<false, true, true>(nesterov, p, g, k, b, n, lr_, m, keep, wd, sign);
    } else {
      if (has_wd) sgd_dispatch_nesterov<true, true, false>(nesterov, p, g, k, b, n, lr_, m, keep, wd, sign);
      else sgd_dispatch_nesterov<false, true, false>(nesterov, p, g, k, b, n, lr_, m, keep, wd, sign);
    }
  }
}

// torch.optim.Adam (decoupled=false) / AdamW (decoupled=true) on each (param, grad * mask),
// ``steps[i]`` the tensor's step count after this step: p *= 1 - lr * wd (AdamW) or
// g += wd * p (Adam); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
void masked_adam(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                 const std::vector<torch::Tensor>& masks, const std::vector<torch::Tensor>& exp_avgs,
                 const std::vector<torch::Tensor>& exp_avg_sqs, const std::vector<double>& steps, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bool decoupled, bool maximize) {
  const float b1 = beta1, b2 = beta2, eps_ = eps, sign = maximize ? -1.f : 1.f;
  for (size_t i = 0; i < params.size(); ++i) {
    check(grads[i], params[i], "grad"); check_mask(masks[i], params[i]);
    check(exp_avgs[i], params[i], "exp_avg"); check(exp_avg_sqs[i], params[i], "exp_avg_sq");
    const double t = steps[i];
    const float step_size = lr / (1.0 - std::pow(beta1, t));
    const float inv_correction2_sqrt = 1.0 / std::sqrt(1.0 - std::pow(beta2, t));
    const float decay = decoupled ? 1.0 - lr * weight_decay : 1.f, wd = decoupled ? 0.f : weight_decay;
    float* __restrict p = params[i].data_ptr<float>();
    const float* __restrict g = grads[i].data_ptr<float>();
    const uint8_t* __restrict k = masks[i].data_ptr<uint8_t>();
    float* __restrict ea = exp_avgs[i].data_ptr<float>();
    float* __restrict es = exp_avg_sqs[i].data_ptr<float>();
    at::parallel_for(0, params[i].numel(), GRAIN, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        const float w = p[j] * decay;
        const float d = sign * g[j] * static_cast<float>(k[j]) + wd * w;
        const float a = ea[j] + (1.f - b1) * (d - ea[j]);  // torch's lerp_(grad, 1 - beta1)
        const float v = b2 * es[j] + (1.f - b2) * d * d;
        ea[j] = a;
        es[j] = v;
        p[j] = w - step_size * a / (std::sqrt(v) * inv_correction2_sqrt + eps_);
      }
    });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("masked_sgd", &masked_sgd, "torch.optim.SGD on grad * mask, one pass per tensor");
  m.def("masked_adam", &masked_adam, "torch.optim.Adam / AdamW on grad * mask, one pass per tensor");
}
