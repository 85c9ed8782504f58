"""The oracle: each episode's exact probability of response given its pre-index state.

After the index date the simulated course depends on (a) the pre-index state, fixed, and (b) three
sources of randomness drawn fresh at the index date and independent of everything before it: the
episode's responsiveness effect `eta ~ N(0, 1)` (it shifts hetrombopag sensitivity on the logit
scale and the marrow's own production), the monitoring schedule (interval k
in {2, 3, 4} days, first visit on day 1..k, each visit missed independently) and the measurement
noise of each count. Given `eta` and a schedule, the probability that no measured count meets the
default definition (PLT >= 100 or PLT - baseline >= 50 on days 1..14) is a product over visits of
normal probabilities, exactly; the schedule is a finite mixture, summed exactly; `eta` is
integrated by the midpoint rule on its quantiles. The stated error is |p(Q nodes) - p(Q/2 nodes)|.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import ndtr, ndtri

from data.simulator_dynamics import (
    PlateletParams,
    PlateletState,
    advance,
    episode_envelope,
    hetrombopag_emax,
)
from data.simulator_params import CarePattern, HetrombopagModel, LabModel, PlateletModel

HORIZON_DAYS = 14


def quantile_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint rule on the probability scale: the standard-normal quantiles of (j - 1/2) / n.

    Unlike Gauss-Hermite it stays accurate when the response probability jumps from 0 to 1 over
    a narrow range of `eta` (an episode whose course is nearly decided by its state).
    """
    return ndtri((np.arange(n) + 0.5) / n), np.full(n, 1.0 / n)


def _schedules(care: CarePattern) -> list[tuple[int, int, np.ndarray]]:
    """(interval index, interval, visit mask over days 1..14) for every interval and offset."""
    out = []
    for j, k in enumerate(care.episode_interval_days):
        for offset in range(1, k + 1):
            mask = np.zeros(HORIZON_DAYS, dtype=bool)
            mask[np.arange(offset, HORIZON_DAYS + 1, k) - 1] = True
            out.append((j, k, mask))
    return out


def _daily_counts(
    state: PlateletState,
    params: PlateletParams,
    emax: np.ndarray,
    production: np.ndarray,
    hetrombopag: HetrombopagModel,
    platelets: PlateletModel,
) -> np.ndarray:
    """True circulating PLT each morning of days 1..14, shape (rows, 14)."""
    dt = platelets.dt_days
    steps = round(1.0 / dt)
    out = np.empty((state.circ.shape[0], HORIZON_DAYS))
    for day in range(HORIZON_DAYS):
        for sub in range(steps):
            envelope = episode_envelope(
                np.asarray(day + sub * dt),
                hetrombopag.duration_days,
                hetrombopag.onset_tau_days,
                hetrombopag.offset_tau_days,
            )
            state = advance(
                state,
                params,
                0.0,
                emax * envelope,
                np.exp(production * envelope),
                platelets.stimulation_ceiling,
                platelets.pool_max,
            )
        out[:, day] = state.circ
    return out


def oracle_probabilities(
    state: PlateletState,
    params: PlateletParams,
    logit_fixed: np.ndarray,
    emax_cap: np.ndarray,
    production_fixed: np.ndarray,
    baseline_plt: np.ndarray,
    low_interval: np.ndarray,
    hetrombopag: HetrombopagModel,
    care: CarePattern,
    labs: LabModel,
    platelets: PlateletModel,
    nodes: int,
    chunk_rows: int = 24_576,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of response under plt100_or_rise50_d14 and its numerical error, per episode.

    Args:
        state, params: the exact platelet state and rate constants on the morning of the index date.
        logit_fixed: hetrombopag sensitivity (logit scale) before the fresh episode effect `eta`.
        emax_cap: the episode's maximal stimulation (limited by the marrow reserve).
        production_fixed: log-multiplier of proliferation during the episode before `eta`.
        baseline_plt: the measured (rounded) baseline count that the label compares against.
        low_interval: True where the baseline count selects the denser monitoring schedule.
    """
    x_full, w_full = quantile_nodes(nodes)
    x_half, w_half = quantile_nodes(max(nodes // 2, 2))
    x_all = np.concatenate([x_full, x_half])
    n_nodes = x_all.shape[0]
    w_full = w_full / w_full.sum()
    w_half = w_half / w_half.sum()
    schedules = _schedules(care)
    visit_matrix = np.stack([mask for _, _, mask in schedules], axis=1).astype(float)
    interval_index = np.array([j for j, _, _ in schedules])
    interval_days = np.array([k for _, k, _ in schedules], dtype=float)
    miss = care.episode_visit_missed
    n_ep = state.circ.shape[0]
    p_full = np.empty(n_ep)
    p_half = np.empty(n_ep)
    per_chunk = max(chunk_rows // n_nodes, 1)
    for start in range(0, n_ep, per_chunk):
        idx = np.arange(start, min(start + per_chunk, n_ep))
        rep = np.repeat(idx, n_nodes)
        sub_state = state.take(rep)
        sub_params = params.take(rep)
        eta = np.tile(x_all, idx.shape[0])
        emax = hetrombopag_emax(logit_fixed[rep], eta, emax_cap[rep], hetrombopag.eta_omega)
        production = production_fixed[rep] + hetrombopag.production_kappa * eta
        counts = _daily_counts(sub_state, sub_params, emax, production, hetrombopag, platelets)
        counts = counts.reshape(idx.shape[0], n_nodes, HORIZON_DAYS)
        threshold = np.minimum(99.5, baseline_plt[idx] + 49.5)[:, None, None]
        below = ndtr((np.log(threshold) - np.log(counts)) / labs.plt_noise_sd_log)
        log_not_seen = np.log(miss + (1.0 - miss) * below)
        # P(no responding count | eta, schedule) for every schedule at once
        no_response = np.exp(log_not_seen @ visit_matrix)
        shares = np.where(
            low_interval[idx, None],
            np.asarray(care.episode_interval_shares_low),
            np.asarray(care.episode_interval_shares_high),
        )
        weight = shares[:, interval_index] / interval_days
        respond = np.einsum("es,eqs->eq", weight, 1.0 - no_response)
        labelled = weight @ (1.0 - miss ** visit_matrix.sum(axis=0))
        nf = x_full.shape[0]
        p_full[idx] = respond[:, :nf] @ w_full / labelled
        p_half[idx] = respond[:, nf:] @ w_half / labelled
        if progress is not None:
            progress(idx.shape[0])
    return p_full, np.abs(p_full - p_half)
