"""The drug never lowers platelets: every episode is simulated with and without hetrombopag on
common random numbers (same patient, chemotherapy, transfusions and measurement noise), under
hypothesis over the simulator's parameters; the oracle's untreated probability never exceeds the
treated one."""

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.simulator import SimulationConfig
from data.simulator.candidates import Batch, Streams
from data.simulator.course import run_batch
from data.simulator.oracle import episode_probabilities
from data.simulator.params import ModelParameters

PARAMETERS = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "emax_max": st.floats(0.1, 20.0),
        "latent_omega": st.floats(0.0, 6.0),
        "latent_cap": st.floats(1.0, 8.0),
        "reserve_exponent": st.floats(0.0, 4.0),
        "onset_tau_days": st.floats(0.5, 6.0),
        "potency_scale": st.floats(0.1, 1.5),
        "acute_damage_scale": st.floats(0.0, 40.0),
        "reserve_recovery_days": st.floats(20.0, 400.0),
        "gamma_median": st.floats(0.05, 0.5),
        "increment": st.floats(5.0, 60.0),
        "plt_noise_sd_log": st.floats(0.0, 0.3),
    }
)


def _config(p: dict) -> SimulationConfig:
    prm = ModelParameters()
    prm = dataclasses.replace(
        prm,
        hetrombopag=dataclasses.replace(
            prm.hetrombopag,
            emax_max=p["emax_max"],
            latent_omega=p["latent_omega"],
            latent_cap=p["latent_cap"],
            reserve_exponent=p["reserve_exponent"],
            onset_tau_days=p["onset_tau_days"],
        ),
        platelets=dataclasses.replace(
            prm.platelets,
            potency_scale=p["potency_scale"],
            acute_damage_scale=p["acute_damage_scale"],
            reserve_recovery_days=p["reserve_recovery_days"],
            gamma_median=p["gamma_median"],
        ),
        care=dataclasses.replace(
            prm.care, transfusion_increment_plt=p["increment"], horizon_days=400
        ),
        labs=dataclasses.replace(prm.labs, plt_noise_sd_log=p["plt_noise_sd_log"]),
    )
    return SimulationConfig(n_patients=10, seed=p["seed"], workers=1, parameters=prm)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PARAMETERS)
def test_every_count_with_the_drug_is_at_least_the_count_without(p: dict) -> None:
    config = _config(p)
    streams = Streams(config.seed, 0)
    batch = Batch(150, config, streams)
    visits, _, episodes, _ = run_batch(batch, config, streams, None)
    assert visits["plt"].shape == visits["plt_untreated"].shape
    assert (visits["plt"] >= visits["plt_untreated"]).all()
    during = visits["kind"] == 2
    if during.any() and p["emax_max"] > 1.0 and p["latent_omega"] < 3.0:
        # the drug does add platelets (the comparison is not vacuous)
        assert (visits["plt"][during] > visits["plt_untreated"][during]).any()
    if episodes:
        oracle = episode_probabilities(episodes, config.parameters, config.oracle_draws, chunk=512)
        assert (oracle["p_response"] >= oracle["p_response_untreated"] - 1e-9).all()
        assert (oracle["p_response_untreated"] >= -1e-9).all()
        assert (oracle["p_response"] <= 1 + 1e-9).all()


def test_outside_episodes_the_two_counts_are_the_same() -> None:
    config = _config(
        {
            "seed": 7,
            "emax_max": 8.0,
            "latent_omega": 1.0,
            "latent_cap": 4.0,
            "reserve_exponent": 2.0,
            "onset_tau_days": 2.0,
            "potency_scale": 0.35,
            "acute_damage_scale": 16.0,
            "reserve_recovery_days": 150.0,
            "gamma_median": 0.1,
            "increment": 25.0,
            "plt_noise_sd_log": 0.1,
        }
    )
    streams = Streams(config.seed, 0)
    batch = Batch(400, config, streams)
    visits, _, episodes, _ = run_batch(batch, config, streams, None)
    first_index = np.full(batch.n, np.iinfo(np.int64).max)
    np.minimum.at(first_index, episodes["cand"], episodes["day"])
    before = visits["day"] <= first_index[visits["cand"]]
    # before the first hetrombopag dose nothing differs; during episodes the drug adds
    assert np.array_equal(visits["plt"][before], visits["plt_untreated"][before])
    during = visits["kind"] == 2
    assert (visits["plt"][during] - visits["plt_untreated"][during]).mean() > 10.0
