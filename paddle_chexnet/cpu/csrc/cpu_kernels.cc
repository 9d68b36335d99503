// Multi-threaded CPU kernels for DenseNet training (see paddle_chexnet/cpu_kernels.py).
//
// 1. BatchNorm (training mode) + ReLU, fused.
//
// Paddle's CPU kernels for BatchNorm and ReLU run on one thread, and between
// them a dense layer reads and writes its whole input four times. Here the two
// are one operator, BatchNorm in training mode followed by ReLU, parallel over
// channels with OpenMP: forward two reads for the statistics (mean, then the
// centred sum of squares, which stays accurate when the mean is large) and one
// read and write for the output; backward one read of x, y and dy for the two
// channel sums and one more for dx. A channel of a DenseNet batch (N x H x W
// floats, at most 400 KB at batch 8) stays in the core's L2 cache between its
// passes.
//
// Semantics are Paddle's BatchNorm2D (NCHW, training mode) then ReLU:
//   y = max(0, scale * (x - mean) / sqrt(var + epsilon) + bias)
// with mean and var the biased batch statistics per channel, and the running
// statistics updated as running = momentum * running + (1 - momentum) * batch
// (Paddle updates the running variance with the biased batch variance too).
// The updated running statistics are outputs, copied into the layer's buffers
// by the caller: Paddle's eager custom operators refuse to write in place into
// a layer's buffers while the other inputs need gradients.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "paddle/extension.h"

// CBLAS from the MKL that Paddle's wheel ships (libmklml_intel.so, LP64); the
// wheel has no CBLAS header, so the standard prototype is declared here.
extern "C" {
void cblas_sgemm(int layout, int transa, int transb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);
int MKL_Set_Num_Threads_Local(int threads);  // the C name; the lower-case one is Fortran (by pointer)
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

void CheckInput(const paddle::Tensor& x, const char* name) {
  PD_CHECK(x.is_cpu(), name, " must be a CPU tensor");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, name, " must be float32");
}

// Sum of p[0..n) accumulated in float lanes (vectorised), returned as double.
inline double RowSum(const float* p, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

inline double RowCentredSquares(const float* p, int64_t n, float mean) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float d = p[i] - mean;
    s += d * d;
  }
  return s;
}

// A BatchNorm's per-channel batch statistics in training mode, and the four
// per-channel tensors it returns besides its output: the saved mean and
// 1/std for the backward pass, and the updated running mean and variance.
class BatchStatistics {
 public:
  BatchStatistics(const paddle::Tensor& x, const paddle::Tensor& scale, const paddle::Tensor& bias,
                  const paddle::Tensor& running_mean, const paddle::Tensor& running_variance, float epsilon,
                  float momentum)
      : batch_(x.shape()[0]),
        channels_(x.shape()[1]),
        pixels_(x.shape()[2] * x.shape()[3]),
        epsilon_(epsilon),
        momentum_(momentum),
        x_(x.data<float>()),
        gamma_(scale.data<float>()),
        beta_(bias.data<float>()),
        running_mean_(running_mean.data<float>()),
        running_variance_(running_variance.data<float>()),
        saved_mean_(paddle::empty({channels_}, x.dtype(), x.place())),
        saved_invstd_(paddle::empty({channels_}, x.dtype(), x.place())),
        mean_update_(paddle::empty({channels_}, x.dtype(), x.place())),
        variance_update_(paddle::empty({channels_}, x.dtype(), x.place())),
        // the outputs' memory, taken once here rather than by every thread
        mean_out_(saved_mean_.data<float>()),
        invstd_out_(saved_invstd_.data<float>()),
        mean_update_out_(mean_update_.data<float>()),
        variance_update_out_(variance_update_.data<float>()) {}

  // Channel c's statistics, stored; returns (a, b) with BatchNorm(x) = a * x + b on that channel.
  // Channels are independent, so threads may call it for different channels at once.
  std::pair<float, float> Channel(int64_t c) {
    const double count = static_cast<double>(batch_ * pixels_);
    double sum = 0.0;
    for (int64_t n = 0; n < batch_; ++n) sum += RowSum(x_ + (n * channels_ + c) * pixels_, pixels_);
    const float mean = static_cast<float>(sum / count);
    double squares = 0.0;
    for (int64_t n = 0; n < batch_; ++n)
      squares += RowCentredSquares(x_ + (n * channels_ + c) * pixels_, pixels_, mean);
    const double variance = squares / count;
    const float invstd = static_cast<float>(1.0 / std::sqrt(variance + epsilon_));
    mean_out_[c] = mean;
    invstd_out_[c] = invstd;
    mean_update_out_[c] = momentum_ * running_mean_[c] + (1.f - momentum_) * mean;
    variance_update_out_[c] = momentum_ * running_variance_[c] + (1.f - momentum_) * static_cast<float>(variance);
    const float a = gamma_[c] * invstd;
    return {a, beta_[c] - mean * a};
  }

  // The operator's outputs: y, then the saved and updated statistics.
  std::vector<paddle::Tensor> Outputs(const paddle::Tensor& y) const {
    return {y, saved_mean_, saved_invstd_, mean_update_, variance_update_};
  }

 private:
  const int64_t batch_, channels_, pixels_;
  const float epsilon_, momentum_;
  const float *x_, *gamma_, *beta_, *running_mean_, *running_variance_;
  paddle::Tensor saved_mean_, saved_invstd_, mean_update_, variance_update_;
  float *mean_out_, *invstd_out_, *mean_update_out_, *variance_update_out_;
};

// The three gradients a BatchNorm's backward pass returns, allocated, with their memory.
struct BatchNormGradients {
  explicit BatchNormGradients(const paddle::Tensor& x)
      : grad_x(paddle::empty(x.shape(), x.dtype(), x.place())),
        grad_scale(paddle::empty({x.shape()[1]}, x.dtype(), x.place())),
        grad_bias(paddle::empty({x.shape()[1]}, x.dtype(), x.place())),
        dx(grad_x.data<float>()),
        dscale(grad_scale.data<float>()),
        dbias(grad_bias.data<float>()) {}

  std::vector<paddle::Tensor> Outputs() const { return {grad_x, grad_scale, grad_bias}; }

  paddle::Tensor grad_x, grad_scale, grad_bias;
  float *dx, *dscale, *dbias;
};

}  // namespace

std::vector<paddle::Tensor> BnReluForward(const paddle::Tensor& x,
                                          const paddle::Tensor& scale,
                                          const paddle::Tensor& bias,
                                          const paddle::Tensor& running_mean,
                                          const paddle::Tensor& running_variance,
                                          float epsilon, float momentum,
                                          int threads) {
  CheckInput(x, "x");
  PD_CHECK(x.shape().size() == 4 && x.is_contiguous(), "x must be a contiguous NCHW tensor");
  const int64_t batch = x.shape()[0], channels = x.shape()[1];
  const int64_t pixels = x.shape()[2] * x.shape()[3];
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  BatchStatistics statistics(x, scale, bias, running_mean, running_variance, epsilon, momentum);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < channels; ++c) {
    const auto [a, b] = statistics.Channel(c);
    for (int64_t n = 0; n < batch; ++n) {
      const float* in = xp + (n * channels + c) * pixels;
      float* out = yp + (n * channels + c) * pixels;
#pragma omp simd
      for (int64_t i = 0; i < pixels; ++i) {
        const float v = a * in[i] + b;
        out[i] = v > 0.f ? v : 0.f;
      }
    }
  }
  return statistics.Outputs(y);
}

