"""Pool-quality metrics: our k-NN precision/recall/density/coverage equal the `prdc` package's,
and the Fréchet distance behaves as a distance between Gaussian fits."""

import numpy as np
import pytest

from deliberate.errors import DeliberateError
from deliberate.quality import frechet_distance, prdc


def test_prdc_matches_the_reference_package():
    reference = pytest.importorskip("prdc")
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    for fake in (rng.normal(size=(300, 8)), rng.normal(0.5, 1.5, size=(250, 8))):
        ours = prdc(real, fake, k=5, chunk=128)  # chunks smaller than the sets: the loop joins up
        theirs = reference.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_prdc_separates_realism_from_diversity():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(500, 4))
    collapsed = rng.normal(scale=0.1, size=(500, 4))  # realistic but not diverse
    far = rng.normal(loc=6.0, size=(500, 4))  # diverse but off the real manifold
    c, f = prdc(real, collapsed), prdc(real, far)
    assert c["precision"] > 0.9 and c["recall"] < 0.2 and c["coverage"] < 0.3
    assert f["precision"] < 0.05 and f["coverage"] < 0.05
    with pytest.raises(DeliberateError, match="more than k=5"):
        prdc(real, real[:5])


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([2.0, 0.0, 0.0])  # same covariance: FD = |Δμ|² = 4
    assert frechet_distance(a, shifted) == pytest.approx(4.0, rel=1e-6)
    wider = rng.normal(scale=2.0, size=(4000, 3))  # Tr(Σa + Σb - 2√(ΣaΣb)) = 3 (1 + 4 - 4) = 3
    assert frechet_distance(a, wider) == pytest.approx(3.0, rel=0.1)
