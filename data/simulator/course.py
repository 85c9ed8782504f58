"""The day-by-day simulation of one shard's candidates: cycles, blood draws, hetrombopag episodes
and the platelet dynamics between them, vectorised over candidates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from data.simulator.candidates import Batch, Streams, _choice
from data.simulator.config import SimulationConfig
from data.simulator.dynamics import (
    DrugState,
    PlateletParams,
    advance,
    advance_drug,
    episode_envelope,
    hetrombopag_stimulation,
    steady_state,
)
from data.simulator.params import (
    ASIAN_SENSITIVE_DRUGS,
    DRUG_EFFECTS,
    GEM_PLATINUM_REGIMENS,
    REGIMEN_TOXICITY,
    REGIMENS,
    HetrombopagModel,
    ModelParameters,
)

MAX_CYCLE_DAYS = 42
_NO_CYCLE = -(10**6)


def _hazard_tables(params: ModelParameters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hazard[asian, regimen, cycle day], reserve loss per cycle, gem+platinum flag)."""
    hazard = np.zeros((2, len(REGIMENS), MAX_CYCLE_DAYS))
    reserve = np.zeros(len(REGIMENS))
    for r, regimen in enumerate(REGIMENS):
        for drug in regimen.drugs:
            effect = DRUG_EFFECTS.get(drug)
            if effect is None:
                continue
            h = -np.log1p(-effect.inhibition)
            asian = getattr(params.platelets, ASIAN_SENSITIVE_DRUGS.get(drug, ""), 1.0)
            for day in effect.days:
                lo, hi = day - 1, min(day - 1 + effect.active_days, MAX_CYCLE_DAYS)
                hazard[0, r, lo:hi] += h
                hazard[1, r, lo:hi] += h * asian
            reserve[r] += effect.reserve_loss
    factor = np.array([REGIMEN_TOXICITY.get(r.code, 1.0) for r in REGIMENS])
    hazard *= params.platelets.potency_scale * factor[None, :, None]
    reserve *= params.platelets.reserve_loss_scale * factor
    gem_plat = np.array([r.code in GEM_PLATINUM_REGIMENS for r in REGIMENS])
    return hazard, reserve, gem_plat


@dataclass
class _Episodes:
    """Episode records collected in the day loop (candidate index, timing, state at index)."""

    rows: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, **arrays: np.ndarray) -> None:
        self.rows.append(arrays)

    def concat(self) -> dict[str, np.ndarray]:
        if not self.rows:
            return {}
        return {k: np.concatenate([r[k] for r in self.rows]) for k in self.rows[0]}