std::vector<paddle::Tensor> BnReluBackward(const paddle::Tensor& x,
                                           const paddle::Tensor& scale,
                                           const paddle::Tensor& y,
                                           const paddle::Tensor& saved_mean,
                                           const paddle::Tensor& saved_invstd,
                                           const paddle::Tensor& grad_y,
                                           int threads) {
  CheckInput(grad_y, "grad_y");
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  const int64_t batch = x.shape()[0], channels = x.shape()[1];
  const int64_t pixels = x.shape()[2] * x.shape()[3];
  const double count = static_cast<double>(batch * pixels);
  BatchNormGradients grads(x);
  const float* xp = x.data<float>();
  const float* yp = y.data<float>();
  const float* dyp = dy_tensor.data<float>();
  const float* gamma = scale.data<float>();
  const float* mean = saved_mean.data<float>();
  const float* invstd = saved_invstd.data<float>();
  float* dxp = grads.dx;
  float* dgamma = grads.dscale;
  float* dbeta = grads.dbias;

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < channels; ++c) {
    const float m = mean[c];
    double sum_dz = 0.0, sum_dz_centred = 0.0;
    for (int64_t n = 0; n < batch; ++n) {
      const int64_t offset = (n * channels + c) * pixels;
      const float* in = xp + offset;
      const float* out = yp + offset;
      const float* dy = dyp + offset;
      float s = 0.f, t = 0.f;
#pragma omp simd reduction(+ : s, t)
      for (int64_t i = 0; i < pixels; ++i) {
        const float dz = out[i] > 0.f ? dy[i] : 0.f;  // ReLU's gradient, as Paddle's relu_grad
        s += dz;
        t += dz * (in[i] - m);
      }
      sum_dz += s;
      sum_dz_centred += t;
    }
    const float is = invstd[c];
    dbeta[c] = static_cast<float>(sum_dz);
    dgamma[c] = static_cast<float>(sum_dz_centred) * is;
    // dx = gamma * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean)))
    const float a = gamma[c] * is;
    const float mean_dz = static_cast<float>(sum_dz / count);
    const float k = static_cast<float>(sum_dz_centred / count) * is * is;
    for (int64_t n = 0; n < batch; ++n) {
      const int64_t offset = (n * channels + c) * pixels;
      const float* in = xp + offset;
      const float* out = yp + offset;
      const float* dy = dyp + offset;
      float* dx = dxp + offset;
#pragma omp simd
      for (int64_t i = 0; i < pixels; ++i) {
        const float dz = out[i] > 0.f ? dy[i] : 0.f;
        dx[i] = a * (dz - mean_dz - (in[i] - m) * k);
      }
    }
  }
  return grads.Outputs();
}

std::vector<std::vector<int64_t>> BnReluInferShape(const std::vector<int64_t>& x,
                                                   const std::vector<int64_t>& scale,
                                                   const std::vector<int64_t>& bias,
                                                   const std::vector<int64_t>& running_mean,
                                                   const std::vector<int64_t>& running_variance,
                                                   float, float, int) {
  return {x, {x[1]}, {x[1]}, running_mean, running_variance};
}

PD_BUILD_OP(chexnet_bn_relu)
    .Inputs({"X", "Scale", "Bias", "Mean", "Variance"})
    .Outputs({"Y", "SavedMean", "SavedInvStd", "MeanOut", "VarianceOut"})
    .Attrs({"epsilon: float", "momentum: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(BnReluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BnReluInferShape));

PD_BUILD_GRAD_OP(chexnet_bn_relu)
    .Inputs({"X", "Scale", "Y", "SavedMean", "SavedInvStd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Scale"), paddle::Grad("Bias")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(BnReluBackward));

// 1b. BatchNorm (training mode) + ReLU + 2x2 average pooling, fused: a DenseNet transition up to
//     its 1x1 convolution (which follows the pooling, see densenet.py). Only the pooled map is
//     written; the backward pass recomputes the ReLU's mask from x. Pooling as Paddle's
//     AvgPool2D(2, 2): no padding, a last odd row or column left out.

std::vector<paddle::Tensor> BnReluPoolForward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                              const paddle::Tensor& bias, const paddle::Tensor& running_mean,
                                              const paddle::Tensor& running_variance, float epsilon,
                                              float momentum, int threads) {
  CheckInput(x, "x");
  PD_CHECK(x.shape().size() == 4 && x.is_contiguous(), "x must be a contiguous NCHW tensor");
  const int64_t batch = x.shape()[0], channels = x.shape()[1], height = x.shape()[2], width = x.shape()[3];
  const int64_t out_h = height / 2, out_w = width / 2, pixels = height * width;
  PD_CHECK(out_h >= 1 && out_w >= 1, "2x2 pooling needs maps of at least 2x2");
  auto y = paddle::empty({batch, channels, out_h, out_w}, x.dtype(), x.place());
  BatchStatistics statistics(x, scale, bias, running_mean, running_variance, epsilon, momentum);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < channels; ++c) {
    const auto [a, b] = statistics.Channel(c);
    for (int64_t n = 0; n < batch; ++n) {
      const float* in = xp + (n * channels + c) * pixels;
      float* out = yp + (n * channels + c) * out_h * out_w;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        const float* top = in + 2 * oh * width;
        const float* bottom = top + width;
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const float v0 = std::max(0.f, a * top[2 * ow] + b), v1 = std::max(0.f, a * top[2 * ow + 1] + b);
          const float v2 = std::max(0.f, a * bottom[2 * ow] + b), v3 = std::max(0.f, a * bottom[2 * ow + 1] + b);
          out[oh * out_w + ow] = 0.25f * ((v0 + v1) + (v2 + v3));
        }
      }
    }
  }
  return statistics.Outputs(y);
}

