// Fused bias + activation + gain + clamp, and its first and second derivatives.
//
// One elementwise kernel serves three modes so that the autograd Functions in
// stylegan2_ops/bias_act.py can express every gradient through the op itself:
//   mode 0 (forward):        out = clamp(act(in + b) * gain)
//   mode 1 (first order):    out = in * act'(s) * gain * [|y| < clamp]      (in = dy; clamp as rounded to y's dtype)
//   mode 2 (second order):   out = in * act''(s) * gain * dy * [|y| < clamp] (in = d(dx))
// where s = xref + b is the pre-activation. For relu/lrelu/linear the first
// derivative is read from the sign of the saved output y instead, so the
// forward pass does not have to keep x alive (the next layer keeps y anyway).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
// (Not ATen/cuda/CUDAContext.h: it pulls in cuBLAS/cuSPARSE headers that a
// minimal CUDA toolkit install does not have, and doubles the compile time.)

namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return exp(v); }
__device__ __forceinline__ float th(float v) { return tanhf(v); }
__device__ __forceinline__ double th(double v) { return tanh(v); }
__device__ __forceinline__ float l1p(float v) { return log1pf(v); }
__device__ __forceinline__ double l1p(double v) { return log1p(v); }
__device__ __forceinline__ float fab(float v) { return fabsf(v); }
__device__ __forceinline__ double fab(double v) { return fabs(v); }

enum Act { LINEAR = 0, RELU, LRELU, TANH, SIGMOID, ELU, SELU, SOFTPLUS, SWISH };

constexpr double SELU_SCALE = 1.0507009873554804934193349852946;
constexpr double SELU_ALPHA = 1.6732632423543772848170429916717;
constexpr double SOFTPLUS_THRESHOLD = 20.0;  // torch.nn.functional.softplus default

template <typename T> __device__ __forceinline__ T sigm(T s) { return T(1) / (T(1) + ex(-s)); }

template <typename T> __device__ T act_value(int act, T s, T alpha) {
    switch (act) {
        case RELU: return s > T(0) ? s : T(0);
        case LRELU: return s > T(0) ? s : s * alpha;
        case TANH: return th(s);
        case SIGMOID: return sigm(s);
        case ELU: return s > T(0) ? s : ex(s) - T(1);
        case SELU: return s > T(0) ? T(SELU_SCALE) * s : T(SELU_SCALE * SELU_ALPHA) * (ex(s) - T(1));
        case SOFTPLUS: return s > T(SOFTPLUS_THRESHOLD) ? s : l1p(ex(s));
        case SWISH: return s * sigm(s);
        default: return s;
    }
}

template <typename T> __device__ T act_grad(int act, T s, T alpha) {
    switch (act) {
        case RELU: return s > T(0) ? T(1) : T(0);
        case LRELU: return s > T(0) ? T(1) : alpha;
        case TANH: { T t = th(s); return T(1) - t * t; }
        case SIGMOID: { T g = sigm(s); return g * (T(1) - g); }
        case ELU: return s > T(0) ? T(1) : ex(s);
        case SELU: return s > T(0) ? T(SELU_SCALE) : T(SELU_SCALE * SELU_ALPHA) * ex(s);
        case SOFTPLUS: return s > T(SOFTPLUS_THRESHOLD) ? T(1) : sigm(s);
        case SWISH: { T g = sigm(s); return g * (T(1) + s * (T(1) - g)); }
        default: return T(1);
    }
}

template <typename T> __device__ T act_grad2(int act, T s) {
    switch (act) {
        case TANH: { T t = th(s); return T(-2) * t * (T(1) - t * t); }
        case SIGMOID: { T g = sigm(s); return g * (T(1) - g) * (T(1) - T(2) * g); }
        case ELU: return s > T(0) ? T(0) : ex(s);
        case SELU: return s > T(0) ? T(0) : T(SELU_SCALE * SELU_ALPHA) * ex(s);
        case SOFTPLUS: { if (s > T(SOFTPLUS_THRESHOLD)) return T(0); T g = sigm(s); return g * (T(1) - g); }
        case SWISH: { T g = sigm(s); return g * (T(1) - g) * (T(2) + s * (T(1) - T(2) * g)); }
        default: return T(0);  // piecewise linear activations
    }
}

