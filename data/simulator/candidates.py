"""The candidates of one shard: their random streams, static covariates, latent parameters and
treatment plans (drawn before the day-by-day simulation, which `data.simulator.course` runs)."""

from __future__ import annotations

import numpy as np

from data.simulator.config import SimulationConfig
from data.simulator.params import (
    INTERNATIONAL_SITES,
    LINE_WEIGHTS,
    REGIMENS,
    SITE_CODES,
    SITE_SIZE_WEIGHTS,
    SUBTYPES,
)

_REG_CODES = [r.code for r in REGIMENS]


class Streams:
    """Independent random streams, so adding draws to one concern leaves the others unchanged.

    `surveillance` drives the routine nadir counts and rechecks, which never change a decision:
    the cohort's courses, episodes and oracle are those of the other streams alone.
    """

    def __init__(self, seed: int, batch: int) -> None:
        children = np.random.SeedSequence([seed, batch]).spawn(5)
        self.patients, self.events, self.noise, self.labs, self.surveillance = (
            np.random.default_rng(c) for c in children
        )


def _line_weight_table(factors: tuple[tuple[str, float], ...] = ()) -> np.ndarray:
    """weights[subtype, line bucket (1, 2, 3, 4+), regimen]; `factors` shift a site's mix."""
    table = np.zeros((len(SUBTYPES), 4, len(REGIMENS)))
    for s, subtype in enumerate(SUBTYPES):
        for b, weights in enumerate(LINE_WEIGHTS[subtype]):
            for code, w in weights.items():
                table[s, b, _REG_CODES.index(code)] = w
    for code, factor in factors:  # SiteShift.regimen_factors
        table[:, :, _REG_CODES.index(code)] *= factor
    return table


def _choice(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `probs` (rows need not be normalised)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), probs.shape[1] - 1)


class Batch:
    """Candidates of one batch: static covariates, latent parameters and treatment plans."""

    def __init__(self, n: int, config: SimulationConfig, streams: Streams) -> None:
        prm = config.parameters
        pp, pl = prm.patients, prm.platelets
        rng = streams.patients
        self.n = n
        site_w = np.asarray(SITE_SIZE_WEIGHTS[: config.n_sites])
        self.site = rng.choice(config.n_sites, size=n, p=site_w / site_w.sum())
        intl = np.isin(np.asarray(SITE_CODES)[self.site], list(INTERNATIONAL_SITES))
        self.asian = rng.random(n) < np.where(
            intl, pp.asian_share_international_site, pp.asian_share_domestic_site
        )
        self.race_other = rng.choice(3, size=n, p=np.asarray(pp.non_asian_race_shares))
        self.male = rng.random(n) < pp.male_share
        self.age = np.clip(
            rng.normal(pp.age_mean_years, pp.age_sd_years, n), pp.age_min_years, pp.age_max_years
        )
        self.subtype = rng.choice(3, size=n, p=np.asarray(pp.subtype_shares))
        self.ecog = rng.choice(4, size=n, p=np.asarray(pp.ecog_shares))
        self.bone = rng.random(n) < pp.bone_mets
        self.liver = rng.random(n) < pp.liver_mets
        self.marrow = rng.random(n) < np.where(
            self.bone, pp.marrow_if_bone_mets, pp.marrow_if_no_bone_mets
        )
        self.spleen = rng.random(n) < (
            pp.splenomegaly + pp.splenomegaly_extra_if_liver_mets * self.liver
        )
        self.radiotherapy = rng.random(n) < np.where(
            self.bone, pp.radiotherapy_if_bone_mets, pp.radiotherapy_if_no_bone_mets
        )
        shares = np.asarray(pp.first_observed_line_shares)
        self.first_line = 1 + rng.choice(shares.shape[0], size=n, p=shares / shares.sum())
        span = max(config.n_years * 365 - 365, 30)
        self.start_offset = rng.integers(0, span, n)
        self.birth_jitter = rng.integers(0, 365, n)

        # latent platelet parameters (log-normal between-patient variability)
        z = rng.standard_normal((5, n))
        circ0 = pl.circ0_median * np.exp(pl.circ0_omega * z[0])
        self.circ0 = circ0 * np.where(self.spleen, pl.circ0_factor_splenomegaly, 1.0)
        self.reserve0 = (
            np.exp(-pl.reserve_loss_per_unobserved_line * (self.first_line - 1))
            * np.where(self.marrow, pl.reserve_factor_marrow, 1.0)
            * np.where(self.radiotherapy, pl.reserve_factor_radiotherapy, 1.0)
        )
        mtt = pl.mtt_days_median * np.exp(pl.mtt_omega * z[1])
        self.ktr = (pl.n_transit + 1) / mtt
        # Friberg et al. 2002: circulating cells leave at the transit rate
        self.kcirc = self.ktr.copy()
        self.gamma = pl.gamma_median * np.exp(pl.gamma_omega * z[3])
        self.psi = np.exp(pl.drug_sensitivity_omega * z[4])

        # the patient's unexplained responsiveness to hetrombopag (kept across episodes) and
        # baseline organ function (hepatic and renal clearance of hetrombopag)
        self.latent = rng.standard_normal(n)
        lm = prm.labs
        zo = rng.standard_normal((3, n))
        self.alt0 = lm.alt_median * np.exp(lm.alt_omega * zo[0])
        self.tbil0 = lm.tbil_median * np.exp(lm.tbil_omega * zo[1])
        self.crea0 = (
            lm.crea_median
            * np.exp(lm.crea_omega * zo[2])
            * (1.0 + lm.crea_per_year_over_50 * (self.age - 50.0))
        )

        # treatment plan: one regimen per observed line, no regimen repeated
        k = pp.observed_lines_max
        weights = _line_weight_table(prm.site.regimen_factors)
        used = np.zeros((n, len(REGIMENS)), dtype=bool)
        self.plan = np.empty((n, k), dtype=np.int64)
        self.plan_cycles = np.empty((n, k), dtype=np.int64)
        medians = np.array([r.median_cycles for r in REGIMENS])
        for j in range(k):
            bucket = np.minimum(self.first_line - 1 + j, 3)
            w = weights[self.subtype, bucket] * ~used
            empty = w.sum(axis=1) == 0
            w[empty] = weights[self.subtype[empty], bucket[empty]]
            reg = _choice(rng, w)
            used[np.arange(n), reg] = True
            self.plan[:, j] = reg
            cyc = np.round(medians[reg] * np.exp(0.45 * rng.standard_normal(n)))
            self.plan_cycles[:, j] = np.clip(cyc, 2, 24).astype(np.int64)
        self.line_gap = rng.integers(
            prm.care.line_gap_days_range[0], prm.care.line_gap_days_range[1] + 1, (n, k)
        )