std::vector<paddle::Tensor> BnReluPoolBackward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                               const paddle::Tensor& bias, const paddle::Tensor& saved_mean,
                                               const paddle::Tensor& saved_invstd, const paddle::Tensor& grad_y,
                                               int threads) {
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  const int64_t batch = x.shape()[0], channels = x.shape()[1], height = x.shape()[2], width = x.shape()[3];
  const int64_t out_h = height / 2, out_w = width / 2, pixels = height * width;
  const double count = static_cast<double>(batch * pixels);
  BatchNormGradients grads(x);
  const float* xp = x.data<float>();
  const float* dyp = dy_tensor.data<float>();
  const float* gamma = scale.data<float>();
  const float* beta = bias.data<float>();
  const float* mean = saved_mean.data<float>();
  const float* invstd = saved_invstd.data<float>();
  float* dxp = grads.dx;
  float* dgamma = grads.dscale;
  float* dbeta = grads.dbias;

#pragma omp parallel num_threads(threads)
  {
    // the pooled gradient of one output row, spread over the two input rows it averages: / 4 per pixel,
    // 0 on a last odd column (and a last odd row gets none)
    std::vector<float> spread(width, 0.f);
    auto spread_row = [&](const float* dy_row) {
      for (int64_t ow = 0; ow < out_w; ++ow) spread[2 * ow] = spread[2 * ow + 1] = 0.25f * dy_row[ow];
    };
#pragma omp for schedule(static)
    for (int64_t c = 0; c < channels; ++c) {
      const float m = mean[c], is = invstd[c];
      const float a = gamma[c] * is, b = beta[c] - m * a;
      const float* up = spread.data();
      double sum_dz = 0.0, sum_dz_centred = 0.0;
      for (int64_t n = 0; n < batch; ++n) {
        const float* in = xp + (n * channels + c) * pixels;
        const float* dy = dyp + (n * channels + c) * out_h * out_w;
        float s = 0.f, t = 0.f;
        for (int64_t h = 0; h < 2 * out_h; ++h) {
          if (h % 2 == 0) spread_row(dy + (h / 2) * out_w);
          const float* row = in + h * width;
#pragma omp simd reduction(+ : s, t)
          for (int64_t w = 0; w < width; ++w) {
            const float dz = a * row[w] + b > 0.f ? up[w] : 0.f;  // the ReLU's mask, recomputed
            s += dz;
            t += dz * (row[w] - m);
          }
        }
        sum_dz += s;
        sum_dz_centred += t;
      }
      dbeta[c] = static_cast<float>(sum_dz);
      dgamma[c] = static_cast<float>(sum_dz_centred) * is;
      const float mean_dz = static_cast<float>(sum_dz / count);
      const float k = static_cast<float>(sum_dz_centred / count) * is * is;
      for (int64_t n = 0; n < batch; ++n) {
        const float* in = xp + (n * channels + c) * pixels;
        const float* dy = dyp + (n * channels + c) * out_h * out_w;
        float* dx = dxp + (n * channels + c) * pixels;
        for (int64_t h = 0; h < height; ++h) {
          const float* row = in + h * width;
          float* out = dx + h * width;
          if (h >= 2 * out_h) {  // a last odd row: outside every window
#pragma omp simd
            for (int64_t w = 0; w < width; ++w) out[w] = a * (-mean_dz - (row[w] - m) * k);
            continue;
          }
          if (h % 2 == 0) spread_row(dy + (h / 2) * out_w);
#pragma omp simd
          for (int64_t w = 0; w < width; ++w) {
            const float dz = a * row[w] + b > 0.f ? up[w] : 0.f;
            out[w] = a * (dz - mean_dz - (row[w] - m) * k);
          }
        }
      }
    }
  }
  return grads.Outputs();
}

std::vector<std::vector<int64_t>> BnReluPoolInferShape(const std::vector<int64_t>& x,
                                                       const std::vector<int64_t>& scale,
                                                       const std::vector<int64_t>& bias,
                                                       const std::vector<int64_t>& running_mean,
                                                       const std::vector<int64_t>& running_variance,
                                                       float, float, int) {
  return {{x[0], x[1], x[2] / 2, x[3] / 2}, {x[1]}, {x[1]}, running_mean, running_variance};
}

PD_BUILD_OP(chexnet_bn_relu_pool)
    .Inputs({"X", "Scale", "Bias", "Mean", "Variance"})
    .Outputs({"Y", "SavedMean", "SavedInvStd", "MeanOut", "VarianceOut"})
    .Attrs({"epsilon: float", "momentum: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(BnReluPoolForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BnReluPoolInferShape));

PD_BUILD_GRAD_OP(chexnet_bn_relu_pool)
    .Inputs({"X", "Scale", "Bias", "SavedMean", "SavedInvStd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Scale"), paddle::Grad("Bias")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(BnReluPoolBackward));

// 2. 3x3 convolution, stride 1, padding 1, no bias (DenseNet's 128 -> 32 channel convolutions).
//
// Paddle's CPU convolution is im2col + a matrix product per image, and im2col
// copies the 128-channel input nine times over. Here only the 32-channel side
// is ever expanded, per image n (W9 is the weight as [9 * C_out, C_in], rows
// ordered by kernel tap k = 3 * kh + kw, then output channel):
//   forward   Z = W9 x_n                      [9 C_out, H W], one product
//             y_n[co, h, w] = sum_k Z[k, co, h + kh - 1, w + kw - 1]   (inside the image)
//   backward  U[k, co, h, w] = dy_n[co, h - kh + 1, w - kw + 1]      (0 outside)
//             dx_n = W9^T U,  dW9 += U x_n^T                          two products
// The images are shared among the threads, each running MKL on one thread on
// its own images with its own buffer and weight-gradient sum (added at the
// end), so nothing waits for anything; with fewer images than threads the
// images run one after another with MKL and the shifts multi-threaded.

namespace {

// Z rows for tap k, output channel co, added into y_n at the tap's offset.
void FoldImage(const float* z, float* y, int64_t cout, int64_t height, int64_t width, bool parallel,
               int threads) {
  const int64_t pixels = height * width;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
  for (int64_t co = 0; co < cout; ++co) {
    float* out = y + co * pixels;
    std::memcpy(out, z + (4 * cout + co) * pixels, pixels * sizeof(float));  // centre tap: no shift
    for (int k = 0; k < 9; ++k) {
      if (k == 4) continue;
      const int64_t dh = k / 3 - 1, dw = k % 3 - 1;
      const float* zk = z + (k * cout + co) * pixels;
      const int64_t row_begin = std::max<int64_t>(0, -dh), row_end = std::min(height, height - dh);
      const int64_t col_begin = std::max<int64_t>(0, -dw), col_end = std::min(width, width - dw);
      for (int64_t r = row_begin; r < row_end; ++r) {
        float* dst = out + r * width;
        const float* src = zk + (r + dh) * width + dw;
#pragma omp simd
        for (int64_t c = col_begin; c < col_end; ++c) dst[c] += src[c];
      }
    }
  }
}

// U[k, co] = dy_n[co] shifted by (1 - kh, 1 - kw), zero where it leaves the image.
void UnfoldImage(const float* dy, float* u, int64_t cout, int64_t height, int64_t width, bool parallel,
                 int threads) {
  const int64_t pixels = height * width;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (parallel)
  for (int k = 0; k < 9; ++k) {
    for (int64_t co = 0; co < cout; ++co) {
      const int64_t dh = k / 3 - 1, dw = k % 3 - 1;
      const float* src = dy + co * pixels;
      float* dst = u + (k * cout + co) * pixels;
      for (int64_t r = 0; r < height; ++r) {
        const int64_t source_row = r - dh;
        float* row = dst + r * width;
        if (source_row < 0 || source_row >= height) {
          std::memset(row, 0, width * sizeof(float));
          continue;
        }
        const float* from = src + source_row * width - dw;
        const int64_t col_begin = std::max<int64_t>(0, dw), col_end = std::min(width, width + dw);
        for (int64_t c = 0; c < col_begin; ++c) row[c] = 0.f;
#pragma omp simd
        for (int64_t c = col_begin; c < col_end; ++c) row[c] = from[c];
        for (int64_t c = col_end; c < width; ++c) row[c] = 0.f;
      }
    }
  }
}

// W [C_out, C_in, 3, 3] -> W9 [9, C_out, C_in]
std::vector<float> TapMajorWeight(const float* weight, int64_t cout, int64_t cin) {
  std::vector<float> w9(9 * cout * cin);
  for (int64_t co = 0; co < cout; ++co)
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int k = 0; k < 9; ++k) w9[(k * cout + co) * cin + ci] = weight[(co * cin + ci) * 9 + k];
  return w9;
}

void CheckConvInputs(const paddle::Tensor& x, const paddle::Tensor& weight) {
  CheckInput(x, "x");
  CheckInput(weight, "weight");
  PD_CHECK(x.shape().size() == 4 && weight.shape().size() == 4, "x and weight must be 4-D");
  PD_CHECK(weight.shape()[2] == 3 && weight.shape()[3] == 3, "weight must be [C_out, C_in, 3, 3]");
  PD_CHECK(x.shape()[1] == weight.shape()[1], "x has ", x.shape()[1], " channels, weight expects ",
           weight.shape()[1]);
  PD_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
}

}  // namespace

std::vector<paddle::Tensor> Conv3x3Forward(const paddle::Tensor& x, const paddle::Tensor& weight, int threads) {
  CheckConvInputs(x, weight);
  const int64_t batch = x.shape()[0], cin = x.shape()[1], height = x.shape()[2], width = x.shape()[3];
  const int64_t cout = weight.shape()[0], pixels = height * width;
  auto y = paddle::empty({batch, cout, height, width}, x.dtype(), x.place());
  const std::vector<float> w9 = TapMajorWeight(weight.data<float>(), cout, cin);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const bool per_thread = batch >= threads;
#pragma omp parallel num_threads(per_thread ? threads : 1)
  {
    if (per_thread) MKL_Set_Num_Threads_Local(1);
    std::vector<float> z(9 * cout * pixels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < batch; ++n) {
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, 9 * cout, pixels, cin, 1.f, w9.data(), cin,
                  xp + n * cin * pixels, pixels, 0.f, z.data(), pixels);
      FoldImage(z.data(), yp + n * cout * pixels, cout, height, width, !per_thread, threads);
    }
    if (per_thread) MKL_Set_Num_Threads_Local(0);
  }
  return {y};
}

