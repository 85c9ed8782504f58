"""Friberg-type platelet dynamics and the hetrombopag effect, vectorised over patients.

The patient's own platelets follow a Friberg model (proliferating pool, transit compartments,
circulating platelets, feedback) depressed by chemotherapy. Hetrombopag adds platelets on top: it
raises the platelet output of the patient's own progenitors (`input = S(t) x pool`, S >= 0), and
the added output matures through its own transit chain (same rate constants) into added
circulating platelets. Transfused platelets are a third, decaying pool. The circulating count is
the sum, so with the same patient, chemotherapy, transfusions and measurement noise a count with
hetrombopag is never below the count without it (the untreated count is the same sum without the
drug pool). One function advances each part by one step; the cohort simulation and the oracle both
call them, so the oracle re-simulates the post-index days with exactly the model of the data.
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
class DrugState:
    """Platelets added by hetrombopag: maturing (one array per transit compartment) and
    circulating, x10^9/L equivalents; all >= 0."""

    transit: list[np.ndarray]
    circ: np.ndarray

    @classmethod
    def zeros(cls, n: int, n_transit: int) -> DrugState:
        return cls([np.zeros(n) for _ in range(n_transit)], np.zeros(n))

    def take(self, index: np.ndarray) -> DrugState:
        return DrugState([t[index] for t in self.transit], self.circ[index])


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
    pool_max: float,
) -> PlateletState:
    """One exponential-Euler step of `params.dt` days of the patient's own platelets (stable;
    rates frozen over the step).

    The feedback (Circ0/Circ)^gamma saturates at the patient's `feedback_max` (a depleted marrow
    cannot amplify); chemotherapy multiplies proliferation by 1 - inhibition; the progenitor
    niche is finite: the pool never exceeds `pool_max` x its steady state.
    """
    drive = params.log_circ0 - np.log(state.circ)
    drive *= params.gamma
    np.exp(drive, out=drive)
    np.minimum(drive, params.feedback_max, out=drive)  # the feedback
    if np.ndim(inhibition) or inhibition:
        drive *= 1.0 - inhibition
    drive -= 1.0
    drive *= params.ktr_dt
    np.exp(drive, out=drive)
    prolif = drive
    prolif *= state.prolif  # the pool after exponential growth at rate ktr (drive - 1)
    np.minimum(prolif, pool_max * params.pool_ss, out=prolif)
    new_transit, circ = _mature(state.transit, state.circ, state.prolif, params)
    np.maximum(circ, 0.5, out=circ)
    return PlateletState(prolif, new_transit, circ)


def _mature(
    transit: list[np.ndarray], circ: np.ndarray, upstream: np.ndarray, params: PlateletParams
) -> tuple[list[np.ndarray], np.ndarray]:
    """One exponential-Euler step of the transit chain and the circulation, fed by `upstream`
    (each compartment relaxes towards the one before it; the last feeds the circulation)."""
    new_transit = []
    for compartment in transit:
        new = compartment - upstream
        new *= params.decay_tr
        new += upstream
        new_transit.append(new)
        upstream = compartment
    target = params.transfer * upstream
    circ = circ - target
    circ *= params.decay_circ
    circ += target
    return new_transit, circ


def advance_drug(
    drug: DrugState,
    params: PlateletParams,
    stimulation: np.ndarray,
    pool: np.ndarray,
) -> DrugState:
    """One step of the platelets added by hetrombopag (linear, so never negative).

    The drug's added output `stimulation x pool` (stimulation >= 0, pool: the patient's own
    proliferating pool, so a marrow at its nadir gains little) enters the first transit
    compartment and matures with the patient's own rate constants; `params`, `stimulation` and
    `pool` are given for the rows of `drug`.
    """
    new_transit, circ = _mature(drug.transit, drug.circ, stimulation * pool, params)
    return DrugState(new_transit, circ)


def episode_envelope(
    days_since_index: np.ndarray,
    duration_days: float,
    onset_tau: float,
    offset_tau: float,
) -> np.ndarray:
    """Time course (0..1) of the drug's effect: rises with `onset_tau`, decays after the course.

    Zero before the index date (negative `days_since_index`).
    """
    tau = days_since_index
    during = 1.0 - np.exp(-np.clip(tau, 0.0, duration_days) / onset_tau)
    after = np.exp(-np.clip(tau - duration_days, 0.0, None) / offset_tau)
    return np.where(tau >= 0.0, during * after, 0.0)


def hetrombopag_stimulation(
    sensitivity_fixed: np.ndarray, latent: np.ndarray, omega: float, cap: float, ceiling: float
) -> np.ndarray:
    """Maximal added platelet output per unit of pool, >= 0: the fixed part (marrow reserve,
    exposure, frailty) times the patient's unexplained variation (a logistic function of
    `omega x latent`, 1 at latent 0 and below `cap`), saturating below `ceiling` (a marrow
    cannot make more than so many times its own platelets): s x ceiling / (ceiling + s)."""
    raw = sensitivity_fixed * cap / (1.0 + (cap - 1.0) * np.exp(-omega * latent))
    return raw * ceiling / (ceiling + raw)
