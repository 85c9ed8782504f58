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
import math
import re
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


# -- plain clinical wording ------------------------------------------------------------------------
# One owner for how a feature is named and its value written, shared by the scoring answers
# (`serving.model`), the clinician page (`/ui/options`) and the reviewer report (`training.report`).

#: Units as people read them; `value_words` omits the ones that are not units.
_UNIT_TEXT = {
    "10*9/L": "×10⁹/L",
    "10*9/L per day": "×10⁹/L per day",
    "10*3/uL": "×10³/µL",
    "umol/L": "µmol/L",
    "0/1": "",
    "count": "",
    "as recorded": "",
    "score 0-5": "",
    "lines": "",
    "cycles": "",
}

_CLASS_WORDS = {
    "platinum": "platinum",
    "gemcitabine": "gemcitabine",
    "anthracycline": "an anthracycline",
    "taxane": "a taxane",
    "antimetabolite": "an antimetabolite",
    "alkylator": "an alkylating agent",
    "vinca": "a vinca alkaloid",
    "eribulin": "eribulin",
    "adc": "an antibody-drug conjugate",
    "cdk46": "a CDK4/6 inhibitor",
    "parp": "a PARP inhibitor",
    "anti_her2": "anti-HER2 therapy",
    "endocrine": "endocrine therapy",
    "immunotherapy": "immunotherapy",
}
_LAB_NAMES = {prefix: name for prefix, name, _unit in LAB_ANALYTES.values()}

_SLOPE_WINDOWS = (*PLT_WINDOWS, PLT_TREND_WINDOW)
#: Short clinical names of the fixed features (no unit, no time anchor; sentence case).
_LABELS: dict[str, str] = {
    "prior_plt_max_d14": "Highest platelet count after the previous start",
    "prior_plt_rise_d14": "Platelet rise after the previous start",
    "days_since_prior_episode": "Days since the previous hetrombopag start",
    **{f"{prefix}_last": f"{name[:1].upper()}{name[1:]}" for prefix, name in _LAB_NAMES.items()},
    **{
        f"{prefix}_days_since": f"Days since the last {name}" for prefix, name in _LAB_NAMES.items()
    },
    f"anc_min_{ANC_MIN_WINDOW}d": f"Lowest neutrophil count in {ANC_MIN_WINDOW} days",
    f"anc_slope_{ANC_SLOPE_WINDOW}d": f"Neutrophil trend over {ANC_SLOPE_WINDOW} days",
    **{f"plt_min_{w}d": f"Lowest platelet count in {w} days" for w in PLT_WINDOWS},
    **{
        f"plt_slope_{w}d": f"Platelet trend over {w} days" for w in (*PLT_WINDOWS, PLT_TREND_WINDOW)
    },
    f"plt_n_{PLT_COUNT_WINDOW}d": f"Platelet counts in {PLT_COUNT_WINDOW} days",
    "plt_change_last": "Change between the last two platelet counts",
    "plt_nadir_cycle": "Lowest platelet count in the current cycle",
    "plt_pre_cycle": "Platelet count before the current cycle",
    "n_lines": "Treatment line",
    "cycles_current_line": "Cycles in the current line",
    "days_since_last_dose": "Days since the latest cycle started",
    "cycle_interval_days": "Days between the last two cycle starts",
    **{f"exposed_{c}": f"Ever received {w}" for c, w in _CLASS_WORDS.items()},
    **{f"current_{c}": f"Current regimen includes {w}" for c, w in _CLASS_WORDS.items()},
    "age_years": "Age",
    "subtype": "Breast-cancer subtype",
    "ecog": "ECOG performance status",
    "bone_mets": "Bone metastases",
    "liver_mets": "Liver metastases",
    "marrow_involvement": "Bone-marrow involvement",
    "splenomegaly": "Splenomegaly",
    "prior_radiotherapy": "Prior radiotherapy",
    "race_asian": "Asian ancestry",
    "dose_mg": "Hetrombopag dose",
}
#: Features read from laboratory results: a missing value was not measured (else not recorded).
_MEASURED_GROUPS = ("labs", "platelet_history")