std::vector<paddle::Tensor> Conv3x3Backward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                            const paddle::Tensor& grad_y, int threads) {
  CheckConvInputs(x, weight);
  const int64_t batch = x.shape()[0], cin = x.shape()[1], height = x.shape()[2], width = x.shape()[3];
  const int64_t cout = weight.shape()[0], pixels = height * width, rows = 9 * cout;
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  auto grad_weight = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  const std::vector<float> w9 = TapMajorWeight(weight.data<float>(), cout, cin);
  const float* xp = x.data<float>();
  const float* dyp = dy_tensor.data<float>();
  float* dxp = grad_x.data<float>();
  const bool per_thread = batch >= threads;
  const int teams = per_thread ? threads : 1;
  std::vector<float> dw9(static_cast<size_t>(teams) * rows * cin, 0.f);  // one weight-gradient sum per thread
#pragma omp parallel num_threads(teams)
  {
    if (per_thread) MKL_Set_Num_Threads_Local(1);
    float* my_dw9 = dw9.data() + static_cast<size_t>(omp_get_thread_num()) * rows * cin;
    std::vector<float> u(rows * pixels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < batch; ++n) {
      UnfoldImage(dyp + n * cout * pixels, u.data(), cout, height, width, !per_thread, threads);
      cblas_sgemm(kRowMajor, kTrans, kNoTrans, cin, pixels, rows, 1.f, w9.data(), cin, u.data(), pixels, 0.f,
                  dxp + n * cin * pixels, pixels);
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, cin, pixels, 1.f, u.data(), pixels, xp + n * cin * pixels,
                  pixels, 1.f, my_dw9, cin);
    }
    if (per_thread) MKL_Set_Num_Threads_Local(0);
  }
  float* dwp = grad_weight.data<float>();
  for (int64_t co = 0; co < cout; ++co)
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int k = 0; k < 9; ++k) {
        float sum = 0.f;
        for (int t = 0; t < teams; ++t) sum += dw9[(static_cast<size_t>(t) * rows + k * cout + co) * cin + ci];
        dwp[(co * cin + ci) * 9 + k] = sum;
      }
  return {grad_x, grad_weight};
}

std::vector<std::vector<int64_t>> Conv3x3InferShape(const std::vector<int64_t>& x,
                                                    const std::vector<int64_t>& weight, int) {
  return {{x[0], weight[0], x[2], x[3]}};
}

