"""Friberg-type platelet dynamics and the hetrombopag effect, vectorised over patients.

One function advances the state by one step; the cohort simulation and the oracle both call it, so
the oracle re-simulates the post-index days with exactly the model that produced the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PlateletState:
    """Proliferating pool, transit compartments and circulating platelets (x10^9/L equivalents)."""

    prolif: np.ndarray
    transit: list[np.ndarray]
    circ: np.ndarray

    def take(self, index: np.ndarray) -> PlateletState:
        return PlateletState(self.prolif[index], [t[index] for t in self.transit], self.circ[index])


@dataclass
class PlateletParams:
    """Per-patient rate constants and the current homeostatic set point `circ0`.

    Derived once (and on `set_point`): `decay_tr` and `decay_circ` = exp(-k * dt) for the
    integration step, `ktr_dt` = ktr * dt, `transfer` = ktr / kcirc, `log_circ0` and the
    proliferating pool's steady state `pool_ss` = kcirc * circ0 / ktr.
    """

    ktr: np.ndarray
    kcirc: np.ndarray
    gamma: np.ndarray
    circ0: np.ndarray
    feedback_max: np.ndarray
    dt: float

    def __post_init__(self) -> None:
        self.log_circ0 = np.log(self.circ0)
        self.decay_tr = np.exp(-self.ktr * self.dt)
        self.decay_circ = np.exp(-self.kcirc * self.dt)
        self.ktr_dt = self.ktr * self.dt
        self.transfer = self.ktr / self.kcirc
        self.pool_ss = self.circ0 / self.transfer

    def take(self, index: np.ndarray) -> PlateletParams:
        return PlateletParams(
            self.ktr[index],
            self.kcirc[index],
            self.gamma[index],
            self.circ0[index],
            self.feedback_max[index],
            self.dt,
        )

    def set_point(self, index: np.ndarray, circ0: np.ndarray, feedback_max: np.ndarray) -> None:
        """Change the set point and feedback ceiling of some patients (after a cycle)."""
        self.circ0[index] = circ0
        self.log_circ0[index] = np.log(circ0)
        self.pool_ss[index] = circ0 / self.transfer[index]
        self.feedback_max[index] = feedback_max


def steady_state(params: PlateletParams, n_transit: int) -> PlateletState:
    """The homeostatic state at the set point (before any therapy)."""
    pool = params.pool_ss
    return PlateletState(pool.copy(), [pool.copy() for _ in range(n_transit)], params.circ0.copy())


def advance(
    state: PlateletState,
    params: PlateletParams,
    inhibition: np.ndarray | float,
    stimulation: np.ndarray | None,
    gain: np.ndarray | float,
    ceiling: float,
    pool_max: float,
    stimulated: np.ndarray | None = None,
) -> PlateletState:
    """One exponential-Euler step of `params.dt` days (stable; rates frozen over the step).

    The feedback (Circ0/Circ)^gamma saturates at the patient's `feedback_max` (a depleted marrow
    cannot amplify); the stimulation (hetrombopag binds the receptor apart from thrombopoietin, so
    it adds to the feedback) and the episode's own marrow responsiveness `gain` together boost
    proliferation by (1 + stimulation) * gain; a boost above 1 fades linearly to nothing as the
    count approaches `ceiling` x Circ0, so counts stay bounded, and the progenitor niche is finite:
    the pool never exceeds `pool_max` x its steady state. `gain` applies only with a stimulation
    (during and after an episode). With `stimulated` (row indices), `stimulation` and `gain` are
    given for those rows only (the others have none: the same as stimulation 0 and gain 1).
    """
    drive = params.log_circ0 - np.log(state.circ)
    drive *= params.gamma
    np.exp(drive, out=drive)
    np.minimum(drive, params.feedback_max, out=drive)  # the feedback
    if np.ndim(inhibition) or inhibition:
        drive *= 1.0 - inhibition
    if stimulation is None:
        if np.ndim(gain) or gain != 1.0:
            drive *= gain
    else:
        rows = slice(None) if stimulated is None else stimulated
        boost = (1.0 + stimulation) * gain - 1.0
        fade = state.circ[rows] / (ceiling * params.circ0[rows])
        np.subtract(1.0, fade, out=fade)
        np.clip(fade, 0.0, 1.0, out=fade)
        drive[rows] *= 1.0 + np.where(boost > 0.0, boost * fade, boost)
    drive -= 1.0
    drive *= params.ktr_dt
    np.exp(drive, out=drive)
    prolif = drive
    prolif *= state.prolif  # the pool after exponential growth at rate ktr (drive - 1)
    np.minimum(prolif, pool_max * params.pool_ss, out=prolif)
    new_transit = []
    upstream = state.prolif
    for compartment in state.transit:
        new = compartment - upstream
        new *= params.decay_tr
        new += upstream
        new_transit.append(new)
        upstream = compartment
    target = params.transfer * upstream
    circ = state.circ - target
    circ *= params.decay_circ
    circ += target
    np.maximum(circ, 0.5, out=circ)
    return PlateletState(prolif, new_transit, circ)


def episode_envelope(
    days_since_index: np.ndarray,
    duration_days: float,
    onset_tau: float,
    offset_tau: float,
) -> np.ndarray:
    """Time course (0..1) of the episode's effects: rises with `onset_tau`, decays after the course.

    Zero before the index date (negative `days_since_index`).
    """
    tau = days_since_index
    during = 1.0 - np.exp(-np.clip(tau, 0.0, duration_days) / onset_tau)
    after = np.exp(-np.clip(tau - duration_days, 0.0, None) / offset_tau)
    return np.where(tau >= 0.0, during * after, 0.0)


def hetrombopag_emax(
    logit_fixed: np.ndarray, eta: np.ndarray, emax_max: np.ndarray | float, omega: float
) -> np.ndarray:
    """Maximal relative increase of proliferation: logistic in sensitivity + omega * eta."""
    return emax_max / (1.0 + np.exp(-(logit_fixed + omega * eta)))
