"""A Gaussian fitted to the pixels of an image folder: the MAD paper's theory, in seconds.

Why it exists: the paper's analysis of self-consuming loops (Alemohammad et al. 2023, §3)
is for a Gaussian model re-fitted each generation to samples of the previous one. Running
the very same shell loop (`mad train --model gaussian` → `mad sample --psi` → `mad mix` →
...) with this model lets anyone check the loop machinery against that theory before
spending hours on StyleGAN2.

Model. Every image is flattened to a vector x of D = H·W·C pixels scaled to [-1, 1]
(x = p / 127.5 − 1 for uint8 p, the same range StyleGAN2 works in). We fit

    μ = mean of x,   Σ = Σ_i (x_i − μ)(x_i − μ)ᵀ / (n − 1)      (unbiased, ddof = 1)

and store Σ in factored form Σ = U diag(s²) Uᵀ + diag(r²):

* ``full``    (D ≤ max_full_dim): U, s from the exact eigendecomposition of Σ
  (zero eigenvalues dropped, r = 0), so the model covariance *is* the sample covariance.
* ``lowrank`` (D > max_full_dim): U, s are the top-k principal directions (randomised
  SVD, seeded), and r² = diag(Σ) − diag(U s² Uᵀ) is the variance the k components miss,
  so every pixel keeps exactly its sample variance (a probabilistic-PCA-like model).

Sampling with bias ψ (`mad sample --psi`): x = μ + ψ (U (s ⊙ z₁) + r ⊙ z₂), z ~ N(0, I),
i.e. samples from N(μ, ψ² Σ); values are clamped to [-1, 1] and rounded to uint8. ψ scales
the deviation from the mean exactly like the truncation trick scales w − w_avg in
StyleGAN2 (ψ = 0 gives the mean image every time).

Mapping to the paper. The paper's sampling bias λ multiplies the covariance of the
distribution sampled from, so λ = ψ². For a fully synthetic loop that re-fits with the
unbiased estimator on n samples per generation, E[Σ_t] = λ Σ_{t−1}, hence
E[σ²_t] = λ^t σ²_0 = ψ^{2t} σ²_0 for every pixel variance (and trace). With ψ = 1 the
expected variance stays constant although each individual run still collapses (σ²_t → 0
almost surely, the estimation noise compounds). tests/test_gaussian.py checks the ψ^{2t}
law by Monte Carlo over many independent loops (and the constant expectation at ψ = 1).
"""
