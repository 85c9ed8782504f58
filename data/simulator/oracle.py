"""The oracle: each episode's exact probability of response, with and without hetrombopag, given
its pre-index state.

After the index date the simulated course depends on (a) the pre-index state, fixed, and (b)
quantities not observable before the index date: the patient's unexplained responsiveness
`u ~ N(0, 1)` (the oracle integrates over it: a first episode tells nothing about it), the
monitoring schedule (interval k in {2, 3, 4} days, first visit on day 1..k, each visit missed
independently, follow-up that may stop early) and the measurement noise of each count. The
platelets added by hetrombopag are linear in its maximal stimulation Smax, so the counts of every
node of `u` are `own(t) + Smax(u) x unit(t)` from two simulations per episode; untreated is
Smax = 0. Given the counts and a schedule, the probability that no measured count meets the
default definition is a product over visits of normal probabilities, exactly; so is the
probability of being evaluable (a response, or a count on or after day horizon - 4). Schedules
are a finite mixture, summed exactly; `u` is integrated by the midpoint rule on its quantiles.
Platelet transfusions after the index date are not modelled here (see SIMULATOR.md). The stated
error is |p(Q nodes) - p(Q/2 nodes)|.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from data.simulator.dynamics import (
    DrugState,
    PlateletParams,
    PlateletState,
    advance,
    advance_drug,
    episode_envelope,
    hetrombopag_stimulation,
)
from data.simulator.params import (
    CarePattern,
    HetrombopagModel,
    LabModel,
    ModelParameters,
    PlateletModel,
)

HORIZON_DAYS = 14
LATE_FROM_DAY = HORIZON_DAYS - 4


def quantile_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint rule on the probability scale: the standard-normal quantiles of (j - 1/2) / n."""
    return ndtri((np.arange(n) + 0.5) / n), np.full(n, 1.0 / n)


@dataclass(frozen=True)
class Schedules:
    """Every monitoring schedule of days 1..14: an interval k, a first day 1..k and a last day
    (the course's end, or an earlier stop), with its probability.

    A schedule's visits are those of its (k, first day) pair up to its last day, so the
    probability that none of them shows a response is the running product, over the pair's
    visits, of each visit's probability of showing none, read at the last visit on or before the
    last day. Per pair, `days` lists its visit days (0-based) and `respond` / `evaluable`
    (visits, 2) weigh the running product after each visit (for baseline < 50, dense
    monitoring, and otherwise), so that P(respond) = `total` - `respond_before` - sum of
    weighted products, and likewise for evaluable; `*_before` weigh schedules that stop before
    their pair's first visit (product 1). An episode lost before its first visit has no
    schedule (its weight is left out: it is never evaluable).
    """

    days: tuple[np.ndarray, ...]
    respond: tuple[np.ndarray, ...]
    evaluable: tuple[np.ndarray, ...]
    total: np.ndarray
    respond_before: np.ndarray
    evaluable_before: np.ndarray


def schedules(care: CarePattern) -> Schedules:
    """The monitoring schedules of `care` and their probabilities.

    A schedule responds unless no visit does: 1 - Q(last day) with Q the pair's running product.
    It is evaluable unless no visit responds and none is seen on or after `LATE_FROM_DAY`:
    1 - Q(last day) when it plans no visit that late, else 1 - Q(LATE_FROM_DAY - 1) x miss^(late
    visits).
    """
    d_lo, d_hi = care.episode_dropout_day_range
    stops = [(HORIZON_DAYS, 1.0 - care.episode_dropout_share)]
    stops += [(d, care.episode_dropout_share / (d_hi - d_lo + 1)) for d in range(d_lo, d_hi + 1)]
    kept = 1.0 - care.episode_lost_to_follow_up
    miss = care.episode_visit_missed
    all_days, all_respond, all_evaluable = [], [], []
    total, respond_before, evaluable_before = np.zeros(2), np.zeros(2), np.zeros(2)
    for j, k in enumerate(care.episode_interval_days):
        for offset in range(1, k + 1):
            days = np.arange(offset, HORIZON_DAYS + 1, k)
            # weight of the running product on each day (it changes only on visit days)
            respond = np.zeros((HORIZON_DAYS + 1, 2))
            evaluable = np.zeros((HORIZON_DAYS + 1, 2))
            for stop, share in stops:
                w = kept * share / k
                w = np.array(
                    [
                        care.episode_interval_shares_low[j] * w,
                        care.episode_interval_shares_high[j] * w,
                    ]
                )
                total += w
                respond[stop] += w
                late = int(((days >= LATE_FROM_DAY) & (days <= stop)).sum())
                if late == 0:
                    evaluable[stop] += w
                else:
                    evaluable[LATE_FROM_DAY - 1] += w * miss**late
            # the product read on day d is the one after the last visit on or before d
            bounds = np.append(days, HORIZON_DAYS + 1)
            respond_before += respond[: days[0]].sum(axis=0)
            evaluable_before += evaluable[: days[0]].sum(axis=0)
            all_days.append(days - 1)
            all_respond.append(np.add.reduceat(respond, bounds[:-1], axis=0))
            all_evaluable.append(np.add.reduceat(evaluable, bounds[:-1], axis=0))
    return Schedules(
        tuple(all_days),
        tuple(all_respond),
        tuple(all_evaluable),
        total,
        respond_before,
        evaluable_before,
    )