def run_batch(
    batch: Batch,
    config: SimulationConfig,
    streams: Streams,
    tick: Callable[[int], None] | None,
) -> tuple[
    dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]
]:
    """Simulate every candidate of the batch day by day; return visits, cycles, episodes and the
    course-level counts of the whole population (`population_counts`)."""
    prm = config.parameters
    pl, hp, care, lm = prm.platelets, prm.hetrombopag, prm.care, prm.labs
    ev, noise, sv = streams.events, streams.noise, streams.surveillance
    hazard, reserve_loss, gem_plat = _hazard_tables(prm)
    cycle_days = np.array([r.cycle_days for r in REGIMENS])
    dt = pl.dt_days
    steps = round(1.0 / dt)
    n = batch.n
    tx_decay = np.exp(-dt / care.transfused_platelet_mean_life_days)

    cand = np.arange(n)

    def fb_max(reserve: np.ndarray) -> np.ndarray:
        return 1.0 + (pl.feedback_max - 1.0) * reserve**pl.feedback_max_reserve_exponent

    params = PlateletParams(
        batch.ktr,
        batch.kcirc,
        batch.gamma,
        batch.circ0 * batch.reserve0,
        fb_max(batch.reserve0),
        dt,
    )
    state = steady_state(params, pl.n_transit)
    drug = DrugState.zeros(n, pl.n_transit - hp.entry_compartment)
    reserve = batch.reserve0.copy()
    # acute marrow damage of recent cycles (1 = none), recovering with reserve_recovery_days
    damage = np.ones(n)
    damage_recovery = np.exp(-1.0 / pl.reserve_recovery_days)
    k_lines = batch.plan.shape[1]
    # course level (one course = one line's regimen), over the whole population
    course_min = np.full((n, k_lines), np.inf)
    course_started = np.zeros((n, k_lines), dtype=bool)
    s: dict[str, np.ndarray] = {
        "line_idx": np.zeros(n, dtype=np.int64),
        "cycle_no": np.zeros(n, dtype=np.int64),
        "new_line": np.zeros(n, dtype=bool),
        "cur_reg": batch.plan[:, 0].copy(),
        "cycle_start": np.full(n, _NO_CYCLE, dtype=np.int64),
        "last_cycle": np.full(n, _NO_CYCLE, dtype=np.int64),
        "next_due": np.zeros(n, dtype=np.int64),
        "mid_day": np.full(n, -1, dtype=np.int64),
        "nadir_day": np.full(n, -1, dtype=np.int64),
        "recheck": np.full(n, -1, dtype=np.int64),
        "last_draw": np.full(n, -1, dtype=np.int64),
        "pending": np.full(n, -1, dtype=np.int64),
        "base": np.zeros(n),
        "in_ep": np.zeros(n, dtype=bool),
        "ep_index": np.full(n, -1e9),
        "ep_next": np.full(n, -1, dtype=np.int64),
        "ep_k": np.ones(n, dtype=np.int64),
        "ep_end": np.full(n, -1, dtype=np.int64),
        "ep_stop": np.full(n, -1, dtype=np.int64),
        "stim_max": np.zeros(n),
        "transfused": np.zeros(n),
        "n_ep": np.zeros(n, dtype=np.int64),
        "dose_factor": np.ones(n),
        "obs_end": np.full(n, care.horizon_days + 1, dtype=np.int64),
        "active": np.ones(n, dtype=bool),
        "max_ep": 1 + (ev.random(n) < care.repeat_course_share).astype(np.int64),
    }
    visits: list[dict[str, np.ndarray]] = []
    # an empty first part keeps the columns when no cycle starts (tiny batches)
    no_int = np.zeros(0, dtype=np.int64)
    cycles: list[dict[str, np.ndarray]] = [
        dict.fromkeys(("cand", "day", "reg", "line", "cycle"), no_int)
    ]
    episodes = _Episodes()
    plan, plan_cycles, line_gap = batch.plan, batch.plan_cycles, batch.line_gap
    rows = np.arange(n)

    def measure(sel: np.ndarray, rng: np.random.Generator = noise) -> tuple[np.ndarray, np.ndarray]:
        """Measured counts with and without hetrombopag (same noise), and the noise factor."""
        factor = np.exp(lm.plt_noise_sd_log * rng.standard_normal(sel.shape[0]))
        untreated = np.round((state.circ[sel] + s["transfused"][sel]) * factor)
        treated = np.round((state.circ[sel] + s["transfused"][sel] + drug.circ[sel]) * factor)
        return treated, untreated

    def record_visit(
        sel: np.ndarray,
        day: int,
        plt: tuple[np.ndarray, np.ndarray],
        kind: int,
        chem: float,
        rng: np.random.Generator = ev,
    ) -> None:
        s["last_draw"][sel] = day
        treated, untreated = plt
        p_ss = params.kcirc[sel] * params.circ0[sel] / params.ktr[sel]
        c = cand[sel]
        if kind != 2:
            li = s["line_idx"][sel]
            counted = course_started[c, li]
            np.minimum.at(course_min, (c[counted], li[counted]), treated[counted])
        # platelet transfusion after the count (policy of CarePattern)
        risk = rng.random(sel.shape[0]) < care.bleeding_risk_share
        give = (treated < care.transfuse_below_plt) | (
            risk & (treated < care.transfuse_below_plt_bleeding_risk)
        )
        s["transfused"][sel[give]] += care.transfusion_increment_plt
        visits.append(
            {
                "cand": c,
                "day": np.full(sel.shape[0], day, dtype=np.int64),
                "plt": treated,
                "plt_untreated": untreated,
                "transfusion": give,
                "prolif_ratio": state.prolif[sel] / p_ss,
                "kind": np.full(sel.shape[0], kind, dtype=np.int8),
                "chem": rng.random(sel.shape[0]) < chem,
                "reg": s["cur_reg"][sel],
                "line": batch.first_line[c] + s["line_idx"][sel],
            }
        )

    recheck_k = np.asarray(care.recheck_interval_days)
    recheck_p = np.asarray(care.recheck_interval_shares)

    def watch(sel: np.ndarray, day: int, plt: np.ndarray) -> None:
        """After a count of `sel` (not starting hetrombopag): recheck in 2-4 days while low."""
        k = recheck_k[sv.choice(recheck_k.shape[0], size=sel.shape[0], p=recheck_p)]
        s["recheck"][sel] = np.where(plt < care.recheck_below_plt, day + k, -1)

    def may_treat(sel: np.ndarray, day: int) -> np.ndarray:
        """CTIT: a cycle of the current or last line began recently; episodes left."""
        recent = day - s["last_cycle"][sel] <= care.episode_max_days_since_cycle
        return recent & (s["n_ep"][sel] < s["max_ep"][sel]) & (day < s["obs_end"][sel])

    def trigger(sel: np.ndarray, day: int, plt: np.ndarray) -> None:
        s["cycle_start"][sel] = _NO_CYCLE
        s["mid_day"][sel] = -1
        s["nadir_day"][sel] = -1
        s["recheck"][sel] = -1
        lag = (ev.random(sel.shape[0]) >= care.index_lag_shares[0]).astype(np.int64)
        s["pending"][sel] = day + lag
        s["base"][sel] = plt

    def start_episodes(sel: np.ndarray, day: int) -> None:
        m = sel.shape[0]
        c = cand[sel]
        dose = np.where(
            ev.random(m) < hp.dose_mg_shares[0], hp.dose_mg_levels[0], hp.dose_mg_levels[1]
        )
        line = batch.first_line[c] + s["line_idx"][sel]
        base = s["base"][sel]
        reg = s["cur_reg"][sel]
        exposure = _relative_exposure(dose, batch.tbil0[c], batch.crea0[c], batch.liver[c], hp)
        fixed = _stimulation_fixed(
            reserve[sel], damage[sel], exposure, batch.marrow[c], batch.ecog[c], line, hp
        )
        low = base < care.episode_interval_low_below_plt
        shares = np.where(
            low[:, None],
            np.asarray(care.episode_interval_shares_low),
            np.asarray(care.episode_interval_shares_high),
        )
        k = np.asarray(care.episode_interval_days)[_choice(ev, shares)]
        offset = 1 + (ev.random(m) * k).astype(np.int64)
        f_lo, f_hi = care.episode_follow_up_days_range
        follow = ev.integers(f_lo, f_hi + 1, m)
        lost = ev.random(m) < care.episode_lost_to_follow_up
        d_lo, d_hi = care.episode_dropout_day_range
        dropout = ev.random(m) < care.episode_dropout_share
        stop = np.where(dropout, day + ev.integers(d_lo, d_hi + 1, m), day + follow)
        stop = np.where(lost, day, stop)
        s["in_ep"][sel] = True
        s["pending"][sel] = -1
        s["ep_index"][sel] = day
        s["ep_next"][sel] = day + offset
        s["ep_k"][sel] = k
        s["ep_end"][sel] = day + follow
        s["ep_stop"][sel] = stop
        s["stim_max"][sel] = hetrombopag_stimulation(
            fixed, batch.latent[c], hp.latent_omega, hp.latent_cap, hp.stimulation_ceiling
        )
        first = s["n_ep"][sel] == 0
        s["n_ep"][sel] += 1
        s["dose_factor"][sel] = np.maximum(
            s["dose_factor"][sel] * pl.dose_reduction_after_episode, pl.dose_factor_min
        )
        s["next_due"][sel] = np.maximum(s["next_due"][sel], day + follow + 1)
        lo, hi = care.observation_after_first_episode_days
        extra = ev.integers(lo, hi + 1, m)
        s["obs_end"][sel] = np.where(first, day + follow + extra, s["obs_end"][sel])
        episodes.add(
            cand=c,
            day=np.full(m, day, dtype=np.int64),
            number=s["n_ep"][sel].copy(),
            dose=dose,
            line=line,
            reg=reg,
            base=base,
            low=low,
            exposure=exposure,
            stim_fixed=fixed,
            latent=batch.latent[c],
            lost=lost,
            dropout_day=np.where(dropout & ~lost, stop - day, -1),
            days_since_cycle=day - s["last_cycle"][sel],
            prolif=state.prolif[sel].copy(),
            t1=state.transit[0][sel].copy(),
            t2=state.transit[1][sel].copy(),
            t3=state.transit[2][sel].copy(),
            circ=state.circ[sel].copy(),
            dtransit=np.stack([t[sel] for t in drug.transit], axis=1),
            dcirc=drug.circ[sel].copy(),
            transfused=s["transfused"][sel].copy(),
            ktr=params.ktr[sel].copy(),
            kcirc=params.kcirc[sel].copy(),
            gamma=params.gamma[sel].copy(),
            circ0=params.circ0[sel].copy(),
            feedback_max=params.feedback_max[sel].copy(),
            reserve=reserve[sel].copy(),
            damage=damage[sel].copy(),
            circ0_base=batch.circ0[c],
            psi=batch.psi[c],
        )

    for day in range(care.horizon_days):
        if tick is not None:
            tick(day)
        if day % 32 == 0 and day > 0:
            keep = np.flatnonzero(s["active"])
            if keep.shape[0] == 0:
                break
            if keep.shape[0] < 0.85 * cand.shape[0]:
                cand = cand[keep]
                state = state.take(keep)
                drug = drug.take(keep)
                params = params.take(keep)
                reserve = reserve[keep]
                damage = damage[keep]
                s = {key: v[keep] for key, v in s.items()}
                rows = np.arange(keep.shape[0])
        active = s["active"]

        # hetrombopag monitoring visits
        sel = np.flatnonzero(active & s["in_ep"] & (s["ep_next"] == day))
        if sel.size:
            plt = measure(sel)
            seen = (ev.random(sel.shape[0]) >= care.episode_visit_missed) & (
                day <= s["ep_stop"][sel]
            )
            if seen.any():
                record_visit(
                    sel[seen], day, (plt[0][seen], plt[1][seen]), 2, lm.chemistry_share_other
                )
            s["ep_next"][sel] += s["ep_k"][sel]
        done = active & s["in_ep"] & (day >= s["ep_end"])
        s["in_ep"][done] = False

        free = active & ~s["in_ep"] & (s["pending"] < 0)
        # pre-cycle blood count and decision
        sel = np.flatnonzero(free & (s["next_due"] == day))
        if sel.size:
            plt = measure(sel)
            record_visit(sel, day, plt, 0, lm.chemistry_share_pre_cycle)
            count = plt[0]
            share = np.where(
                count < 50.0, care.treat_share_pre_cycle_below_50, care.treat_share_pre_cycle
            )
            treat = (
                (count < care.trigger_plt) & may_treat(sel, day) & (ev.random(sel.shape[0]) < share)
            )
            go = (count >= care.cycle_start_min_plt) & ~treat
            # a patient never treated here whose count is too low does not start therapy
            never = (s["last_cycle"][sel] == _NO_CYCLE) & ~go
            s["active"][sel[never]] = False
            delay = ~treat & ~go & ~never
            s["next_due"][sel[delay]] = day + care.delay_days
            watch(sel[delay], day, count[delay])
            if treat.any():
                trigger(sel[treat], day, count[treat])
            g = sel[go]
            if g.size:
                nl = s["new_line"][g]
                s["line_idx"][g] += nl
                s["cycle_no"][g] = np.where(nl, 0, s["cycle_no"][g])
                s["new_line"][g] = False
                over = s["line_idx"][g] >= plan.shape[1]
                s["active"][g[over]] = False
                g = g[~over]
                c = cand[g]
                li = s["line_idx"][g]
                course_started[c, li] = True
                reg = plan[c, li]
                s["cur_reg"][g] = reg
                s["cycle_no"][g] += 1
                s["cycle_start"][g] = day
                s["last_cycle"][g] = day
                loss = reserve_loss[reg] * s["dose_factor"][g] * batch.psi[c]
                reserve[g] *= np.exp(-loss)
                damage[g] *= np.exp(-pl.acute_damage_scale * loss)
                r_now = reserve[g] * damage[g]
                params.set_point(g, batch.circ0[c] * r_now, fb_max(r_now))
                last = s["cycle_no"][g] >= plan_cycles[c, li]
                s["new_line"][g] = last
                s["next_due"][g] = day + cycle_days[reg] + np.where(last, line_gap[c, li], 0)
                s["recheck"][g] = -1
                lo, hi = care.mid_cycle_day_range
                mid = ev.random(g.shape[0]) < care.mid_cycle_check_share
                mid_day = day + ev.integers(lo, hi + 1, g.shape[0]) - 1
                s["mid_day"][g] = np.where(mid, mid_day, -1)
                lo, hi = care.nadir_check_day_range
                nadir = sv.random(g.shape[0]) < care.nadir_check_share
                nadir_day = day + sv.integers(lo, hi + 1, g.shape[0]) - 1
                s["nadir_day"][g] = np.where(nadir, nadir_day, -1)
                cycles.append(
                    {
                        "cand": c,
                        "day": np.full(g.shape[0], day, dtype=np.int64),
                        "reg": reg,
                        "line": batch.first_line[c] + li,
                        "cycle": s["cycle_no"][g].copy(),
                    }
                )
        # mid-cycle (nadir) blood count
        free = s["active"] & ~s["in_ep"] & (s["pending"] < 0)
        sel = np.flatnonzero(free & (s["mid_day"] == day))
        if sel.size:
            plt = measure(sel)
            record_visit(sel, day, plt, 1, lm.chemistry_share_other)
            s["mid_day"][sel] = -1
            count = plt[0]
            share = np.where(
                count < 50.0, care.treat_share_pre_cycle_below_50, care.treat_share_mid_cycle
            )
            treat = (
                (count < care.trigger_plt) & may_treat(sel, day) & (ev.random(sel.shape[0]) < share)
            )
            watch(sel[~treat], day, count[~treat])
            if treat.any():
                trigger(sel[treat], day, count[treat])
        # routine nadir counts and rechecks while low: they inform, never trigger
        free = s["active"] & ~s["in_ep"] & (s["pending"] < 0)
        sel = np.flatnonzero(free & ((s["nadir_day"] == day) | (s["recheck"] == day)))
        if sel.size:
            rechecking = s["recheck"][sel] == day
            s["nadir_day"][sel] = np.where(s["nadir_day"][sel] == day, -1, s["nadir_day"][sel])
            plt = measure(sel, sv)
            seen = (sv.random(sel.shape[0]) >= care.recheck_missed) & (s["last_draw"][sel] != day)
            if seen.any():
                record_visit(
                    sel[seen], day, (plt[0][seen], plt[1][seen]), 3, lm.chemistry_share_other, sv
                )
                watch(sel[seen], day, plt[0][seen])
            # a missed recheck is rescheduled; a missed nadir count is not
            again = sel[~seen & rechecking]
            if again.size:
                watch(again, day, np.zeros(again.shape[0]))
        # hetrombopag starts (index date)
        sel = np.flatnonzero(s["active"] & (s["pending"] == day))
        if sel.size:
            start_episodes(sel, day)
        # end of observation
        ended = s["active"] & ~s["in_ep"] & (s["pending"] < 0) & (day >= s["obs_end"])
        s["active"][ended] = False

        # drug exposure of the day, then integrate
        cd = day - s["cycle_start"]
        on = (cd >= 0) & (cd < MAX_CYCLE_DAYS) & s["active"]
        h = np.zeros(rows.shape[0])
        if on.any():
            idx = np.flatnonzero(on)
            c = cand[idx]
            h[idx] = (
                hazard[batch.asian[c].astype(np.int64), s["cur_reg"][idx], cd[idx]]
                * batch.psi[c]
                * s["dose_factor"][idx]
            )
        inhibition = -np.expm1(-h)
        tail = hp.duration_days + 8.0 * hp.offset_tau_days
        since = day - s["ep_index"]
        near = np.flatnonzero((since >= 0.0) & (since < tail))
        stim_near = s["stim_max"][near]
        near_params = params.take(near) if near.size else None
        has_tx = s["transfused"] > 0.0
        for sub in range(steps):
            if near.size:
                envelope = episode_envelope(
                    since[near] + sub * dt,
                    hp.duration_days,
                    hp.onset_tau_days,
                    hp.offset_tau_days,
                )
                part = advance_drug(
                    drug.take(near), near_params, stim_near * envelope, state.prolif[near]
                )
                for j, t in enumerate(part.transit):
                    drug.transit[j][near] = t
                drug.circ[near] = part.circ
            state = advance(state, params, inhibition, pl.pool_max)
            if has_tx.any():
                s["transfused"][has_tx] *= tx_decay
        s["transfused"][s["transfused"] < 0.05] = 0.0
        healing = np.flatnonzero(damage < 0.9999)
        if healing.size:
            damage[healing] = 1.0 - (1.0 - damage[healing]) * damage_recovery
            r_now = reserve[healing] * damage[healing]
            params.set_point(healing, batch.circ0[cand[healing]] * r_now, fb_max(r_now))

    def cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}

    population = _population_counts(batch, course_started, course_min)
    return cat(visits), cat(cycles), episodes.concat(), population


