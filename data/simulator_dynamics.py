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
    """Per-patient rate constants; `log_circ0` is the log of the current homeostatic set point."""

    ktr: np.ndarray
    kcirc: np.ndarray
    gamma: np.ndarray
    log_circ0: np.ndarray
    feedback_max: np.ndarray

    def take(self, index: np.ndarray) -> PlateletParams:
        return PlateletParams(
            self.ktr[index],
            self.kcirc[index],
            self.gamma[index],
            self.log_circ0[index],
            self.feedback_max[index],
        )


def steady_state(circ0: np.ndarray, params: PlateletParams, n_transit: int) -> PlateletState:
    """The homeostatic state at set point `circ0` (before any therapy)."""
    pool = params.kcirc * circ0 / params.ktr
    return PlateletState(pool.copy(), [pool.copy() for _ in range(n_transit)], circ0.copy())


def advance(
    state: PlateletState,
    params: PlateletParams,
    inhibition: np.ndarray | float,
    stimulation: np.ndarray | float,
    production: np.ndarray | float,
    dt: float,
    ceiling: float,
) -> PlateletState:
    """One exponential-Euler step (stable for any step; rates frozen over the step).

    The feedback (Circ0/Circ)^gamma saturates at the patient's `feedback_max` (a depleted marrow
    cannot amplify); the stimulation (hetrombopag binds the receptor apart from thrombopoietin, so
    it adds to the feedback) fades linearly to zero as the count approaches `ceiling` x Circ0.
    `production` is a log-multiplier of proliferation (the episode's marrow responsiveness).
    """
    log_ratio = params.log_circ0 - np.log(state.circ)
    feedback = np.minimum(np.exp(params.gamma * log_ratio), params.feedback_max)
    fade = np.clip(1.0 - np.exp(-log_ratio) / ceiling, 0.0, 1.0)
    drive = (1.0 - inhibition) * (1.0 + stimulation * fade) * feedback * np.exp(production)
    growth = params.ktr * (drive - 1.0)
    decay_tr = np.exp(-params.ktr * dt)
    new_transit = []
    upstream = state.prolif
    for compartment in state.transit:
        new_transit.append(upstream + (compartment - upstream) * decay_tr)
        upstream = compartment
    target = params.ktr * upstream / params.kcirc
    circ = target + (state.circ - target) * np.exp(-params.kcirc * dt)
    prolif = state.prolif * np.exp(growth * dt)
    return PlateletState(prolif, new_transit, np.maximum(circ, 0.5))


def hetrombopag_emax(
    logit_fixed: np.ndarray, eta: np.ndarray, emax_max: np.ndarray | float, omega: float
) -> np.ndarray:
    """Maximal relative increase of proliferation: bounded, logistic in sensitivity + omega * eta."""
    return emax_max / (1.0 + np.exp(-(logit_fixed + omega * eta)))


def episode_envelope(
    days_since_index: np.ndarray,
    duration_days: float,
    onset_tau: float,
    offset_tau: float,
) -> np.ndarray:
    """Time course (0..1) of the episode's effects: rises with `onset_tau`, decays after the course.

    Zero before the index date (negative or NaN `days_since_index`).
    """
    tau = np.nan_to_num(days_since_index, nan=-1.0)
    during = 1.0 - np.exp(-np.clip(tau, 0.0, duration_days) / onset_tau)
    after = np.exp(-np.clip(tau - duration_days, 0.0, None) / offset_tau)
    return np.where(tau >= 0.0, during * after, 0.0)