def daily_counts(
    state: PlateletState,
    drug: DrugState,
    transfused: np.ndarray,
    params: PlateletParams,
    marrow: tuple[np.ndarray, np.ndarray, np.ndarray],
    hetrombopag: HetrombopagModel,
    platelets: PlateletModel,
    care: CarePattern,
) -> tuple[np.ndarray, np.ndarray]:
    """True PLT each morning of days 1..14 without hetrombopag, and the platelets added per unit
    of Smax, each shape (rows, 14).

    `marrow` = (untreated set point, lasting reserve, acute damage): the acute damage of the
    last cycles heals day by day, raising the set point, as in the cohort simulation.
    """
    circ0_base, reserve, damage = marrow
    damage = damage.copy()
    healing = np.exp(-1.0 / platelets.reserve_recovery_days)
    rows = np.arange(state.circ.shape[0])
    dt = platelets.dt_days
    steps = round(1.0 / dt)
    n = state.circ.shape[0]
    own = np.empty((n, HORIZON_DAYS))
    unit = np.empty((n, HORIZON_DAYS))
    added = DrugState.zeros(n, len(drug.transit))
    tx_decay = np.exp(-dt / care.transfused_platelet_mean_life_days)
    zero = np.zeros(n)
    for day in range(HORIZON_DAYS):
        for sub in range(steps):
            envelope = episode_envelope(
                np.asarray(day + sub * dt),
                hetrombopag.duration_days,
                hetrombopag.onset_tau_days,
                hetrombopag.offset_tau_days,
            )
            added = advance_drug(added, params, envelope * np.ones(n), state.prolif)
            drug = advance_drug(drug, params, zero, state.prolif)
            state = advance(state, params, 0.0, platelets.pool_max)
            transfused = transfused * tx_decay
        sick = damage < 0.9999
        damage = np.where(sick, 1.0 - (1.0 - damage) * healing, damage)
        r_now = reserve * damage
        params.set_point(
            rows[sick],
            (circ0_base * r_now)[sick],
            (1.0 + (platelets.feedback_max - 1.0) * r_now**platelets.feedback_max_reserve_exponent)[
                sick
            ],
        )
        own[:, day] = state.circ + drug.circ + transfused
        unit[:, day] = added.circ
    return own, unit


def _evaluate(
    counts: np.ndarray, threshold: np.ndarray, sch: Schedules, labs: LabModel, miss: float
) -> tuple[np.ndarray, np.ndarray]:
    """(P(respond), P(evaluable)) for both interval-share sets, shape counts.shape[:-1] + (2,).

    Given the true counts, visit d shows no response with probability
    q_d = miss + (1 - miss) P(noise keeps it below the threshold). A schedule responds with
    1 - prod q_d over its visits; every schedule's product is a running product of its
    (k, first day) pair (`Schedules`).
    """
    lead = counts.shape[:-1]
    # days first: each day's values are contiguous for the running products below
    days_first = np.moveaxis(counts, -1, 0).reshape(HORIZON_DAYS, -1)
    limit = np.broadcast_to(np.moveaxis(threshold, -1, 0), (1, *lead)).reshape(1, -1)
    if labs.plt_noise_sd_log > 0:
        with np.errstate(over="ignore", divide="ignore"):  # a tiny noise gives +-inf: exact
            q = np.log(days_first)
            np.subtract(np.log(limit), q, out=q)
            q /= labs.plt_noise_sd_log
            q = ndtr(q)
    else:  # exact counts: below or not
        q = (days_first < limit).astype(float)
    q *= 1.0 - miss
    q += miss
    respond = np.zeros((2, q.shape[1]))
    evaluable = np.zeros((2, q.shape[1]))
    for days, w_respond, w_evaluable in zip(sch.days, sch.respond, sch.evaluable, strict=True):
        product = q[days[0]].copy()
        for i, day in enumerate(days):
            if i:
                product *= q[day]
            respond += np.multiply.outer(w_respond[i], product)
            evaluable += np.multiply.outer(w_evaluable[i], product)
    respond = (sch.total - sch.respond_before)[:, None] - respond
    evaluable = (sch.total - sch.evaluable_before)[:, None] - evaluable
    # rounding leaves -1e-17 where no schedule can respond
    np.maximum(respond, 0.0, out=respond)
    np.maximum(evaluable, 0.0, out=evaluable)
    return respond.T.reshape(*lead, 2), evaluable.T.reshape(*lead, 2)