def _population_counts(
    batch: Batch, started: np.ndarray, course_min: np.ndarray
) -> dict[str, np.ndarray]:
    """Courses per regimen (and Asian or not) with their lowest measured PLT below 50, 75, 100."""
    n_reg = len(REGIMENS)
    reg = batch.plan[started]
    asian = np.broadcast_to(batch.asian[:, None], started.shape)[started].astype(np.int64)
    low = course_min[started]
    key = asian * n_reg + reg
    size = 2 * n_reg
    return {
        "courses": np.bincount(key, minlength=size),
        "below_50": np.bincount(key, weights=low < 50, minlength=size).astype(np.int64),
        "below_75": np.bincount(key, weights=low < 75, minlength=size).astype(np.int64),
        "below_100": np.bincount(key, weights=low < 100, minlength=size).astype(np.int64),
        "candidates": np.array([batch.n]),
        "treated": np.array([int(started.any(axis=1).sum())]),
    }


def _relative_exposure(
    dose: np.ndarray,
    tbil: np.ndarray,
    crea: np.ndarray,
    liver_mets: np.ndarray,
    hp: HetrombopagModel,
) -> np.ndarray:
    """Hetrombopag exposure relative to the reference dose in a patient with reference organ
    function: hepatic clearance falls as bilirubin rises (liver metastases add to it), renal
    function adds a smaller share."""
    bilirubin = tbil * np.where(liver_mets, 1.4, 1.0) / hp.bilirubin_reference_umol
    renal = crea / hp.creatinine_reference_umol
    return (
        dose
        / hp.reference_dose_mg
        * bilirubin**hp.exposure_bilirubin_exponent
        * renal**hp.exposure_creatinine_exponent
    )


def _stimulation_fixed(
    reserve: np.ndarray,
    damage: np.ndarray,
    exposure: np.ndarray,
    marrow: np.ndarray,
    ecog: np.ndarray,
    line: np.ndarray,
    hp: HetrombopagModel,
) -> np.ndarray:
    """Smax before the patient's unexplained variation: lasting marrow reserve (prior lines,
    radiotherapy, infiltration, cumulative cycles) and acute damage of the last cycles x
    exposure effect x marrow-infiltration, frailty and pretreatment factors (progenitors left
    after many lines answer less, beyond what the reserve says: Al-Samkari 2021)."""
    e = exposure**hp.exposure_hill
    effect = e / (e + hp.ec50_relative_exposure**hp.exposure_hill)
    return (
        hp.emax_max
        * reserve**hp.reserve_exponent
        * damage**hp.damage_exponent
        * effect
        * np.where(marrow, hp.factor_marrow, 1.0)
        * np.where(ecog >= 2, hp.factor_ecog_ge2, 1.0)
        * hp.factor_per_prior_line ** (line - 1)
    )
