// Python binding of the bias_act kernel. The checks here guard memory safety
// (the Python layer has already raised friendly ValueErrors for user mistakes).

#include <torch/extension.h>

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& xref, const at::Tensor& yref,
                         const at::Tensor& dy, int64_t mode, int64_t dim, int64_t act, double alpha, double gain,
                         double clamp);

static void check_like(const at::Tensor& ref, const at::Tensor& x, const char* name) {
    if (!ref.numel()) return;
    TORCH_CHECK(ref.device() == x.device() && ref.scalar_type() == x.scalar_type(), name, " must match x in device and dtype");
    TORCH_CHECK(ref.sizes() == x.sizes(), name, " must match x in shape");
    // Same element order: strides may differ only along dimensions of size 1.
    for (int64_t d = 0; d < x.dim(); ++d)
        TORCH_CHECK(x.size(d) == 1 || ref.stride(d) == x.stride(d), name, " must have x's memory layout");
}

static at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& xref, const at::Tensor& yref,
                           const at::Tensor& dy, int64_t mode, int64_t dim, int64_t act, double alpha, double gain,
                           double clamp) {
    TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "x must be dense (contiguous in some memory format)");
    TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0, 1 or 2");
    TORCH_CHECK(act >= 0 && act <= 8, "unknown activation index");
    TORCH_CHECK(dim >= 0 && (x.dim() == 0 || dim < x.dim()), "dim out of range");
    if (b.numel()) {
        TORCH_CHECK(b.dim() == 1 && b.is_contiguous(), "b must be a contiguous 1-D tensor");
        TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(), "b must match x in device and dtype");
        TORCH_CHECK(x.dim() > dim && b.numel() == x.size(dim), "b length must match x.shape[dim]");
    }
    check_like(xref, x, "xref");
    check_like(yref, x, "yref");
    check_like(dy, x, "dy");
    TORCH_CHECK(mode != 2 || (xref.numel() && dy.numel()), "second-order mode needs xref and dy");
    TORCH_CHECK(clamp < 0 || mode == 0 || yref.numel(), "clamped gradients need yref");
    return bias_act_cuda(x, b, xref, yref, dy, mode, dim, act, alpha, gain, clamp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "fused bias + activation (+ derivatives), see bias_act.cu");
}