PD_BUILD_OP(chexnet_conv3x3)
    .Inputs({"X", "Weight"})
    .Outputs({"Y"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(Conv3x3Forward))
    .SetInferShapeFn(PD_INFER_SHAPE(Conv3x3InferShape));

PD_BUILD_GRAD_OP(chexnet_conv3x3)
    .Inputs({"X", "Weight", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(Conv3x3Backward));

// 3. Any other convolution (groups 1, no bias) by im2col + one product per image, images shared
//    among the threads as in 2. DenseNet's stem (7x7, stride 2, 3 -> 64 channels at 224x224) is
//    where Paddle's single-threaded im2col cost most. The columns are made again in the backward
//    pass rather than kept (7 MB per image for the stem). The input gradient (col2im) is computed
//    only when asked for: the stem's input is the image.

namespace {

struct ConvGeometry {
  int64_t cin, height, width, cout, kernel_h, kernel_w, stride, padding, out_h, out_w;
  int64_t Rows() const { return cin * kernel_h * kernel_w; }
  int64_t OutPixels() const { return out_h * out_w; }
};

ConvGeometry Geometry(const paddle::Tensor& x, const paddle::Tensor& weight, int stride, int padding) {
  ConvGeometry g{x.shape()[1], x.shape()[2], x.shape()[3], weight.shape()[0], weight.shape()[2],
                 weight.shape()[3], stride, padding, 0, 0};
  PD_CHECK(stride >= 1 && padding >= 0, "stride must be >= 1 and padding >= 0");
  g.out_h = (g.height + 2 * padding - g.kernel_h) / stride + 1;
  g.out_w = (g.width + 2 * padding - g.kernel_w) / stride + 1;
  PD_CHECK(g.out_h >= 1 && g.out_w >= 1, "the kernel is larger than the padded input");
  return g;
}

// The first output column ow >= 0 with ow * stride >= offset (offset may be negative).
inline int64_t FirstInside(int64_t offset, int64_t stride) {
  return offset <= 0 ? 0 : (offset + stride - 1) / stride;
}

// cols[(ci, i, j), (oh, ow)] = x[ci, oh * stride - padding + i, ow * stride - padding + j] (0 outside)
void Im2Col(const float* x, float* cols, const ConvGeometry& g) {
  const int64_t out_pixels = g.OutPixels();
  for (int64_t ci = 0; ci < g.cin; ++ci)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        float* row = cols + ((ci * g.kernel_h + i) * g.kernel_w + j) * out_pixels;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t h = oh * g.stride - g.padding + i;
          float* out = row + oh * g.out_w;
          if (h < 0 || h >= g.height) {
            std::memset(out, 0, g.out_w * sizeof(float));
            continue;
          }
          // the columns whose source lies inside the row, then a loop with no bounds test
          const float* in = x + (ci * g.height + h) * g.width - g.padding + j;
          const int64_t begin = std::min(g.out_w, FirstInside(g.padding - j, g.stride));
          const int64_t end = std::max(begin, std::min(g.out_w, FirstInside(g.width + g.padding - j, g.stride)));
          for (int64_t ow = 0; ow < begin; ++ow) out[ow] = 0.f;
          for (int64_t ow = begin; ow < end; ++ow) out[ow] = in[ow * g.stride];
          for (int64_t ow = end; ow < g.out_w; ++ow) out[ow] = 0.f;
        }
      }
}

// the adjoint of Im2Col: dx[ci, h, w] += dcols[(ci, i, j), (oh, ow)]
void Col2Im(const float* cols, float* dx, const ConvGeometry& g) {
  const int64_t out_pixels = g.OutPixels();
  std::memset(dx, 0, g.cin * g.height * g.width * sizeof(float));
  for (int64_t ci = 0; ci < g.cin; ++ci)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const float* row = cols + ((ci * g.kernel_h + i) * g.kernel_w + j) * out_pixels;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t h = oh * g.stride - g.padding + i;
          if (h < 0 || h >= g.height) continue;
          float* out = dx + (ci * g.height + h) * g.width - g.padding + j;
          const float* in = row + oh * g.out_w;
          const int64_t begin = std::min(g.out_w, FirstInside(g.padding - j, g.stride));
          const int64_t end = std::max(begin, std::min(g.out_w, FirstInside(g.width + g.padding - j, g.stride)));
          for (int64_t ow = begin; ow < end; ++ow) out[ow * g.stride] += in[ow];
        }
      }
}

}  // namespace

std::vector<paddle::Tensor> ConvIm2ColForward(const paddle::Tensor& x, const paddle::Tensor& weight, int stride,
                                              int padding, bool input_grad, int threads) {
  CheckInput(x, "x");
  CheckInput(weight, "weight");
  PD_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  PD_CHECK(x.shape()[1] == weight.shape()[1], "x has ", x.shape()[1], " channels, weight expects ",
           weight.shape()[1]);
  const ConvGeometry g = Geometry(x, weight, stride, padding);
  const int64_t batch = x.shape()[0], rows = g.Rows(), out_pixels = g.OutPixels();
  auto y = paddle::empty({batch, g.cout, g.out_h, g.out_w}, x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* wp = weight.data<float>();
  float* yp = y.data<float>();
  const int teams = static_cast<int>(std::min<int64_t>(threads, batch));
#pragma omp parallel num_threads(teams)
  {
    MKL_Set_Num_Threads_Local(1);
    std::vector<float> cols(rows * out_pixels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < batch; ++n) {
      Im2Col(xp + n * g.cin * g.height * g.width, cols.data(), g);
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, g.cout, out_pixels, rows, 1.f, wp, rows, cols.data(),
                  out_pixels, 0.f, yp + n * g.cout * out_pixels, out_pixels);
    }
    MKL_Set_Num_Threads_Local(0);
  }
  return {y};
}

std::vector<paddle::Tensor> ConvIm2ColBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& grad_y, int stride, int padding,
                                               bool input_grad, int threads) {
  const ConvGeometry g = Geometry(x, weight, stride, padding);
  const int64_t batch = x.shape()[0], rows = g.Rows(), out_pixels = g.OutPixels();
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  // with input_grad false the framework drops this gradient (the input needs none); zeros all the same
  auto grad_x = input_grad ? paddle::empty(x.shape(), x.dtype(), x.place())
                           : paddle::zeros(x.shape(), x.dtype(), x.place());
  auto grad_weight = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  const float* xp = x.data<float>();
  const float* wp = weight.data<float>();
  const float* dyp = dy_tensor.data<float>();
  float* dxp = grad_x.data<float>();
  const int teams = static_cast<int>(std::min<int64_t>(threads, batch));
  std::vector<float> partial(static_cast<size_t>(teams) * g.cout * rows, 0.f);
#pragma omp parallel num_threads(teams)
  {
    MKL_Set_Num_Threads_Local(1);
    float* my_dw = partial.data() + static_cast<size_t>(omp_get_thread_num()) * g.cout * rows;
    std::vector<float> cols(rows * out_pixels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < batch; ++n) {
      const float* dy = dyp + n * g.cout * out_pixels;
      Im2Col(xp + n * g.cin * g.height * g.width, cols.data(), g);
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, g.cout, rows, out_pixels, 1.f, dy, out_pixels, cols.data(),
                  out_pixels, 1.f, my_dw, rows);
      if (input_grad) {
        cblas_sgemm(kRowMajor, kTrans, kNoTrans, rows, out_pixels, g.cout, 1.f, wp, rows, dy, out_pixels, 0.f,
                    cols.data(), out_pixels);
        Col2Im(cols.data(), dxp + n * g.cin * g.height * g.width, g);
      }
    }
    MKL_Set_Num_Threads_Local(0);
  }
  float* dwp = grad_weight.data<float>();
  const int64_t size = g.cout * rows;
  for (int64_t i = 0; i < size; ++i) {
    float sum = 0.f;
    for (int t = 0; t < teams; ++t) sum += partial[static_cast<size_t>(t) * size + i];
    dwp[i] = sum;
  }
  return {grad_x, grad_weight};
}

std::vector<std::vector<int64_t>> ConvIm2ColInferShape(const std::vector<int64_t>& x,
                                                       const std::vector<int64_t>& weight, int stride,
                                                       int padding, bool, int) {
  return {{x[0], weight[0], (x[2] + 2 * padding - weight[2]) / stride + 1,
           (x[3] + 2 * padding - weight[3]) / stride + 1}};
}