# Value phrases of the fixed features (`{v}` the value, `{s}` a plural s).
_TEMPLATES = {
    "n_lines": "treatment line {v}",
    "cycles_current_line": "{v} cycle{s} in the current line",
    "days_since_last_dose": "latest regimen or cycle started {v} day{s} before the index date",
    "cycle_interval_days": "{v} day{s} between the starts of the last two cycles",
    "ecog": "ECOG performance status {v}",
    "age_years": "age {v} years",
    "dose_mg": "hetrombopag dose {v} mg a day",
    "plt_nadir_cycle": "lowest platelet count in the current cycle {v} ×10⁹/L",
    "plt_pre_cycle": "platelet count before the current cycle {v} ×10⁹/L",
    "plt_change_last": "platelet count changed by {v} ×10⁹/L a day between the last two counts",
    f"plt_n_{PLT_COUNT_WINDOW}d": f"{{v}} platelet count{{s}} in the {PLT_COUNT_WINDOW} days "
    "before the index date",
    f"anc_min_{ANC_MIN_WINDOW}d": f"lowest neutrophil count in the {ANC_MIN_WINDOW} days before "
    "the index date {v} ×10⁹/L",
}
_TRENDS = {
    **{f"plt_slope_{w}d": ("platelet", w) for w in (*PLT_WINDOWS, PLT_TREND_WINDOW)},
    f"anc_slope_{ANC_SLOPE_WINDOW}d": ("neutrophil", ANC_SLOPE_WINDOW),
}
_SMALL = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def unit_text(unit: str) -> str:
    """A contract unit as people read it (`10*9/L` -> `×10⁹/L`); empty for counts, flags, scores."""
    return _UNIT_TEXT.get(unit, unit)


def number_text(value: float) -> str:
    """A value with as many digits as a clinician reads: 32, 4.2, 0.35."""
    if math.isnan(value):
        return "not measured"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def days_text(days: float) -> str:
    """How long before the index date, in words: 'two days before the index date'."""
    if days <= 0:
        return "on the index date"
    n = int(round(days))
    count = _SMALL[n] if n < len(_SMALL) else str(n)
    return f"{count} day{'s' if n != 1 else ''} before the index date"


def feature_label(name: str) -> str:
    """The short clinical name of a feature, untruncated, without its unit."""
    if name in _LABELS:
        return _LABELS[name]
    if "=" in name:
        column, level = name.split("=", 1)
        column = column.removeprefix("static_").replace("_", " ")
        return f"{column[:1].upper()}{column[1:]}: {level}"
    if name.startswith("lab_") and name.endswith("_days_since"):
        return f"Days since the last {name[4:-11]}"
    if name.startswith("lab_") and name.endswith("_last"):
        return f"{name[4:-5]} (last result)"
    if name.startswith("static_"):
        text = name.removeprefix("static_").replace("_", " ")
        return f"{text[:1].upper()}{text[1:]}"
    return name.replace("_", " ")


def lower_first(label: str) -> str:
    """A label inside a sentence: 'platelet count', but 'ECOG ...' and 'Asian ...' stay."""
    first = label.split(" ", 1)[0]
    if first in _PROPER or first.isupper():
        return label
    return label[:1].lower() + label[1:]


_PROPER = ("Asian", "Hetrombopag")


def _group_of(name: str) -> str | None:
    try:
        return spec_of(name).group
    except KeyError:
        return None


def _unit_of(name: str) -> str:
    try:
        return spec_of(name).unit
    except KeyError:
        return ""


def missing_text(name: str) -> str:
    """What a missing value of the feature means: not measured (labs) or not recorded."""
    return "not measured" if _group_of(name) in _MEASURED_GROUPS else "not recorded"


