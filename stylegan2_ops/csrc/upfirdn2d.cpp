// Python binding of the upfirdn2d kernel. The checks guard memory safety; the
// Python layer has already raised friendly ValueErrors for user mistakes.

#include <torch/extension.h>

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                          double gain);

static at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                            double gain) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4, "x must be a 4-D CUDA tensor");
    TORCH_CHECK(f.device() == x.device() && f.scalar_type() == at::kFloat && f.dim() == 2 && f.is_contiguous(),
                "f must be a contiguous 2-D float32 tensor on x's device");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "up and down must be >= 1");
    TORCH_CHECK(x.size(2) * upy + std::abs(pady0) + std::abs(pady1) < (int64_t(1) << 30) &&
                    x.size(3) * upx + std::abs(padx0) + std::abs(padx1) < (int64_t(1) << 30) &&
                    x.size(0) * x.size(1) < (int64_t(1) << 31),
                "x is too large for 32-bit pixel indices");
    return upfirdn2d_cuda(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR filter, downsample (see upfirdn2d.cu)");
}