PD_BUILD_OP(chexnet_conv_im2col)
    .Inputs({"X", "Weight"})
    .Outputs({"Y"})
    .Attrs({"stride: int", "padding: int", "input_grad: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(ConvIm2ColForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvIm2ColInferShape));

PD_BUILD_GRAD_OP(chexnet_conv_im2col)
    .Inputs({"X", "Weight", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"stride: int", "padding: int", "input_grad: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(ConvIm2ColBackward));

// 4. Max pooling (no ceil mode), parallel over image planes. The forward pass keeps, for each
//    output, the position of the first maximum in the window (row by row), which is where Paddle's
//    max-pool gradient goes too.

std::vector<paddle::Tensor> MaxPoolForward(const paddle::Tensor& x, int kernel, int stride, int padding,
                                           int threads) {
  CheckInput(x, "x");
  PD_CHECK(x.shape().size() == 4 && x.is_contiguous(), "x must be a contiguous NCHW tensor");
  PD_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel,
           "max pooling needs kernel >= 1, stride >= 1 and 0 <= padding <= kernel / 2");
  const int64_t planes = x.shape()[0] * x.shape()[1], height = x.shape()[2], width = x.shape()[3];
  const int64_t out_h = (height + 2 * padding - kernel) / stride + 1;
  const int64_t out_w = (width + 2 * padding - kernel) / stride + 1;
  PD_CHECK(out_h >= 1 && out_w >= 1, "the pooling window is larger than the padded input");
  auto y = paddle::empty({x.shape()[0], x.shape()[1], out_h, out_w}, x.dtype(), x.place());
  auto indices = paddle::empty({x.shape()[0], x.shape()[1], out_h, out_w}, paddle::DataType::INT32, x.place());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  int32_t* ip = indices.data<int32_t>();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < planes; ++p) {
    const float* in = xp + p * height * width;
    for (int64_t oh = 0; oh < out_h; ++oh) {
      const int64_t h0 = std::max<int64_t>(0, oh * stride - padding);
      const int64_t h1 = std::min(height, oh * stride - padding + kernel);
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const int64_t w0 = std::max<int64_t>(0, ow * stride - padding);
        const int64_t w1 = std::min(width, ow * stride - padding + kernel);
        int64_t best = h0 * width + w0;
        float value = in[best];
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w)
            if (in[h * width + w] > value) {
              value = in[h * width + w];
              best = h * width + w;
            }
        const int64_t o = (p * out_h + oh) * out_w + ow;
        yp[o] = value;
        ip[o] = static_cast<int32_t>(best);
      }
    }
  }
  return {y, indices};
}

std::vector<paddle::Tensor> MaxPoolBackward(const paddle::Tensor& x, const paddle::Tensor& indices,
                                            const paddle::Tensor& grad_y, int kernel, int stride, int padding,
                                            int threads) {
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  const int64_t planes = x.shape()[0] * x.shape()[1], pixels = x.shape()[2] * x.shape()[3];
  const int64_t out_pixels = indices.shape()[2] * indices.shape()[3];
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* dyp = dy_tensor.data<float>();
  const int32_t* ip = indices.data<int32_t>();
  float* dxp = grad_x.data<float>();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < planes; ++p) {
    float* dx = dxp + p * pixels;
    std::memset(dx, 0, pixels * sizeof(float));
    const float* dy = dyp + p * out_pixels;
    const int32_t* index = ip + p * out_pixels;
    for (int64_t o = 0; o < out_pixels; ++o) dx[index[o]] += dy[o];
  }
  return {grad_x};
}

std::vector<std::vector<int64_t>> MaxPoolInferShape(const std::vector<int64_t>& x, int kernel, int stride,
                                                    int padding, int) {
  const std::vector<int64_t> out{x[0], x[1], (x[2] + 2 * padding - kernel) / stride + 1,
                                 (x[3] + 2 * padding - kernel) / stride + 1};
  return {out, out};
}

std::vector<paddle::DataType> MaxPoolInferDtype(const paddle::DataType& x) {
  return {x, paddle::DataType::INT32};
}