def value_words(name: str, value: float, days_since: float | None = None) -> str:
    """A feature and its value as a short clause, e.g. 'platelet count 32 ×10⁹/L two days before
    the index date', 'current regimen includes gemcitabine', 'platelet trend over the 7 days before
    the index date: not measured (needs two counts on different days)'.

    `days_since` is the age of a last lab value, added to `*_last` features when known.
    """
    label = feature_label(name)
    lower = lower_first(label)
    if value is None or math.isnan(value):
        if "=" in name:
            column = name.split("=", 1)[0].removeprefix("static_").replace("_", " ")
            return f"{column}: {missing_text(name)}"
        if name in _TRENDS:
            analyte, window = _TRENDS[name]
            return (
                f"{analyte} trend over the {window} days before the index date: not measured "
                f"(needs two {analyte} counts on different days)"
            )
        return f"{lower}: {missing_text(name)}"
    unit = _unit_of(name)
    if unit == "0/1" or "=" in name:
        return _flag_words(name, lower, value >= 0.5)
    number = number_text(value)
    if name.endswith("_days_since") and name.removesuffix("_days_since") in _LAB_NAMES:
        return f"last {_LAB_NAMES[name.removesuffix('_days_since')]} {days_text(value)}"
    if name in _TEMPLATES:
        return _TEMPLATES[name].format(v=number, s="" if number == "1" else "s")
    if name in _TRENDS:
        analyte, window = _TRENDS[name]
        return (
            f"{analyte} trend over the {window} days before the index date {value:+.1f} "
            "×10⁹/L a day"
        )
    window = re.match(r"^plt_min_(\d+)d$", name)
    if window:
        return f"lowest platelet count in the {window.group(1)} days before {number} ×10⁹/L"
    text = f"{lower} {number} {unit_text(unit)}".rstrip()
    if name.endswith("_last") and days_since is not None and not math.isnan(days_since):
        text += f" {days_text(days_since)}"
    return text


def _flag_words(name: str, lower: str, present: bool) -> str:
    """A 0/1 feature as a short clause: 'current regimen includes gemcitabine', 'no liver ...'."""
    for prefix, yes, no in (
        ("current_", "current regimen includes {c}", "current regimen without {c}"),
        ("exposed_", "received {c} before", "never received {c}"),
    ):
        if name.startswith(prefix) and name[len(prefix) :] in _CLASS_WORDS:
            return (yes if present else no).format(c=_CLASS_WORDS[name[len(prefix) :]])
    if "=" in name:
        column, level = name.split("=", 1)
        column = column.removeprefix("static_").replace("_", " ")
        return f"{column} {level}" if present else f"{column} not {level}"
    return lower if present else f"no {lower}"


#: Request fields whose clinical features carry another name (one-hot levels, derived flags).
_FIELD_OF_PREFIX = (("subtype=", "subtype"), ("race_", "race"), ("sex_", "sex"), ("site_", "site"))
#: Request fields a clinician may fill under another name, named beside the words.
_FIELD_SOURCES = {"age_years": "age_years or birth_date", "dose_mg": "dose_mg"}


def field_of(feature: str) -> str:
    """The request field a clinical feature comes from (`subtype=TNBC` -> `subtype`)."""
    for prefix, field_name in _FIELD_OF_PREFIX:
        if feature.startswith(prefix):
            return field_name
    return feature


def field_words(field_name: str) -> str:
    """A request field behind clinical features as a clinician reads it, inside a sentence:
    'ECOG performance status', 'breast-cancer subtype', 'age (age_years or birth_date)'."""
    words = lower_first(feature_label(field_name))
    source = _FIELD_SOURCES.get(field_name)
    return f"{words} ({source})" if source else words


def feature_words(name: str) -> dict[str, str]:
    """What the page and the report show of a feature: label, unit as read, description."""
    try:
        spec = spec_of(name)
        unit, description, group = spec.unit, spec.description, spec.group
    except KeyError:
        unit, description, group = "", name.replace("_", " "), "extra"
    return {
        "label": feature_label(name),
        "unit": unit,
        "unit_text": unit_text(unit),
        "description": description,
        "group": group,
        "missing": missing_text(name),
    }


def outcome_words(label_definition: str) -> str:
    """A response definition in words, e.g. 'platelets reach 100 ×10⁹/L, or rise by at least 50
    ×10⁹/L above the baseline, on any day within 14 days of the first dose'."""
    from data.labels import get_definition

    try:
        definition = get_definition(label_definition)
    except ValueError:
        return label_definition
    if definition.given_only:
        return "response as recorded in the cohort's outcomes table"
    parts = []
    if definition.threshold is not None:
        parts.append(f"platelets reach {number_text(definition.threshold)} ×10⁹/L")
    if definition.rise is not None:
        parts.append(
            f"rise by at least {number_text(definition.rise)} ×10⁹/L above the baseline count"
        )
    criteria = ", or ".join(parts) + ("," if len(parts) > 1 else "")
    return (
        f"{criteria} on any day within {definition.horizon_days} days of the first hetrombopag dose"
    )
