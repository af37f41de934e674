import numpy as np
import pytest
import torch

from biomip.core import InputError
from biomip.data import hu_to_mu, shepp_logan, simulate_ct
from biomip.ops.ct import fan_beam


def test_noise_free_and_seeded_noise():
    mu = shepp_logan((48, 48)) * 0.02
    clean = simulate_ct(mu, n_views=30)
    np.testing.assert_array_equal(clean.measurement, clean.clean)
    a = simulate_ct(mu, n_views=30, photons=1e4, seed=5)
    b = simulate_ct(mu, n_views=30, photons=1e4, seed=5)
    c = simulate_ct(mu, n_views=30, photons=1e4, seed=6)
    np.testing.assert_array_equal(a.measurement, b.measurement)
    assert not np.array_equal(a.measurement, c.measurement)
    # Poisson statistics: Var(-log(N / I0)) ~ 1 / (I0 exp(-p)) for the unattenuated rays
    air = a.clean < 1e-6
    resid = (a.measurement - a.clean)[air]
    assert abs(resid.var() * 1e4 - 1.0) < 0.15


def test_gaussian_noise_on_line_integrals_and_torch_kind():
    mu = torch.tensor(shepp_logan((32, 32)).numpy() * 0.02)
    s = simulate_ct(mu, geometry=fan_beam(40, 100.0, 200.0, 60), gaussian_sigma=0.01, seed=0)
    assert isinstance(s.measurement, torch.Tensor)
    assert abs(float((s.measurement - s.clean).std()) - 0.01) < 0.001
    assert s.to_dict()["geometry"]["kind"] == "fan"


def test_hu_conversion_and_bad_input():
    np.testing.assert_allclose(hu_to_mu(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.0192, 0.0384])
    with pytest.raises(InputError, match="1/mm"):
        simulate_ct(shepp_logan((128, 128)), photons=1e4)
    with pytest.raises(InputError, match="photons"):
        simulate_ct(shepp_logan((32, 32)) * 0.02, photons=-5)
    with pytest.raises(InputError, match="geometry"):
        simulate_ct(shepp_logan((32, 32)), geometry="parallel")