PD_BUILD_OP(chexnet_max_pool)
    .Inputs({"X"})
    .Outputs({"Y", "Indices"})
    .Attrs({"kernel: int", "stride: int", "padding: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(MaxPoolForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MaxPoolInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MaxPoolInferDtype));

PD_BUILD_GRAD_OP(chexnet_max_pool)
    .Inputs({"X", "Indices", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"kernel: int", "stride: int", "padding: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(MaxPoolBackward));

// 5. Concatenation along channels (NCHW), parallel over (image, piece): each dense layer
//    concatenates all earlier feature maps of its block, and Paddle's concat and its gradient
//    (the split) copy them on one thread.

std::vector<paddle::Tensor> ConcatForward(const std::vector<paddle::Tensor>& pieces, int threads) {
  PD_CHECK(!pieces.empty(), "nothing to concatenate");
  const auto& first = pieces[0].shape();
  PD_CHECK(first.size() == 4, "the pieces must be NCHW");
  const int64_t batch = first[0], pixels = first[2] * first[3], count = static_cast<int64_t>(pieces.size());
  std::vector<int64_t> offsets(count + 1, 0);
  for (int64_t i = 0; i < count; ++i) {
    const auto& shape = pieces[i].shape();
    CheckInput(pieces[i], "every piece");
    PD_CHECK(shape.size() == 4 && shape[0] == batch && shape[2] * shape[3] == pixels && shape[2] == first[2],
             "piece ", i, " does not match the first piece's batch and spatial size");
    PD_CHECK(pieces[i].is_contiguous(), "piece ", i, " must be contiguous");
    offsets[i + 1] = offsets[i] + shape[1];
  }
  const int64_t channels = offsets[count];
  auto y = paddle::empty({batch, channels, first[2], first[3]}, pieces[0].dtype(), pieces[0].place());
  float* yp = y.data<float>();
  std::vector<const float*> sources;
  for (const auto& piece : pieces) sources.push_back(piece.data<float>());
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t width = offsets[i + 1] - offsets[i];
      std::memcpy(yp + (n * channels + offsets[i]) * pixels, sources[i] + n * width * pixels,
                  width * pixels * sizeof(float));
    }
  return {y};
}

std::vector<paddle::Tensor> ConcatBackward(const std::vector<paddle::Tensor>& pieces, const paddle::Tensor& grad_y,
                                           int threads) {
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  const int64_t batch = grad_y.shape()[0], channels = grad_y.shape()[1];
  const int64_t pixels = grad_y.shape()[2] * grad_y.shape()[3], count = static_cast<int64_t>(pieces.size());
  std::vector<int64_t> offsets(count + 1, 0);
  std::vector<paddle::Tensor> grads;
  std::vector<float*> targets;
  for (int64_t i = 0; i < count; ++i) {
    offsets[i + 1] = offsets[i] + pieces[i].shape()[1];
    grads.push_back(paddle::empty(pieces[i].shape(), pieces[i].dtype(), pieces[i].place()));
    targets.push_back(grads.back().data<float>());
  }
  const float* dyp = dy_tensor.data<float>();
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t width = offsets[i + 1] - offsets[i];
      std::memcpy(targets[i] + n * width * pixels, dyp + (n * channels + offsets[i]) * pixels,
                  width * pixels * sizeof(float));
    }
  return grads;
}

std::vector<std::vector<int64_t>> ConcatInferShape(const std::vector<std::vector<int64_t>>& pieces, int) {
  std::vector<int64_t> shape = pieces[0];
  for (size_t i = 1; i < pieces.size(); ++i) shape[1] += pieces[i][1];
  return {shape};
}

PD_BUILD_OP(chexnet_concat)
    .Inputs({paddle::Vec("X")})
    .Outputs({"Y"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(ConcatForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConcatInferShape));

PD_BUILD_GRAD_OP(chexnet_concat)
    .Inputs({paddle::Vec("X"), paddle::Grad("Y")})
    .Outputs({paddle::Grad(paddle::Vec("X"))})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(ConcatBackward));

// 6. Depthwise convolution (groups == channels, one k x k filter per channel, no bias; EfficientNet's
//    MBConv blocks), parallel over image planes forward and over channels backward. Paddle's CPU
//    depthwise kernels run on one thread. Every tap is a contiguous multiply-add, so that it
//    vectorises:
//    - stride 1: the plane is copied into a zero-padded buffer of row pitch Wp = W + 2p; output
//      (oh, ow) then sits at oh * Wp + ow of a flat range that each tap (i, j) reads shifted by
//      i * Wp + j, one loop over the whole plane per tap (the Wp - OW extra columns are computed
//      and dropped, or zero in the backward pass), which keeps the loops long on 7x7 maps too;
//    - stride 2: output rows are made one at a time from the k input rows under them, the input
//      plane (and, backward, its gradient) split first into its even and odd columns, which makes
//      the strided reads contiguous.
//    A channel's weight gradient is summed by the one thread that owns the channel, so no
//    reduction across threads is needed.

namespace {

struct DepthwiseGeometry {
  int64_t batch, channels, height, width, kernel, stride, padding, out_h, out_w;
};

DepthwiseGeometry DepthwiseShape(const paddle::Tensor& x, const paddle::Tensor& weight, int stride, int padding) {
  CheckInput(x, "x");
  CheckInput(weight, "weight");
  PD_CHECK(x.shape().size() == 4 && weight.shape().size() == 4, "x and weight must be 4-D");
  PD_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  PD_CHECK(weight.shape()[0] == x.shape()[1] && weight.shape()[1] == 1 && weight.shape()[2] == weight.shape()[3],
           "weight must be [C, 1, k, k] for x of C channels");
  PD_CHECK(stride == 1 || stride == 2, "the depthwise kernel takes stride 1 or 2");
  PD_CHECK(padding >= 0, "padding must be >= 0");
  DepthwiseGeometry g{x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3], weight.shape()[2], stride, padding,
                      0, 0};
  g.out_h = (g.height + 2 * padding - g.kernel) / stride + 1;
  g.out_w = (g.width + 2 * padding - g.kernel) / stride + 1;
  PD_CHECK(g.out_h >= 1 && g.out_w >= 1, "the kernel is larger than the padded input");
  return g;
}

// Where tap column j reads: input column ow * stride - padding + j is element ow + offset of row
// `phase` (stride 1: the row itself, phase 0; stride 2: its even or odd columns), valid for ow in
// [begin, end).
struct TapColumn {
  int64_t phase, offset, begin, end;
};

std::vector<TapColumn> TapColumns(const DepthwiseGeometry& g) {
  std::vector<TapColumn> taps;
  for (int64_t j = 0; j < g.kernel; ++j) {
    const int64_t shift = j - g.padding;  // input column = ow * stride + shift
    TapColumn t{};
    if (g.stride == 1) {
      t = {0, shift, 0, g.width};
    } else {
      t.phase = ((shift % 2) + 2) % 2;
      t.offset = (shift - t.phase) / 2;
      t.begin = 0;
      t.end = t.phase == 0 ? (g.width + 1) / 2 : g.width / 2;  // length of the phase row
    }
    // valid ow: 0 <= ow + offset < length
    const int64_t length = t.end;
    t.begin = std::max<int64_t>(0, -t.offset);
    t.end = std::max(t.begin, std::min(g.out_w, length - t.offset));
    taps.push_back(t);
  }
  return taps;
}

// The rows a plane is read from: the plane itself (stride 1), or its even and odd columns (stride 2).
class PhaseRows {
 public:
  explicit PhaseRows(const DepthwiseGeometry& g)
      : g_(g), even_((g.width + 1) / 2), odd_(g.width / 2), buffer_(g.stride == 2 ? g.height * g.width : 0) {}

  // Split `plane` (stride 2); keep a pointer to it (stride 1).
  void Load(const float* plane) {
    plane_ = plane;
    if (g_.stride == 1) return;
    for (int64_t h = 0; h < g_.height; ++h) {
      const float* row = plane + h * g_.width;
      float* e = buffer_.data() + h * g_.width;
      float* o = e + even_;
      for (int64_t w = 0; w < odd_; ++w) {
        e[w] = row[2 * w];
        o[w] = row[2 * w + 1];
      }
      if (even_ > odd_) e[even_ - 1] = row[g_.width - 1];
    }
  }

  const float* Row(int64_t h, int64_t phase) const {
    if (g_.stride == 1) return plane_ + h * g_.width;
    return buffer_.data() + h * g_.width + (phase ? even_ : 0);
  }

  float* MutableRow(int64_t h, int64_t phase) { return buffer_.data() + h * g_.width + (phase ? even_ : 0); }

  // Stride 2: write the split rows back, interleaved, into `plane`.
  void Store(float* plane) const {
    for (int64_t h = 0; h < g_.height; ++h) {
      float* row = plane + h * g_.width;
      const float* e = buffer_.data() + h * g_.width;
      const float* o = e + even_;
      for (int64_t w = 0; w < odd_; ++w) {
        row[2 * w] = e[w];
        row[2 * w + 1] = o[w];
      }
      if (even_ > odd_) row[g_.width - 1] = e[even_ - 1];
    }
  }

  void Zero() { std::fill(buffer_.begin(), buffer_.end(), 0.f); }

 private:
  const DepthwiseGeometry& g_;
  const int64_t even_, odd_;
  std::vector<float> buffer_;
  const float* plane_ = nullptr;
};

// Stride 1: the plane zero-padded by `padding` on every side, row pitch width + 2 * padding.
struct PaddedPlane {
  explicit PaddedPlane(const DepthwiseGeometry& g)
      : pitch(g.width + 2 * g.padding), rows(g.height + 2 * g.padding), span((g.out_h - 1) * pitch + g.out_w),
        data(g.stride == 1 ? rows * pitch : 0, 0.f) {}

  // Copy `plane` in (the border stays zero).
  void Load(const float* plane, const DepthwiseGeometry& g) {
    for (int64_t h = 0; h < g.height; ++h)
      std::memcpy(data.data() + (h + g.padding) * pitch + g.padding, plane + h * g.width, g.width * sizeof(float));
  }

  const int64_t pitch, rows, span;  // span: the flat range of the outputs, (out_h - 1) * pitch + out_w
  std::vector<float> data;
};

void DepthwisePlaneStride1(const float* in, const float* w, float* out, const DepthwiseGeometry& g,
                           PaddedPlane& padded, std::vector<float>& flat) {
  padded.Load(in, g);
  std::fill(flat.begin(), flat.begin() + padded.span, 0.f);
  for (int64_t i = 0; i < g.kernel; ++i)
    for (int64_t j = 0; j < g.kernel; ++j) {
      const float tap = w[i * g.kernel + j];
      const float* src = padded.data.data() + i * padded.pitch + j;
      float* acc = flat.data();
#pragma omp simd
      for (int64_t q = 0; q < padded.span; ++q) acc[q] += tap * src[q];
    }
  for (int64_t oh = 0; oh < g.out_h; ++oh)
    std::memcpy(out + oh * g.out_w, flat.data() + oh * padded.pitch, g.out_w * sizeof(float));
}

}  // namespace

std::vector<paddle::Tensor> DepthwiseForward(const paddle::Tensor& x, const paddle::Tensor& weight, int stride,
                                             int padding, int threads) {
  const DepthwiseGeometry g = DepthwiseShape(x, weight, stride, padding);
  auto y = paddle::empty({g.batch, g.channels, g.out_h, g.out_w}, x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* wp = weight.data<float>();
  float* yp = y.data<float>();
  const int64_t planes = g.batch * g.channels, in_pixels = g.height * g.width, out_pixels = g.out_h * g.out_w;
  const std::vector<TapColumn> taps = TapColumns(g);
#pragma omp parallel num_threads(threads)
  {
    PhaseRows rows(g);
    PaddedPlane padded(g);
    std::vector<float> flat(g.stride == 1 ? padded.span : 0);
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane) {
      const float* w = wp + (plane % g.channels) * g.kernel * g.kernel;
      float* out = yp + plane * out_pixels;
      if (g.stride == 1) {
        DepthwisePlaneStride1(xp + plane * in_pixels, w, out, g, padded, flat);
        continue;
      }
      rows.Load(xp + plane * in_pixels);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        float* o = out + oh * g.out_w;
        std::memset(o, 0, g.out_w * sizeof(float));
        for (int64_t i = 0; i < g.kernel; ++i) {
          const int64_t h = oh * g.stride - g.padding + i;
          if (h < 0 || h >= g.height) continue;
          for (int64_t j = 0; j < g.kernel; ++j) {
            const TapColumn& t = taps[j];
            const float tap = w[i * g.kernel + j];
            const float* src = rows.Row(h, t.phase) + t.offset;
#pragma omp simd
            for (int64_t ow = t.begin; ow < t.end; ++ow) o[ow] += tap * src[ow];
          }
        }
      }
    }
  }
  return {y};
}

