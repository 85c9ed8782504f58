"""The TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) and where the report fills it.

27 main items with 52 sub-items, in eight sections. Item texts are short paraphrases; the
published statement and its explanation-and-elaboration paper are the reference.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TripodItem:
    """One TRIPOD+AI sub-item.

    Attributes:
        item: identifier as published ("3b", "12e").
        section: checklist section (Title, Abstract, Introduction, Methods, Open science, ...).
        topic: the item's topic.
        applies: "D;E", "D" (development only) or "E" (evaluation only).
        text: short paraphrase of what must be reported.
    """

    item: str
    section: str
    topic: str
    applies: str
    text: str

    @property
    def main_item(self) -> int:
        """The main item number (1..27)."""
        return int("".join(ch for ch in self.item if ch.isdigit()))


@dataclass(frozen=True)
class ReportCoverage:
    """Where this report documents an item, and how completely.

    Attributes:
        anchor: id of the report element holding the evidence.
        extent: "full" or "partial" (the authors must add to it).
        note: what the report shows, and what the authors must add if partial.
    """

    anchor: str
    extent: str
    note: str


def _items() -> tuple[TripodItem, ...]:
    rows = [
        (
            "1",
            "Title",
            "Title",
            "D;E",
            "Identify the study as developing or evaluating a multivariable prediction model, the "
            "target population and the outcome predicted.",
        ),
        ("2", "Abstract", "Abstract", "D;E", "Follow the TRIPOD+AI for Abstracts checklist."),
        (
            "3a",
            "Introduction",
            "Background",
            "D;E",
            "Healthcare context (diagnostic or prognostic), rationale, and existing models.",
        ),
        (
            "3b",
            "Introduction",
            "Background",
            "D;E",
            "Target population and intended purpose in the care pathway, and intended users.",
        ),
        (
            "3c",
            "Introduction",
            "Background",
            "D;E",
            "Known health inequalities between sociodemographic groups.",
        ),
        (
            "4",
            "Introduction",
            "Objectives",
            "D;E",
            "Study objectives, including whether development, evaluation, or both.",
        ),
        (
            "5a",
            "Methods",
            "Data",
            "D;E",
            "Sources of data for development and evaluation, rationale, and representativeness.",
        ),
        (
            "5b",
            "Methods",
            "Data",
            "D;E",
            "Dates of the participant data: start and end of accrual, end of follow-up.",
        ),
        (
            "6a",
            "Methods",
            "Participants",
            "D;E",
            "Study setting, including the number and location of centres.",
        ),
        ("6b", "Methods", "Participants", "D;E", "Eligibility criteria for participants."),
        (
            "6c",
            "Methods",
            "Participants",
            "D;E",
            "Treatments received and how they were handled in development or evaluation.",
        ),
        (
            "7",
            "Methods",
            "Data preparation",
            "D;E",
            "Data pre-processing and quality checking, and whether similar across groups.",
        ),
        (
            "8a",
            "Methods",
            "Outcome",
            "D;E",
            "Outcome definition and time horizon, how and when assessed, rationale, consistency "
            "across sociodemographic groups.",
        ),
        (
            "8b",
            "Methods",
            "Outcome",
            "D;E",
            "Qualifications and demographics of outcome assessors, if assessment is subjective.",
        ),
        ("8c", "Methods", "Outcome", "D;E", "Actions to blind outcome assessment."),
        (
            "9a",
            "Methods",
            "Predictors",
            "D",
            "Choice of initial predictors and any pre-selection before model building.",
        ),
        (
            "9b",
            "Methods",
            "Predictors",
            "D;E",
            "Definition of all predictors, how and when measured (and blinding).",
        ),
        (
            "9c",
            "Methods",
            "Predictors",
            "D;E",
            "Qualifications and demographics of predictor assessors, if measurement is subjective.",
        ),
        (
            "10",
            "Methods",
            "Sample size",
            "D;E",
            "How the study size was arrived at and why it suffices, with any calculation.",
        ),
        (
            "11",
            "Methods",
            "Missing data",
            "D;E",
            "How missing data were handled, and reasons for omitting data.",
        ),
        (
            "12a",
            "Methods",
            "Analytical methods",
            "D",
            "How the data were used for development and evaluation, including partitioning.",
        ),
        (
            "12b",
            "Methods",
            "Analytical methods",
            "D",
            "How predictors were handled (functional form, rescaling, transformation).",
        ),
        (
            "12c",
            "Methods",
            "Analytical methods",
            "D",
            "Type of model, rationale, all building steps including tuning, and internal "
            "validation.",
        ),
        (
            "12d",
            "Methods",
            "Analytical methods",
            "D;E",
            "Heterogeneity of parameters and performance across clusters (e.g. hospitals).",
        ),
        (
            "12e",
            "Methods",
            "Analytical methods",
            "D;E",
            "All measures and plots used to evaluate performance, and to compare models.",
        ),
        (
            "12f",
            "Methods",
            "Analytical methods",
            "E",
            "Any model updating (e.g. recalibration) arising from the evaluation.",
        ),
        (
            "12g",
            "Methods",
            "Analytical methods",
            "E",
            "For evaluation, how the model predictions were calculated.",
        ),
        (
            "13",
            "Methods",
            "Class imbalance",
            "D;E",
            "Any class-imbalance methods, why and how, and any recalibration after them.",
        ),
        ("14", "Methods", "Fairness", "D;E", "Approaches used to address model fairness."),
        (
            "15",
            "Methods",
            "Model output",
            "D",
            "Output of the model (probabilities, classes); thresholds and how they were chosen.",
        ),
        (
            "16",
            "Methods",
            "Training versus evaluation",
            "D;E",
            "Differences between development and evaluation data (setting, eligibility, outcome, "
            "predictors).",
        ),
        (
            "17",
            "Methods",
            "Ethical approval",
            "D;E",
            "Ethics committee approval and informed consent or waiver.",
        ),
        ("18a", "Open science", "Funding", "D;E", "Source of funding and role of the funders."),
        (
            "18b",
            "Open science",
            "Conflicts of interest",
            "D;E",
            "Conflicts of interest and financial disclosures.",
        ),
        ("18c", "Open science", "Protocol", "D;E", "Where the protocol can be accessed, if any."),
        ("18d", "Open science", "Registration", "D;E", "Study registration, or none."),
        ("18e", "Open science", "Data sharing", "D;E", "Availability of the study data."),
        ("18f", "Open science", "Code sharing", "D;E", "Availability of the analytical code."),
        (
            "19",
            "Patient and public involvement",
            "Patient and public involvement",
            "D;E",
            "Any patient and public involvement, or none.",
        ),
        (
            "20a",
            "Results",
            "Participants",
            "D;E",
            "Flow of participants, with and without the outcome; follow-up. A diagram may help.",
        ),
        (
            "20b",
            "Results",
            "Participants",
            "D;E",
            "Characteristics overall and per source: dates, key predictors, treatments, sample "
            "size, events, follow-up, missing data; differences across demographic groups.",
        ),
        (
            "20c",
            "Results",
            "Participants",
            "E",
            "For evaluation, comparison with the development data of important predictors.",
        ),
        (
            "21",
            "Results",
            "Model development",
            "D;E",
            "Number of participants and outcome events in each analysis.",
        ),
        (
            "22",
            "Results",
            "Model specification",
            "D",
            "Details of the full model (formula, code, object, API) to allow predictions and "
            "third-party evaluation, and any access restrictions.",
        ),
        (
            "23a",
            "Results",
            "Model performance",
            "D;E",
            "Performance estimates with confidence intervals, including key subgroups; plots.",
        ),
        (
            "23b",
            "Results",
            "Model performance",
            "D;E",
            "Heterogeneity of performance across clusters, if examined.",
        ),
        (
            "24",
            "Results",
            "Model updating",
            "E",
            "Results of any model updating, with the updated model and its performance.",
        ),
        (
            "25",
            "Discussion",
            "Interpretation",
            "D;E",
            "Overall interpretation, including fairness, in the context of previous studies.",
        ),
        (
            "26",
            "Discussion",
            "Limitations",
            "D;E",
            "Limitations (representativeness, sample size, overfitting, missing data) and effects.",
        ),
        (
            "27a",
            "Discussion",
            "Usability in current care",
            "D",
            "How poor-quality or unavailable input data should be assessed and handled in use.",
        ),
        (
            "27b",
            "Discussion",
            "Usability in current care",
            "D",
            "Whether users interact with input data or the model, and the expertise required.",
        ),
        (
            "27c",
            "Discussion",
            "Usability in current care",
            "D;E",
            "Next steps for research on applicability and generalisability.",
        ),
    ]
    return tuple(TripodItem(*row) for row in rows)


TRIPOD_AI_ITEMS: tuple[TripodItem, ...] = _items()

# What the software can document from a training run. Items absent here are for the authors.
REPORT_COVERAGE: dict[str, ReportCoverage] = {
    "3b": ReportCoverage(
        "intended-use", "full", "Target population, place in the pathway and intended users."
    ),
    "5b": ReportCoverage(
        "cohort", "partial", "Index-date range of the episodes; authors add end of follow-up."
    ),
    "6a": ReportCoverage(
        "cohort", "partial", "Number of sites; authors describe the care setting and location."
    ),
    "6b": ReportCoverage(
        "attrition",
        "partial",
        "Exclusions applied by the software (no baseline PLT, no outcome); authors add the "
        "clinical eligibility criteria.",
    ),
    "6c": ReportCoverage(
        "table1",
        "partial",
        "Hetrombopag dose and regimen exposure as predictors; authors add co-treatments.",
    ),
    "7": ReportCoverage(
        "predictors",
        "partial",
        "Unit normalisation, as-of-index-date features and validation by the cohort contract.",
    ),
    "8a": ReportCoverage("label", "full", "Response definition, horizon and assessment from PLT."),
    "9b": ReportCoverage("predictors", "full", "Name, unit, definition and clinical group."),
    "10": ReportCoverage("sample-size", "full", "Riley criteria for the development sample."),
    "11": ReportCoverage(
        "table1", "full", "Missingness per predictor; NaN kept, no imputation; exclusions counted."
    ),
    "12a": ReportCoverage(
        "model-spec", "full", "Patient-grouped, stratified, repeated cross-validation."
    ),
    "12b": ReportCoverage(
        "model-spec", "full", "Gradient-boosted trees on raw values; monotone constraints."
    ),
    "12c": ReportCoverage(
        "model-spec", "full", "Model type, hyper-parameters, tuning, validation."
    ),
    "12d": ReportCoverage(
        "subgroups", "partial", "Performance by site where the cohort has sites."
    ),
    "12e": ReportCoverage(
        "performance",
        "full",
        "AUROC, Brier, calibration slope/intercept, O:E, calibration plot, decision curve.",
    ),
    "13": ReportCoverage(
        "model-spec", "partial", "Hyper-parameters show any class weighting; none otherwise."
    ),
    "14": ReportCoverage(
        "subgroups", "partial", "Performance by sociodemographic subgroup; authors state approach."
    ),
    "15": ReportCoverage(
        "model-spec", "full", "Calibrated probability of response and the risk-band thresholds."
    ),
    "20a": ReportCoverage("attrition", "full", "Flow of episodes and exclusions with reasons."),
    "20b": ReportCoverage("table1", "full", "Characteristics with missing data, by outcome."),
    "21": ReportCoverage("cohort", "full", "Episodes, patients and events in the analysis."),
    "22": ReportCoverage(
        "model-spec", "partial", "Model name, version, run and URI; authors state access terms."
    ),
    "23a": ReportCoverage(
        "performance",
        "full",
        "Estimates with 95% CIs, subgroups, ROC, calibration, decision curve.",
    ),
    "23b": ReportCoverage("subgroups", "partial", "Performance by site where available."),
    "26": ReportCoverage(
        "limitations", "partial", "Limitations the software can detect; authors discuss the rest."
    ),
    "27a": ReportCoverage(
        "predictors",
        "partial",
        "Missing inputs are allowed (native NaN handling); authors add "
        "guidance on implausible inputs.",
    ),
}
