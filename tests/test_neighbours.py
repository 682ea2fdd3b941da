"""The k-NN kernels `mad metrics` (precision/recall, density/coverage) and `mad filter --by realism` share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mad_cli import filtering, metrics, neighbours


def test_knn_radii_by_hand() -> None:
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    # k=1: nearest other point; k=2: second nearest (squared distances)
    assert neighbours.knn_sq_radii(x, 1).tolist() == [1.0, 1.0, 4.0, 16.0]
    assert neighbours.knn_sq_radii(x, 2).tolist() == [9.0, 4.0, 9.0, 36.0]
    with pytest.raises(ValueError, match="k\\+1=4"):
        neighbours.knn_sq_radii(x[:3], 3)


def test_radii_do_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).normal(size=(50, 6))
    whole = neighbours.knn_sq_radii(x, 3)
    monkeypatch.setattr(neighbours, "CHUNK", 7)
    assert torch.allclose(neighbours.knn_sq_radii(x, 3), whole, rtol=1e-12, atol=0)  # up to BLAS summation order


def test_duplicates_are_exactly_zero_apart_and_a_ball_excludes_its_border() -> None:
    rng = np.random.default_rng(1)
    a = neighbours.as_float64(rng.normal(size=(5, 16)) * 1e3)
    b = a.clone()
    b[2] += 1e-9  # round-off between two extractions of the same image
    d, _tol = neighbours.sq_distances(a, b, neighbours.squared_norms(a), neighbours.squared_norms(b), margin=True)
    assert torch.all(d.diagonal() == 0)
    radii = neighbours.knn_sq_radii(a, 1)
    # each point's nearest neighbour lies exactly on its ball's border: not strictly inside
    dd, tt = neighbours.sq_distances(a, a, neighbours.squared_norms(a), neighbours.squared_norms(a), margin=True)
    inside = neighbours.strictly_inside(dd, tt, radii[:, None])
    assert inside.sum(1).tolist() == [1] * 5  # only the centre itself


def test_metrics_and_realism_use_the_same_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics.knn_sq_radii is neighbours.knn_sq_radii
    calls: list[int] = []
    real = neighbours.knn_sq_radii

    def counting(x, k):
        calls.append(k)
        return real(x, k)

    monkeypatch.setattr(neighbours, "knn_sq_radii", counting)
    rng = np.random.default_rng(2)
    filtering.realism_scores(rng.normal(size=(40, 3)), rng.normal(size=(5, 3)))
    assert calls == [filtering.REALISM_K]


def test_realism_scores_match_the_definition() -> None:
    rng = np.random.default_rng(3)
    real, samples = rng.normal(size=(60, 4)), rng.normal(size=(9, 4)) * 1.5
    d_real = ((real[:, None, :] - real[None, :, :]) ** 2).sum(-1)
    radii = np.sort(d_real, axis=1)[:, 3]  # k = 3, the point itself excluded
    usable = radii <= np.percentile(radii, 50)
    d = ((samples[:, None, :] - real[None, usable, :]) ** 2).sum(-1)
    expected = (radii[usable][None, :] / (d + 1e-12)).max(1)
    assert np.allclose(filtering.realism_scores(real, samples), expected, rtol=1e-9)


def test_neighbourhood_metrics_match_a_brute_force_count() -> None:
    rng = np.random.default_rng(4)
    gen, real = rng.normal(size=(70, 5)) + 0.3, rng.normal(size=(80, 5))
    d = ((gen[:, None, :] - real[None, :, :]) ** 2).sum(-1)
    r_real = np.sort(((real[:, None] - real[None]) ** 2).sum(-1), axis=1)
    r_gen = np.sort(((gen[:, None] - gen[None]) ** 2).sum(-1), axis=1)
    k_pr, k_dc = 3, 5
    expected = {
        "precision": float((d < r_real[:, k_pr][None, :]).any(1).mean()),
        "recall": float((d < r_gen[:, k_pr][:, None]).any(0).mean()),
        "density": float((d < r_real[:, k_dc][None, :]).sum() / (k_dc * len(gen))),
        "coverage": float((d < r_real[:, k_dc][None, :]).any(0).mean()),
    }
    assert metrics.neighbourhood_metrics(gen, real, k_pr, k_dc) == pytest.approx(expected, abs=1e-12)
