"""The declared features: name, unit, description, clinical group and expected direction.

Every column that `features.pipeline` can output is declared here once. Columns whose names depend
on the data (one-hot levels, extra analytes and extra static columns an experiment names) are
declared by a pattern with one `*`; `spec_of` resolves a concrete name to its spec.

`direction` is the expected sign of the feature's effect on the probability of response, given
only where /work/shared/LITERATURE.md supports one (training may impose it as a monotone
constraint, so it is left `None` whenever the literature is silent).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

from data.drugs import DRUG_CLASSES

Group = Literal["labs", "platelet_history", "regimen_history", "clinical", "extra"]
GROUPS: tuple[str, ...] = ("labs", "platelet_history", "regimen_history", "clinical", "extra")


@dataclass(frozen=True)
class FeatureSpec:
    """One declared feature (or, when `name` holds a `*`, a family of data-dependent features)."""

    name: str
    unit: str
    description: str
    group: str
    direction: int | None = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"feature {self.name!r}: unknown group {self.group!r}")
        if self.direction not in (1, -1, None):
            raise ValueError(f"feature {self.name!r}: direction must be +1, -1 or None")

    @property
    def is_pattern(self) -> bool:
        return "*" in self.name


# Canonical analytes (data.units aliases) -> feature prefix, description and unit.
LAB_ANALYTES: MappingProxyType[str, tuple[str, str, str]] = MappingProxyType(
    {
        "PLT": ("plt", "platelet count", "10*9/L"),
        "HGB": ("hgb", "haemoglobin", "g/L"),
        "WBC": ("wbc", "white cell count", "10*9/L"),
        "ANC": ("anc", "absolute neutrophil count", "10*9/L"),
        "ALT": ("alt", "alanine aminotransferase", "U/L"),
        "AST": ("ast", "aspartate aminotransferase", "U/L"),
        "TBIL": ("tbil", "total bilirubin", "umol/L"),
        "CREA": ("crea", "creatinine", "umol/L"),
        "ALB": ("alb", "albumin", "g/L"),
    }
)

# Windows (days before the index day) of the platelet-history family.
PLT_WINDOWS: tuple[int, ...] = (14, 28)
# Window of the short-term platelet slope (the recent trend read from rechecks every 2-4 days).
# A slope only: a 7-day minimum would be another unconstrained level of the count.
PLT_TREND_WINDOW = 7
# Window of the platelet measurement count: the longer history window, so that the count says how
# densely the 28-day slope and minimum are supported.
PLT_COUNT_WINDOW = 28
# Windows of the neutrophil trend (recent myelosuppression of the marrow).
ANC_MIN_WINDOW = 14
ANC_SLOPE_WINDOW = 7

_LAB_DIRECTIONS = {
    # Very low baseline platelets enrich non-responders (Al-Samkari 2021; simulator targets).
    "plt_last": 1,
}

_CLASS_DIRECTIONS = {
    # Gemcitabine and platinum cause the most CIT and enrich non-responders (Kuter 2022; targets).
    "gemcitabine": -1,
    "platinum": -1,
}


def _lab_specs() -> list[FeatureSpec]:
    specs = []
    for prefix, name, unit in LAB_ANALYTES.values():
        last = f"{prefix}_last"
        specs.append(
            FeatureSpec(
                last,
                unit,
                f"last {name} on or before the index date",
                "labs",
                _LAB_DIRECTIONS.get(last),
            )
        )
        specs.append(
            FeatureSpec(
                f"{prefix}_days_since",
                "days",
                f"calendar days from the last {name} measurement to the index date",
                "labs",
            )
        )
    specs += [
        FeatureSpec(
            f"anc_min_{ANC_MIN_WINDOW}d",
            "10*9/L",
            f"lowest absolute neutrophil count in the {ANC_MIN_WINDOW} days before the index date",
            "labs",
        ),
        FeatureSpec(
            f"anc_slope_{ANC_SLOPE_WINDOW}d",
            "10*9/L per day",
            "least-squares slope of the absolute neutrophil count over the "
            f"{ANC_SLOPE_WINDOW} days before the index date (needs two measurements at different "
            "times)",
            "labs",
        ),
    ]
    return specs


def _platelet_specs() -> list[FeatureSpec]:
    specs = []
    for window in PLT_WINDOWS:
        specs.append(
            FeatureSpec(
                f"plt_min_{window}d",
                "10*9/L",
                f"lowest platelet count in the {window} days before the index date",
                "platelet_history",
            )
        )
        specs.append(
            FeatureSpec(
                f"plt_slope_{window}d",
                "10*9/L per day",
                f"least-squares slope of platelet count over the {window} days before the index "
                "date (needs two measurements at different times)",
                "platelet_history",
            )
        )
    specs += [
        FeatureSpec(
            f"plt_slope_{PLT_TREND_WINDOW}d",
            "10*9/L per day",
            f"least-squares slope of platelet count over the {PLT_TREND_WINDOW} days before the "
            "index date (needs two measurements at different times)",
            "platelet_history",
        ),
        FeatureSpec(
            f"plt_n_{PLT_COUNT_WINDOW}d",
            "count",
            f"number of platelet measurements in the {PLT_COUNT_WINDOW} days before the index date",
            "platelet_history",
        ),
        FeatureSpec(
            "plt_change_last",
            "10*9/L per day",
            "last platelet count minus the one before it, per day between them (both within the "
            f"{PLT_COUNT_WINDOW} days before the index date)",
            "platelet_history",
        ),
        FeatureSpec(
            "plt_nadir_cycle",
            "10*9/L",
            "lowest platelet count since the start of the current regimen/cycle",
            "platelet_history",
        ),
        FeatureSpec(
            "plt_pre_cycle",
            "10*9/L",
            "last platelet count on or before the start day of the current regimen/cycle",
            "platelet_history",
        ),
    ]
    return specs


def _regimen_specs() -> list[FeatureSpec]:
    specs = [
        FeatureSpec(
            "n_lines",
            "lines",
            "highest treatment line started on or before the index date (number of distinct "
            "regimens when lines are not recorded)",
            "regimen_history",
            -1,  # heavy pretreatment predicts non-response to TPO-RA (Al-Samkari 2021)
        ),
        FeatureSpec(
            "cycles_current_line",
            "cycles",
            "cycles given in the current line up to the index date",
            "regimen_history",
        ),
        FeatureSpec(
            "days_since_last_dose",
            "days",
            "calendar days from the start of the latest regimen/cycle to the index date",
            "regimen_history",
        ),
        FeatureSpec(
            "cycle_interval_days",
            "days",
            "calendar days between the starts of the last two regimens/cycles before the index "
            "date (a cycle delayed by a low count lengthens it)",
            "regimen_history",
        ),
    ]
    for cls in DRUG_CLASSES:
        specs.append(
            FeatureSpec(
                f"exposed_{cls}",
                "0/1",
                f"ever received a {cls} drug on or before the index date",
                "regimen_history",
                _CLASS_DIRECTIONS.get(cls),
            )
        )
    for cls in DRUG_CLASSES:
        specs.append(
            FeatureSpec(
                f"current_{cls}",
                "0/1",
                f"the current regimen contains a {cls} drug",
                "regimen_history",
                _CLASS_DIRECTIONS.get(cls),
            )
        )
    return specs


def _clinical_specs() -> list[FeatureSpec]:
    return [
        FeatureSpec("age_years", "years", "age at the index date", "clinical"),
        FeatureSpec(
            "ecog",
            "score 0-5",
            "ECOG performance status",
            "clinical",
            -1,  # ECOG >= 2 is a consensus CIT risk factor
        ),
        FeatureSpec(
            "subtype=*",
            "0/1",
            "breast-cancer subtype is this level (one-hot; all NaN when unknown)",
            "clinical",
        ),
        FeatureSpec("bone_mets", "0/1", "bone metastases", "clinical"),
        FeatureSpec("liver_mets", "0/1", "liver metastases", "clinical"),
        FeatureSpec(
            "marrow_involvement",
            "0/1",
            "bone-marrow tumour involvement",
            "clinical",
            -1,  # marrow invasion predicts non-response (Al-Samkari 2021)
        ),
        FeatureSpec("splenomegaly", "0/1", "splenomegaly", "clinical"),
        FeatureSpec(
            "prior_radiotherapy",
            "0/1",
            "prior radiotherapy",
            "clinical",
            -1,  # prior pelvic irradiation predicts non-response (Al-Samkari 2021)
        ),
        FeatureSpec(
            "race_asian",
            "0/1",
            "Asian ancestry (more ADC thrombocytopenia: Rainone 2023, DESTINY-Breast03)",
            "clinical",
        ),
        FeatureSpec("dose_mg", "mg", "hetrombopag daily dose at the start", "clinical"),
    ]


def _prior_specs() -> list[FeatureSpec]:
    """The previous episode's platelet course (features.prior; opt-in family `prior_episode`)."""
    return [
        FeatureSpec(
            "prior_plt_max_d14",
            "10*9/L",
            "highest platelet count in days 1-14 after the patient's previous hetrombopag start, "
            "as seen by the index date",
            "platelet_history",
        ),
        FeatureSpec(
            "prior_plt_rise_d14",
            "10*9/L",
            "that highest count minus the previous episode's baseline platelet count",
            "platelet_history",
        ),
        FeatureSpec(
            "days_since_prior_episode",
            "days",
            "days from the previous hetrombopag start to this index date",
            "platelet_history",
        ),
    ]


