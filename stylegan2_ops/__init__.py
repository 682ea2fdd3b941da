"""StyleGAN2's custom ops: a pure-PyTorch reference and our own CUDA kernels.

`bias_act`, `upfirdn2d` (+ `setup_filter`, `filter2d`, `upsample2d`,
`downsample2d`) and `conv2d_resample`, with the semantics of NVIDIA's
stylegan2-ada-pytorch. Every op takes `impl='ref'|'cuda'|'auto'`; the
environment variable `MAD_OPS` overrides it globally. The CUDA plugins are
compiled on first use and cached (see `stylegan2_ops.build`);
`python -m stylegan2_ops check` builds and verifies them.

NVIDIA's `conv2d_gradfix` / `grid_sample_gradfix` are deliberately absent:
on current torch the stock ops' double backward is native and exact (see
conv2d_resample.py and tests/test_ops_conv2d_resample.py).
"""

from .bias_act import ACTIVATIONS, bias_act
from .build import PluginBuildError
from .conv2d_resample import conv2d_resample
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "ACTIVATIONS",
    "PluginBuildError",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "filter2d",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
