"""Parameters of the cohort simulator: priors, platelets, hetrombopag, care pattern, labs.

Every number here is listed in `data/SIMULATOR.md` with its source or the word "prior" (an
assumption where no publication gave a figure). Change a value here and in that table together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SUBTYPES: tuple[str, ...] = ("HR+/HER2-", "HER2+", "TNBC")
RACES_NON_ASIAN: tuple[str, ...] = ("White", "Black", "Other")


@dataclass(frozen=True)
class PatientPriors:
    """Static clinical characteristics of breast-cancer patients treated with cancer therapy."""

    age_mean_years: float = 50.5
    age_sd_years: float = 11.0
    age_min_years: float = 24.0
    age_max_years: float = 85.0
    male_share: float = 0.005
    subtype_shares: tuple[float, float, float] = (0.55, 0.25, 0.20)
    ecog_shares: tuple[float, float, float, float] = (0.30, 0.52, 0.15, 0.03)
    bone_mets: float = 0.55
    liver_mets: float = 0.35
    marrow_if_bone_mets: float = 0.08
    marrow_if_no_bone_mets: float = 0.01
    splenomegaly: float = 0.03
    splenomegaly_extra_if_liver_mets: float = 0.05
    radiotherapy_if_bone_mets: float = 0.30
    radiotherapy_if_no_bone_mets: float = 0.06
    asian_share_domestic_site: float = 0.985
    asian_share_international_site: float = 0.70
    non_asian_race_shares: tuple[float, float, float] = (0.60, 0.10, 0.30)
    first_observed_line_shares: tuple[float, ...] = (0.45, 0.25, 0.15, 0.10, 0.05)
    observed_lines_max: int = 5


@dataclass(frozen=True)
class PlateletModel:
    """Friberg-type myelosuppression model (days, x10^9/L), log-normal between-patient effects."""

    circ0_median: float = 250.0
    circ0_omega: float = 0.25
    mtt_days_median: float = 6.0
    mtt_omega: float = 0.15
    n_transit: int = 3
    gamma_median: float = 0.10
    gamma_omega: float = 0.20
    feedback_max: float = 2.5
    feedback_max_reserve_exponent: float = 2.0
    pool_max: float = 4.0
    drug_sensitivity_omega: float = 0.7
    potency_scale: float = 0.35
    reserve_loss_scale: float = 1.0
    acute_damage_scale: float = 16.0
    reserve_recovery_days: float = 150.0
    reserve_factor_marrow: float = 0.45
    circ0_factor_splenomegaly: float = 0.70
    reserve_factor_radiotherapy: float = 0.6
    reserve_loss_per_unobserved_line: float = 0.25
    asian_factor_tdm1: float = 1.8
    asian_factor_tdxd: float = 1.5
    dose_reduction_after_episode: float = 0.8
    dose_factor_min: float = 0.6
    dt_days: float = 0.5


@dataclass(frozen=True)
class HetrombopagModel:
    """Hetrombopag: added platelet output S(t) x own pool, S = Smax x envelope(t) >= 0.

    Smax = emax_max x R^reserve_exponent x D^damage_exponent x exposure effect x frailty and
    marrow factors x v(u), with R the lasting marrow reserve, D the acute damage of recent
    cycles, u ~ N(0, 1) the patient's unexplained responsiveness (kept across the patient's
    episodes) and v(u) = cap / (1 + (cap - 1) exp(-latent_omega u)) (1 at u = 0, below `cap`).
    The exposure effect is a sigmoid Emax of the relative exposure (dose / reference dose x
    hepatic and renal factors).
    """

    emax_max: float = 40.0
    reserve_exponent: float = 3.5
    damage_exponent: float = 1.0
    # the drug's added output enters the transit chain at this compartment (0: the first)
    entry_compartment: int = 1
    reference_dose_mg: float = 7.5
    dose_mg_levels: tuple[float, float] = (5.0, 7.5)
    dose_mg_shares: tuple[float, float] = (0.45, 0.55)
    ec50_relative_exposure: float = 1.25
    exposure_hill: float = 3.0
    exposure_bilirubin_exponent: float = 0.4
    exposure_creatinine_exponent: float = 0.3
    bilirubin_reference_umol: float = 9.0
    creatinine_reference_umol: float = 60.0
    factor_marrow: float = 0.5
    factor_ecog_ge2: float = 0.25
    factor_per_prior_line: float = 0.85
    latent_omega: float = 6.0
    latent_cap: float = 4.0
    stimulation_ceiling: float = 8.0
    onset_tau_days: float = 2.0
    offset_tau_days: float = 3.0
    duration_days: int = 14


@dataclass(frozen=True)
class CarePattern:
    """When blood is drawn, when cycles are delayed and when hetrombopag is started."""

    cycle_start_min_plt: float = 100.0
    trigger_plt: float = 75.0
    treat_share_pre_cycle: float = 0.15
    treat_share_pre_cycle_below_50: float = 0.95
    treat_share_mid_cycle: float = 0.4
    delay_days: int = 7
    mid_cycle_check_share: float = 0.4
    mid_cycle_day_range: tuple[int, int] = (7, 13)
    # Routine nadir count (informs, never triggers: the decision waits for the pre-cycle count or
    # a clinically prompted mid-cycle check) and rechecks every 2-4 days while the last measured
    # count is below `recheck_below_plt`, up to the next decision.
    nadir_check_share: float = 0.8
    nadir_check_day_range: tuple[int, int] = (7, 14)
    recheck_below_plt: float = 75.0
    recheck_interval_days: tuple[int, int, int] = (2, 3, 4)
    recheck_interval_shares: tuple[float, float, float] = (0.35, 0.40, 0.25)
    recheck_missed: float = 0.08
    line_gap_days_range: tuple[int, int] = (7, 28)
    index_lag_shares: tuple[float, float] = (0.5, 0.5)
    episode_interval_days: tuple[int, int, int] = (2, 3, 4)
    episode_interval_shares_low: tuple[float, float, float] = (0.50, 0.35, 0.15)
    episode_interval_shares_high: tuple[float, float, float] = (0.25, 0.45, 0.30)
    episode_interval_low_below_plt: float = 50.0
    episode_visit_missed: float = 0.08
    episode_lost_to_follow_up: float = 0.03
    episode_follow_up_days_range: tuple[int, int] = (14, 21)
    repeat_course_share: float = 0.3
    episode_dropout_share: float = 0.08
    episode_dropout_day_range: tuple[int, int] = (3, 12)
    # a count < 75 starts hetrombopag only if a cycle began within this many days (CTIT)
    episode_max_days_since_cycle: int = 56
    # platelet transfusion (CSCO 2018 bleeding-risk bands; policy a prior)
    transfuse_below_plt: float = 10.0
    transfuse_below_plt_bleeding_risk: float = 20.0
    bleeding_risk_share: float = 0.3
    transfusion_increment_plt: float = 25.0
    transfused_platelet_mean_life_days: float = 3.0
    red_cells_below_hgb: float = 70.0
    observation_after_first_episode_days: tuple[int, int] = (21, 240)
    horizon_days: int = 1500


@dataclass(frozen=True)
class LabModel:
    """Measurement noise, other analytes and their missingness."""

    plt_noise_sd_log: float = 0.10
    anc_median: float = 3.6
    anc_omega: float = 0.30
    anc_prolif_exponent: float = 0.8
    anc_noise_sd_log: float = 0.15
    anc_missing: float = 0.08
    lymph_median: float = 1.4
    hgb_mean: float = 112.0
    hgb_sd: float = 11.0
    hgb_per_prior_line: float = -2.5
    hgb_marrow: float = -12.0
    hgb_prolif: float = 8.0
    hgb_noise_sd: float = 4.0
    alt_median: float = 22.0
    alt_omega: float = 0.40
    alt_liver_mets_factor: float = 1.5
    alt_tdm1_factor: float = 1.4
    lab_noise_sd_log: float = 0.18
    ast_to_alt: float = 1.1
    tbil_median: float = 9.0
    tbil_omega: float = 0.30
    tbil_liver_mets_factor: float = 1.4
    crea_median: float = 58.0
    crea_omega: float = 0.18
    crea_per_year_over_50: float = 0.004
    crea_cisplatin_factor: float = 1.1
    crea_noise_sd_log: float = 0.07
    alb_mean: float = 40.5
    alb_sd: float = 2.5
    alb_per_ecog: float = -1.5
    alb_liver_mets: float = -2.0
    alb_marrow: float = -2.0
    alb_per_prior_line: float = -0.5
    alb_noise_sd: float = 1.2
    chemistry_share_pre_cycle: float = 0.75
    chemistry_share_other: float = 0.25
    alb_missing: float = 0.20
    tbil_missing: float = 0.10


@dataclass(frozen=True)
class SiteShift:
    """A hospital unlike the home sites: `ctit simulate --site-shift` (knobs in SIMULATOR.md).

    The default is no shift. `apply(parameters)` returns the parameters of the shifted site:
    `regimen_factors` multiply the regimen-choice weights of the named regimens (regimen mix);
    `lab_check_factor` multiplies the mid-cycle and nadir check shares and `chemistry_factor` the
    chemistry (ALB, TBIL, ...) draw shares (lab sampling frequency); `lab_profile` codes every
    draw with that `LAB_PROFILES` entry (units); `pretreated_shift` moves that share of first
    observed lines one line later and `marrow_factor` multiplies marrow involvement (baseline
    risk); `response_factor` multiplies hetrombopag's maximal effect (response rate).
    """

    regimen_factors: tuple[tuple[str, float], ...] = ()
    lab_check_factor: float = 1.0
    chemistry_factor: float = 1.0
    lab_profile: int | None = None
    pretreated_shift: float = 0.0
    marrow_factor: float = 1.0
    response_factor: float = 1.0

    @classmethod
    def preset(cls) -> SiteShift:
        """The shifted site of the monitoring demo and tests."""
        return cls(
            regimen_factors=(("GP", 3.0), ("GCb", 3.0), ("GT", 2.0), ("T-DXd", 0.5)),
            lab_check_factor=0.4,
            chemistry_factor=0.4,
            lab_profile=1,
            pretreated_shift=0.3,
            marrow_factor=2.0,
            response_factor=0.5,
        )

    def apply(self, parameters: ModelParameters) -> ModelParameters:
        from dataclasses import replace

        pp, care, labs = parameters.patients, parameters.care, parameters.labs
        lines = list(pp.first_observed_line_shares)
        moved = [share * self.pretreated_shift for share in lines[:-1]]
        lines = [s - m for s, m in zip(lines[:-1], moved, strict=True)] + [lines[-1]]
        lines = [s + (moved[i - 1] if i else 0.0) for i, s in enumerate(lines)]
        return replace(
            parameters,
            site=self,
            patients=replace(
                pp,
                first_observed_line_shares=tuple(lines),
                marrow_if_bone_mets=min(1.0, pp.marrow_if_bone_mets * self.marrow_factor),
                marrow_if_no_bone_mets=min(1.0, pp.marrow_if_no_bone_mets * self.marrow_factor),
            ),
            care=replace(
                care,
                mid_cycle_check_share=min(1.0, care.mid_cycle_check_share * self.lab_check_factor),
                nadir_check_share=min(1.0, care.nadir_check_share * self.lab_check_factor),
            ),
            labs=replace(
                labs,
                chemistry_share_pre_cycle=min(
                    1.0, labs.chemistry_share_pre_cycle * self.chemistry_factor
                ),
                chemistry_share_other=min(1.0, labs.chemistry_share_other * self.chemistry_factor),
            ),
            hetrombopag=replace(
                parameters.hetrombopag,
                emax_max=parameters.hetrombopag.emax_max * self.response_factor,
            ),
        )


@dataclass(frozen=True)
class ModelParameters:
    """All parameters of the simulator, grouped by concern."""

    patients: PatientPriors = field(default_factory=PatientPriors)
    platelets: PlateletModel = field(default_factory=PlateletModel)
    hetrombopag: HetrombopagModel = field(default_factory=HetrombopagModel)
    care: CarePattern = field(default_factory=CarePattern)
    labs: LabModel = field(default_factory=LabModel)
    site: SiteShift = field(default_factory=SiteShift)  # no shift unless `SiteShift.apply`


@dataclass(frozen=True)
class DrugEffect:
    """Marrow toxicity of a drug: days given in the cycle, days active, inhibition, reserve loss."""

    days: tuple[int, ...]
    active_days: int
    inhibition: float
    reserve_loss: float


def _daily(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


# Inhibition of platelet-precursor proliferation while the drug is active; ranked by the
# thrombocytopenia incidences of LITERATURE.md (gemcitabine > platinum > T-DM1 > anthracycline >
# sacituzumab govitecan / T-DXd > taxane > CDK4/6 > capecitabine). Absolute values are priors
# calibrated to the cohort targets.
DRUG_EFFECTS: dict[str, DrugEffect] = {
    "gemcitabine": DrugEffect((1, 8), 2, 0.55, 0.020),
    "cisplatin": DrugEffect((1,), 3, 0.40, 0.020),
    "carboplatin": DrugEffect((1,), 3, 0.50, 0.025),
    "epirubicin": DrugEffect((1,), 3, 0.42, 0.015),
    "cyclophosphamide": DrugEffect((1,), 2, 0.25, 0.010),
    "docetaxel": DrugEffect((1,), 2, 0.22, 0.005),
    "paclitaxel": DrugEffect((1,), 2, 0.20, 0.005),
    "nab-paclitaxel": DrugEffect((1, 8, 15), 1, 0.22, 0.005),
    "capecitabine": DrugEffect(_daily(1, 14), 1, 0.06, 0.003),
    "vinorelbine": DrugEffect((1, 8), 2, 0.14, 0.004),
    "eribulin": DrugEffect((1, 8), 2, 0.20, 0.006),
    "trastuzumab emtansine": DrugEffect((1,), 7, 0.40, 0.010),
    "trastuzumab deruxtecan": DrugEffect((1,), 6, 0.20, 0.008),
    "sacituzumab govitecan": DrugEffect((1, 8), 3, 0.22, 0.008),
    "palbociclib": DrugEffect(_daily(1, 21), 1, 0.07, 0.002),
    "dalpiciclib": DrugEffect(_daily(1, 21), 1, 0.07, 0.002),
    "abemaciclib": DrugEffect(_daily(1, 28), 1, 0.045, 0.002),
    "olaparib": DrugEffect(_daily(1, 28), 1, 0.08, 0.004),
}
ASIAN_SENSITIVE_DRUGS: dict[str, str] = {
    "trastuzumab emtansine": "asian_factor_tdm1",
    "trastuzumab deruxtecan": "asian_factor_tdxd",
}


@dataclass(frozen=True)
class Regimen:
    """A breast-cancer regimen as written in the regimens table."""

    code: str
    drugs: tuple[str, ...]
    cycle_days: int
    median_cycles: float


REGIMENS: tuple[Regimen, ...] = (
    Regimen("EC", ("epirubicin", "cyclophosphamide"), 21, 4),
    Regimen("T", ("docetaxel",), 21, 6),
    Regimen("nab-P", ("nab-paclitaxel",), 28, 5),
    Regimen("X", ("capecitabine",), 21, 6),
    Regimen("NX", ("vinorelbine", "capecitabine"), 21, 6),
    Regimen("GP", ("gemcitabine", "cisplatin"), 21, 6),
    Regimen("GCb", ("gemcitabine", "carboplatin"), 21, 6),
    Regimen("GT", ("gemcitabine", "paclitaxel"), 21, 6),
    Regimen("TCb", ("paclitaxel", "carboplatin"), 21, 6),
    Regimen("E", ("eribulin",), 21, 6),
    Regimen("N", ("vinorelbine",), 21, 6),
    Regimen("THP", ("docetaxel", "trastuzumab", "pertuzumab"), 21, 6),
    Regimen("T-DM1", ("trastuzumab emtansine",), 21, 8),
    Regimen("T-DXd", ("trastuzumab deruxtecan",), 21, 9),
    Regimen("PyroX", ("pyrotinib", "capecitabine"), 21, 8),
    Regimen("NH", ("vinorelbine", "trastuzumab"), 21, 6),
    Regimen("SG", ("sacituzumab govitecan",), 21, 6),
    Regimen("Palbo+AI", ("palbociclib", "letrozole"), 28, 12),
    Regimen("Dalpi+F", ("dalpiciclib", "fulvestrant"), 28, 10),
    Regimen("Abema+F", ("abemaciclib", "fulvestrant"), 28, 10),
    Regimen("nab-P+Pembro", ("nab-paclitaxel", "pembrolizumab"), 28, 6),
    Regimen("Olaparib", ("olaparib",), 28, 8),
)
# Toxicity of a regimen relative to the sum of its drugs (hazard and marrow damage), calibrated to
# the per-regimen grade >= 3 rates of LITERATURE.md (e.g. cisplatin + gemcitabine 32.2% against
# paclitaxel + gemcitabine 2.5% in CBCSG006); 1 where no figure is published.
REGIMEN_TOXICITY: dict[str, float] = {
    "GP": 0.6,
    "GCb": 0.5,
    "GT": 0.33,
    "TCb": 0.7,
    "EC": 0.5,
    "X": 1.5,
    "T-DM1": 0.75,
    "T-DXd": 1.0,
    "SG": 0.85,
    "THP": 1.6,
    "PyroX": 1.6,
    "NH": 1.6,
    "NX": 0.7,
    "Palbo+AI": 1.1,
    "Dalpi+F": 1.1,
    "Abema+F": 1.1,
}
GEM_PLATINUM_REGIMENS: frozenset[str] = frozenset({"GP", "GCb"})

# Choice of regimen by subtype and line (1, 2, 3, 4+): prior shaped on Chinese metastatic
# breast-cancer practice (CSCO guidelines; P1-02-12 regimen mix at CTIT onset).
LINE_WEIGHTS: dict[str, tuple[dict[str, float], ...]] = {
    "HR+/HER2-": (
        {
            "Palbo+AI": 0.30,
            "Dalpi+F": 0.10,
            "Abema+F": 0.10,
            "X": 0.10,
            "T": 0.10,
            "nab-P": 0.08,
            "EC": 0.08,
            "NX": 0.04,
            "GCb": 0.017,
            "GP": 0.017,
        },
        {
            "Abema+F": 0.08,
            "X": 0.14,
            "T": 0.08,
            "nab-P": 0.12,
            "EC": 0.06,
            "NX": 0.08,
            "E": 0.08,
            "GCb": 0.024,
            "GP": 0.017,
            "T-DXd": 0.14,
            "N": 0.05,
            "Olaparib": 0.02,
            "SG": 0.05,
        },
        {
            "X": 0.10,
            "nab-P": 0.09,
            "NX": 0.08,
            "E": 0.14,
            "GCb": 0.031,
            "GP": 0.024,
            "GT": 0.05,
            "T-DXd": 0.16,
            "SG": 0.12,
            "N": 0.08,
            "Olaparib": 0.02,
            "T": 0.03,
        },
        {
            "E": 0.16,
            "GCb": 0.034,
            "GP": 0.027,
            "GT": 0.06,
            "T-DXd": 0.15,
            "SG": 0.16,
            "N": 0.12,
            "X": 0.08,
            "nab-P": 0.06,
            "Olaparib": 0.02,
        },
    ),
    "HER2+": (
        {"THP": 0.60, "NH": 0.10, "T-DXd": 0.10, "PyroX": 0.20},
        {"T-DXd": 0.40, "T-DM1": 0.20, "PyroX": 0.30, "NH": 0.10},
        {"T-DM1": 0.30, "T-DXd": 0.20, "PyroX": 0.15, "NH": 0.15, "GCb": 0.034, "E": 0.10},
        {"T-DM1": 0.20, "NH": 0.20, "E": 0.20, "GCb": 0.051, "GP": 0.034, "X": 0.15},
    ),
    "TNBC": (
        {"nab-P+Pembro": 0.25, "GP": 0.085, "TCb": 0.15, "GCb": 0.051, "T": 0.10, "EC": 0.10},
        {"SG": 0.30, "GP": 0.051, "GCb": 0.034, "E": 0.15, "X": 0.10, "nab-P": 0.10, "NX": 0.10},
        {"SG": 0.20, "E": 0.20, "GCb": 0.051, "GP": 0.034, "X": 0.15, "N": 0.10, "T-DXd": 0.14},
        {"E": 0.20, "N": 0.20, "X": 0.20, "GCb": 0.051, "SG": 0.15, "T-DXd": 0.14},
    ),
}

# Laboratory coding per site profile: (test code, unit, factor from the canonical unit).
LOINC = {
    "PLT": "777-3",
    "HGB": "718-7",
    "WBC": "6690-2",
    "ANC": "751-8",
    "ALT": "1742-6",
    "AST": "1920-8",
    "TBIL": "1975-2",
    "CREA": "2160-0",
    "ALB": "1751-7",
}
ANALYTE_ORDER: tuple[str, ...] = ("PLT", "HGB", "WBC", "ANC", "ALT", "AST", "TBIL", "CREA", "ALB")
CANONICAL_UNIT = {
    "PLT": "10*9/L",
    "HGB": "g/L",
    "WBC": "10*9/L",
    "ANC": "10*9/L",
    "ALT": "U/L",
    "AST": "U/L",
    "TBIL": "umol/L",
    "CREA": "umol/L",
    "ALB": "g/L",
}
# profile -> analyte -> (use LOINC code, unit, factor applied to the canonical value, decimals)
LAB_PROFILES: tuple[dict[str, tuple[bool, str, float, int]], ...] = (
    {  # aliases, SI units
        "PLT": (False, "10*9/L", 1.0, 0),
        "HGB": (False, "g/L", 1.0, 0),
        "WBC": (False, "10*9/L", 1.0, 2),
        "ANC": (False, "10*9/L", 1.0, 2),
        "ALT": (False, "U/L", 1.0, 0),
        "AST": (False, "U/L", 1.0, 0),
        "TBIL": (False, "umol/L", 1.0, 1),
        "CREA": (False, "umol/L", 1.0, 0),
        "ALB": (False, "g/L", 1.0, 1),
    },
    {  # LOINC, conventional (US) units
        "PLT": (True, "10*3/uL", 1.0, 0),
        "HGB": (True, "g/dL", 0.1, 1),
        "WBC": (True, "10*3/uL", 1.0, 2),
        "ANC": (True, "10*3/uL", 1.0, 2),
        "ALT": (True, "U/L", 1.0, 0),
        "AST": (True, "U/L", 1.0, 0),
        "TBIL": (True, "mg/dL", 1.0 / 17.104, 2),
        "CREA": (True, "mg/dL", 1.0 / 88.42, 2),
        "ALB": (True, "g/dL", 0.1, 1),
    },
    {  # LOINC, SI units
        "PLT": (True, "10*9/L", 1.0, 0),
        "HGB": (True, "g/L", 1.0, 0),
        "WBC": (True, "10*9/L", 1.0, 2),
        "ANC": (True, "10*9/L", 1.0, 2),
        "ALT": (True, "U/L", 1.0, 0),
        "AST": (True, "U/L", 1.0, 0),
        "TBIL": (True, "umol/L", 1.0, 1),
        "CREA": (True, "umol/L", 1.0, 0),
        "ALB": (True, "g/L", 1.0, 1),
    },
    {  # aliases, platelets per microlitre
        "PLT": (False, "/uL", 1000.0, 0),
        "HGB": (False, "g/L", 1.0, 0),
        "WBC": (False, "10*3/uL", 1.0, 2),
        "ANC": (False, "10*3/uL", 1.0, 2),
        "ALT": (False, "U/L", 1.0, 0),
        "AST": (False, "U/L", 1.0, 0),
        "TBIL": (False, "umol/L", 1.0, 1),
        "CREA": (False, "umol/L", 1.0, 0),
        "ALB": (False, "g/L", 1.0, 1),
    },
)
SITE_CODES: tuple[str, ...] = (
    "BJ1",
    "SH2",
    "GZ3",
    "CD4",
    "WH5",
    "HK6",
    "HZ7",
    "TJ8",
    "XA9",
    "SG10",
)
SITE_SIZE_WEIGHTS: tuple[float, ...] = (0.26, 0.20, 0.16, 0.12, 0.10, 0.07, 0.04, 0.02, 0.02, 0.01)
INTERNATIONAL_SITES: frozenset[str] = frozenset({"HK6", "SG10"})
