"""The `ddpm` backend: a class-conditional U-Net ε-predictor trained as a Gaussian diffusion.

- `unet`: the network (DDPM / ADM U-Net with a NULL label row for classifier-free guidance).
- `diffusion`: schedules, the forward process and its posterior, the training loss, and the
  DDIM / ancestral samplers with classifier-free guidance, deterministic per seed.
- `configs`: presets (`tiny`, `small` on CPU; `cifar32`, `faces64` on a GPU) resolved into a
  JSON-able config that rebuilds the network (`UNet(**config["unet"])`) and the diffusion.

Nothing here parses flags or touches files: the registry entry, the training loop and the
`mad sample` adapter build on these modules.
"""
