"""A Gaussian mixture in a whitened PCA of the pixels: the Curse of Recursion's model, in seconds.

Why it exists: Shumailov et al. 2023 ("The Curse of Recursion") showed model collapse with
Gaussian mixtures refitted, generation after generation, to their own samples. A single
Gaussian (`--model gaussian`) cannot draw a recognisable digit; a mixture in a small PCA
space can, and still fits in a second, so a loop that *learns* the data runs on any CPU
in seconds (what examples and tests use when they need more than the Gaussian's theory).

Model. Images are flattened to x ∈ [-1, 1]^D (D = H·W·C). A PCA keeps the top d
directions V (d × D, `--pca-dims`) with standard deviations s; images are whitened,
y = ((x − m) Vᵀ) / s, and a scikit-learn `GaussianMixture` with K components
(`--components`, `--covariance full|diag|tied|spherical`, k-means start seeded by
`--seed`) is fitted by EM to the y's. A labelled folder (labels.csv, dataset.json or
mad:label tags) gets one mixture per class over a shared PCA, and samples carry
`mad:label` (seed i → class i mod classes, or `--class K`).

Sampling with bias ψ (`mad sample --psi`): seed i picks component k by its weight, then
y = μ_k + ψ B_k z with B_k B_kᵀ = Σ_k and z ~ N(0, I), and x = m + (s ⊙ y) V. So each
component is sampled from N(μ_k, ψ² Σ_k): ψ scales every component's covariance by ψ²
(the weights and means are untouched; ψ = 0 gives the component means). As for the
Gaussian, the MAD paper's sampling bias is λ = ψ²: for one component it is exactly the
paper's model; for a mixture, λ < 1 shrinks each cluster towards its centre while keeping
every mode, which is how truncation acts on a multi-modal generator.

What it cannot do: the samples lie in the d-dimensional PCA subspace (no residual noise),
so fine detail the PCA drops is never drawn; with as many components as images (and a
tiny covariance) it memorises the training set, which `tests/test_gmm.py` shows.

Snapshot: format ``mad.gmm``, the PCA and mixture parameters as float64 tensors (see
`model`; no pickled scikit-learn objects), loading with `torch.load(weights_only=True)`.
"""