def _extra_specs() -> list[FeatureSpec]:
    return [
        FeatureSpec(
            "lab_*_last",
            "as recorded",
            "last value of an extra analyte named by the experiment, on or before the index date",
            "extra",
        ),
        FeatureSpec(
            "lab_*_days_since",
            "days",
            "calendar days from the last measurement of an extra analyte to the index date",
            "extra",
        ),
        FeatureSpec(
            "static_*",
            "as recorded",
            "static column named by the experiment (numeric, 0/1, or one-hot `static_col=level`)",
            "extra",
        ),
    ]


def _build() -> MappingProxyType[str, FeatureSpec]:
    specs = _lab_specs() + _platelet_specs() + _regimen_specs() + _clinical_specs()
    specs += _prior_specs() + _extra_specs()
    registry: dict[str, FeatureSpec] = {}
    for spec in specs:
        if spec.name in registry:
            raise ValueError(f"feature {spec.name!r} declared twice")
        registry[spec.name] = spec
    return MappingProxyType(registry)


REGISTRY: MappingProxyType[str, FeatureSpec] = _build()
_PATTERNS: tuple[FeatureSpec, ...] = tuple(s for s in REGISTRY.values() if s.is_pattern)


def spec_of(name: str) -> FeatureSpec:
    """The declared spec of a concrete feature name (patterns resolved to the concrete name).

    Raises:
        KeyError: the name is not declared.
    """
    spec = REGISTRY.get(name)
    if spec is not None and not spec.is_pattern:
        return spec
    for pattern in _PATTERNS:
        if fnmatch.fnmatchcase(name, pattern.name):
            return replace(pattern, name=name)
    raise KeyError(f"feature {name!r} is not declared in features.registry")


def family_names(group: str) -> list[str]:
    """The fixed (non-pattern) feature names of one group, in declaration order."""
    return [s.name for s in REGISTRY.values() if s.group == group and not s.is_pattern]