// act' read from the saved output: valid for linear/relu/lrelu when gain > 0.
template <typename T> __device__ T act_grad_from_y(int act, T y, T alpha) {
    switch (act) {
        case RELU: return y > T(0) ? T(1) : T(0);
        case LRELU: return y > T(0) ? T(1) : alpha;
        default: return T(1);
    }
}

struct Params {
    int64_t n;
    int64_t bias_step;  // stride of `dim` in the (dense) tensors
    int64_t bias_len;
    int mode;
    int act;
    double alpha, gain, clamp;
};

template <typename scalar_t>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ in,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ xref,
                                const scalar_t* __restrict__ yref, const scalar_t* __restrict__ dyref, Params p) {
    using acc_t = typename AccType<scalar_t>::type;
    const acc_t alpha = static_cast<acc_t>(p.alpha);
    const acc_t gain = static_cast<acc_t>(p.gain);
    const acc_t clamp = static_cast<acc_t>(p.clamp);
    // The saved y went through scalar_t, and so did a clamped value: float16(0.8) is 0.79980,
    // which is < 0.8f and would let the gradient through every clamped element. Compare y
    // with the clamp as it looks after that same rounding (what torch's clamp backward does).
    const acc_t clamp_y = static_cast<acc_t>(static_cast<scalar_t>(clamp));
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const acc_t v = static_cast<acc_t>(in[i]);
        const acc_t bias = b ? static_cast<acc_t>(b[(i / p.bias_step) % p.bias_len]) : acc_t(0);
        acc_t r;
        if (p.mode == 0) {
            r = act_value<acc_t>(p.act, v + bias, alpha) * gain;
            if (clamp >= acc_t(0)) r = r > clamp ? clamp : (r < -clamp ? -clamp : r);
        } else {
            acc_t d;
            if (p.mode == 1) {
                d = xref ? act_grad<acc_t>(p.act, static_cast<acc_t>(xref[i]) + bias, alpha)
                         : (yref ? act_grad_from_y<acc_t>(p.act, static_cast<acc_t>(yref[i]), alpha) : acc_t(1));
            } else {
                d = act_grad2<acc_t>(p.act, static_cast<acc_t>(xref[i]) + bias) * static_cast<acc_t>(dyref[i]);
            }
            r = v * d * gain;
            if (clamp >= acc_t(0) && !(fab(static_cast<acc_t>(yref[i])) < clamp_y)) r = acc_t(0);
        }
        out[i] = static_cast<scalar_t>(r);
    }
}

template <typename scalar_t> const scalar_t* ptr_or_null(const at::Tensor& t) {
    return t.numel() ? t.data_ptr<scalar_t>() : nullptr;
}

}  // namespace

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& xref, const at::Tensor& yref,
                         const at::Tensor& dy, int64_t mode, int64_t dim, int64_t act, double alpha, double gain,
                         double clamp) {
    const c10::cuda::OptionalCUDAGuard guard(x.device());
    at::Tensor out = at::empty_like(x);
    if (x.numel() == 0) return out;
    Params p;
    p.n = x.numel();
    p.bias_len = b.numel() ? b.numel() : 1;
    p.bias_step = b.numel() ? std::max<int64_t>(x.stride(dim), 1) : 1;
    p.mode = static_cast<int>(mode);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    const int threads = 256;
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index()));
    const int64_t max_blocks = static_cast<int64_t>(sms) * 32;
    const int blocks = static_cast<int>(std::min<int64_t>((p.n + threads - 1) / threads, max_blocks));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
        bias_act_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
            out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b), ptr_or_null<scalar_t>(xref),
            ptr_or_null<scalar_t>(yref), ptr_or_null<scalar_t>(dy), p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