def oracle_probabilities(
    state: PlateletState,
    drug: DrugState,
    transfused: np.ndarray,
    params: PlateletParams,
    marrow: tuple[np.ndarray, np.ndarray, np.ndarray],
    stim_fixed: np.ndarray,
    baseline_plt: np.ndarray,
    low_interval: np.ndarray,
    hetrombopag: HetrombopagModel,
    care: CarePattern,
    labs: LabModel,
    platelets: PlateletModel,
    nodes: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_response, p_response_untreated, numerical error) under plt100_or_rise50_d14.

    Args:
        state, drug, transfused: the exact platelet state on the morning of the index date.
        stim_fixed: the episode's Smax before the patient's unexplained variation.
        baseline_plt: the measured (rounded) baseline count that the label compares against.
        low_interval: True where the baseline count selects the denser monitoring schedule.
    """
    x_full, w_full = quantile_nodes(nodes)
    x_half, w_half = quantile_nodes(max(nodes // 2, 2))
    x_all = np.concatenate([x_full, x_half])
    sch = schedules(care)
    miss = care.episode_visit_missed
    own, unit = daily_counts(state, drug, transfused, params, marrow, hetrombopag, platelets, care)
    rows = np.arange(own.shape[0])
    which = np.where(low_interval, 0, 1)
    threshold = np.minimum(99.5, baseline_plt + 49.5)[:, None]
    resp0, eval0 = _evaluate(own, threshold, sch, labs, miss)
    smax = hetrombopag_stimulation(
        stim_fixed[:, None],
        x_all[None, :],
        hetrombopag.latent_omega,
        hetrombopag.latent_cap,
        hetrombopag.stimulation_ceiling,
    )
    counts = own[:, None, :] + smax[:, :, None] * unit[:, None, :]
    resp, evaluable = _evaluate(counts, threshold[:, :, None], sch, labs, miss)
    resp, evaluable = resp[rows, :, which], evaluable[rows, :, which]
    nf = x_full.shape[0]
    p_full = (resp[:, :nf] @ w_full) / (evaluable[:, :nf] @ w_full)
    p_half = (resp[:, nf:] @ w_half) / (evaluable[:, nf:] @ w_half)
    p_untreated = resp0[rows, which] / eval0[rows, which]
    if progress is not None:
        progress(state.circ.shape[0])
    return p_full, p_untreated, np.abs(p_full - p_half)


def episode_probabilities(
    ep: dict[str, np.ndarray], parameters: ModelParameters, nodes: int, chunk: int
) -> dict[str, np.ndarray]:
    """Oracle probabilities (with and without hetrombopag) and their numerical errors of the
    episodes `ep` (the state at the index date that the course simulation records), `chunk`
    episodes at a time."""
    prm = parameters
    n_ep = ep["cand"].shape[0]
    p, p0, err = [], [], []
    for a in range(0, n_ep, chunk):
        c = {k: v[a : a + chunk] for k, v in ep.items()}
        state = PlateletState(c["prolif"], [c["t1"], c["t2"], c["t3"]], c["circ"])
        drug = DrugState(list(c["dtransit"].T), c["dcirc"])
        params = PlateletParams(
            c["ktr"], c["kcirc"], c["gamma"], c["circ0"], c["feedback_max"], prm.platelets.dt_days
        )
        p_chunk, p0_chunk, err_chunk = oracle_probabilities(
            state,
            drug,
            c["transfused"],
            params,
            (c["circ0_base"], c["reserve"], c["damage"]),
            c["stim_fixed"],
            c["base"],
            c["low"],
            prm.hetrombopag,
            prm.care,
            prm.labs,
            prm.platelets,
            nodes,
        )
        p.append(p_chunk)
        p0.append(p0_chunk)
        err.append(err_chunk)
    return {
        "p_response": np.concatenate(p),
        "p_response_untreated": np.concatenate(p0),
        "p_response_se": np.concatenate(err),
    }