std::vector<paddle::Tensor> DepthwiseBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& grad_y, int stride, int padding, int threads) {
  const DepthwiseGeometry g = DepthwiseShape(x, weight, stride, padding);
  const paddle::Tensor dy_tensor = grad_y.is_contiguous() ? grad_y : grad_y.contiguous();
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  auto grad_weight = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  const float* xp = x.data<float>();
  const float* wp = weight.data<float>();
  const float* dyp = dy_tensor.data<float>();
  float* dxp = grad_x.data<float>();
  float* dwp = grad_weight.data<float>();
  const int64_t in_pixels = g.height * g.width, out_pixels = g.out_h * g.out_w, taps_count = g.kernel * g.kernel;
  const std::vector<TapColumn> taps = TapColumns(g);
#pragma omp parallel num_threads(threads)
  {
    PhaseRows rows(g), grads(g);
    PaddedPlane padded(g), padded_grad(g);
    std::vector<float> flat_dy(g.stride == 1 ? padded.span : 0, 0.f);
    std::vector<double> dw(taps_count);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < g.channels; ++c) {
      const float* w = wp + c * taps_count;
      std::fill(dw.begin(), dw.end(), 0.0);
      for (int64_t n = 0; n < g.batch; ++n) {
        const int64_t plane = n * g.channels + c;
        float* dx = dxp + plane * in_pixels;
        const float* dy = dyp + plane * out_pixels;
        if (g.stride == 1) {
          // dy laid out with the padded pitch (the extra columns zero), dx accumulated padded
          padded.Load(xp + plane * in_pixels, g);
          for (int64_t oh = 0; oh < g.out_h; ++oh)
            std::memcpy(flat_dy.data() + oh * padded.pitch, dy + oh * g.out_w, g.out_w * sizeof(float));
          std::fill(padded_grad.data.begin(), padded_grad.data.end(), 0.f);
          for (int64_t i = 0; i < g.kernel; ++i)
            for (int64_t j = 0; j < g.kernel; ++j) {
              const float tap = w[i * g.kernel + j];
              const int64_t shift = i * padded.pitch + j;
              const float* src = padded.data.data() + shift;
              float* dst = padded_grad.data.data() + shift;
              const float* d = flat_dy.data();
              float sum = 0.f;
#pragma omp simd reduction(+ : sum)
              for (int64_t q = 0; q < padded.span; ++q) {
                dst[q] += tap * d[q];
                sum += d[q] * src[q];
              }
              dw[i * g.kernel + j] += sum;
            }
          for (int64_t h = 0; h < g.height; ++h)
            std::memcpy(dx + h * g.width, padded_grad.data.data() + (h + g.padding) * padded.pitch + g.padding,
                        g.width * sizeof(float));
          continue;
        }
        rows.Load(xp + plane * in_pixels);
        grads.Zero();
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const float* d = dy + oh * g.out_w;
          for (int64_t i = 0; i < g.kernel; ++i) {
            const int64_t h = oh * g.stride - g.padding + i;
            if (h < 0 || h >= g.height) continue;
            for (int64_t j = 0; j < g.kernel; ++j) {
              const TapColumn& t = taps[j];
              const float tap = w[i * g.kernel + j];
              const float* src = rows.Row(h, t.phase) + t.offset;
              float* dst = grads.MutableRow(h, t.phase) + t.offset;
              float sum = 0.f;
#pragma omp simd reduction(+ : sum)
              for (int64_t ow = t.begin; ow < t.end; ++ow) {
                dst[ow] += tap * d[ow];
                sum += d[ow] * src[ow];
              }
              dw[i * g.kernel + j] += sum;
            }
          }
        }
        grads.Store(dx);
      }
      for (int64_t t = 0; t < taps_count; ++t) dwp[c * taps_count + t] = static_cast<float>(dw[t]);
    }
  }
  return {grad_x, grad_weight};
}

std::vector<std::vector<int64_t>> DepthwiseInferShape(const std::vector<int64_t>& x,
                                                      const std::vector<int64_t>& weight, int stride, int padding,
                                                      int) {
  return {{x[0], x[1], (x[2] + 2 * padding - weight[2]) / stride + 1,
           (x[3] + 2 * padding - weight[3]) / stride + 1}};
}

PD_BUILD_OP(chexnet_depthwise_conv)
    .Inputs({"X", "Weight"})
    .Outputs({"Y"})
    .Attrs({"stride: int", "padding: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DepthwiseInferShape));

PD_BUILD_GRAD_OP(chexnet_depthwise_conv)
    .Inputs({"X", "Weight", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"stride: int", "padding: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseBackward));
