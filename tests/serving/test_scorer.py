"""The Python scoring API: consistency, behaviour (invariance, direction) and record errors."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from data.cohort import load_cohort
from serving.bundle.calibrator import Calibrator
from serving.request.records import RecordError, patient_record_to_tables
from serving.scoring.scorer import Scorer


def _set_baseline(record: dict, value: float) -> dict:
    out = copy.deepcopy(record)
    for lab in out["labs"]:
        if lab["test"] == "777-3":
            lab["value"] = value
    return out


def test_a_patient_scores_the_same_alone_and_inside_a_batch(
    scorer: Scorer, training_records, record
) -> None:
    records, _ = training_records
    alone = scorer.score(record)
    twin = copy.deepcopy(records[4])
    twin["patient"]["patient_id"] = record["patient"]["patient_id"]  # same id, other patient
    batch = scorer.score_batch([records[3], record, twin, records[5]])
    assert [a["record_index"] for a in batch] == [0, 1, 2, 3]
    inside = batch[1]
    assert inside["episode_id"] == alone["episode_id"]
    assert inside["probability"] == alone["probability"]
    assert inside["interval"] == alone["interval"]
    assert inside["contributions"] == alone["contributions"]
    assert inside["warnings"] == alone["warnings"]
    assert batch[2]["probability"] == scorer.score(records[4])["probability"]


def test_the_score_does_not_depend_on_identifiers(scorer: Scorer, record) -> None:
    before = scorer.score(record)
    renamed = copy.deepcopy(record)
    renamed["patient"]["patient_id"] = "someone-else-entirely"
    renamed["episode"]["episode_id"] = "another-episode"
    after = scorer.score(renamed)
    assert after["episode_id"] == "another-episode"
    assert after["probability"] == before["probability"]
    assert after["contributions"] == before["contributions"]


def test_a_higher_baseline_plt_never_lowers_the_score(scorer: Scorer, training_records) -> None:
    records, _ = training_records
    for record in records[:12]:
        scores = [
            scorer.score(_set_baseline(record, value))["probability"]
            for value in (5, 15, 25, 35, 45, 55, 65, 74)
        ]
        assert all(b >= a for a, b in zip(scores, scores[1:], strict=False)), scores
    # The constraint binds on something: across the range the score does move.
    low = scorer.score(_set_baseline(records[0], 5))["probability"]
    high = scorer.score(_set_baseline(records[0], 74))["probability"]
    assert high > low


def test_clear_cut_cases_land_in_the_expected_bands(scorer: Scorer, training_records) -> None:
    records, _ = training_records
    good = _set_baseline(records[0], 72)
    good["patient"]["marrow_involvement"] = False
    good["regimens"] = [dict(good["regimens"][0], drugs=["capecitabine"], line=1)]
    bad = _set_baseline(records[0], 6)
    bad["patient"]["marrow_involvement"] = True
    bad["regimens"] = [dict(bad["regimens"][0], drugs=["gemcitabine", "carboplatin"], line=4)]
    assert scorer.score(good)["probability"] > 0.6
    assert scorer.score(bad)["probability"] < 0.3


def test_cohort_scores_match_the_fast_path(scorer: Scorer, cohort_dir: Path) -> None:
    cohort = load_cohort(cohort_dir)
    answers = scorer.score_cohort(cohort, chunk_size=2)  # several chunks of whole patients
    fast = scorer.predict_cohort(cohort)
    assert [a["episode_id"] for a in answers] == list(cohort.episodes["episode_id"])
    np.testing.assert_allclose(
        [a["probability"] for a in answers],
        fast.loc[[a["episode_id"] for a in answers]].probability,
    )
    whole = scorer.score_cohort(cohort)
    assert [a["probability"] for a in whole] == [a["probability"] for a in answers]
    # E-4 (P-d4) has no PLT in the 3 days up to the index date.
    e4 = next(a for a in answers if a["episode_id"] == "E-4")
    assert "missing_baseline" in {w["code"] for w in e4["warnings"]}


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_chunks_keep_each_patient_whole_and_the_episode_order(cohort_dir: Path, size) -> None:
    from serving.scoring.scorer import _chunks

    cohort = load_cohort(cohort_dir)  # P-a1 has the first and the last episode (E-1, E-5)
    parts = _chunks(cohort, size)
    seen = [list(part.episodes["episode_id"]) for part in parts]
    assert sorted(sum(seen, [])) == sorted(cohort.episodes["episode_id"])
    for part, ids in zip(parts, seen, strict=True):
        order = list(cohort.episodes["episode_id"])
        assert ids == sorted(ids, key=order.index)  # the cohort's order inside a part
        patients = set(part.episodes["patient_id"])
        everyone = cohort.episodes[cohort.episodes["patient_id"].isin(patients)]
        assert sorted(everyone["episode_id"]) == sorted(ids)  # whole patients only
        assert len(ids) <= size or len(patients) == 1
        assert set(part.labs["patient_id"]) <= patients
    assert ["E-1", "E-5"] in [[i for i in ids if i in ("E-1", "E-5")] for ids in seen]


def test_several_episodes_of_one_record(scorer: Scorer, record) -> None:
    second = dict(record["episode"], episode_id="SECOND", index_date="2030-01-01")
    multi = {**{k: v for k, v in record.items() if k != "episode"}}
    multi["episodes"] = [record["episode"], second]
    answers = scorer.score_batch([multi])
    assert [a["episode_id"] for a in answers] == [record["episode"]["episode_id"], "SECOND"]
    assert answers[0]["probability"] == scorer.score(record)["probability"]
    with pytest.raises(RecordError, match="use score_batch"):
        scorer.score(multi)


def test_record_to_tables_keeps_the_contract_shape(record) -> None:
    tables = patient_record_to_tables(record)
    assert tables["patients"][0]["patient_id"] == record["patient"]["patient_id"]
    assert tables["episodes"][0]["patient_id"] == record["patient"]["patient_id"]
    assert tables["regimens"][0]["drugs"] == ";".join(record["regimens"][0]["drugs"])
    assert len(tables["labs"]) == len(record["labs"])
    assert set(tables["labs"][0]) == {"patient_id", "time", "test", "value", "unit"}


@pytest.mark.parametrize(
    ("change", "loc", "reason"),
    [
        (lambda r: r["labs"][2].update(unit="mmol/L"), ["labs", 2, "unit"], "unit"),
        (lambda r: r["labs"][3].update(value=-4), ["labs", 3, "value"], "negative"),
        (lambda r: r["labs"][0].update(value=90000), ["labs", 0, "value"], "impossible"),
        (lambda r: r["episode"].pop("index_date"), ["episode", "index_date"], "Field required"),
        (lambda r: r["labs"][1].update(time="2025-02-30"), ["labs", 1, "time"], "datetime"),
        (lambda r: r["patient"].update(ecog=7), ["patient", "ecog"], "less than or equal to 4"),
        (
            lambda r: r["regimens"][0].update(end_date="2000-01-01"),
            ["regimens", 0],
            "end_date is before start_date",
        ),
    ],
)
def test_bad_records_are_refused_with_the_path_and_reason(
    scorer: Scorer, record, change, loc, reason
) -> None:
    change(record)
    with pytest.raises(RecordError) as caught:
        scorer.score(record)
    errors = caught.value.errors
    assert any(e["loc"] == loc and reason in e["msg"] for e in errors), errors


def test_batch_errors_name_the_record_and_every_problem(scorer: Scorer, training_records) -> None:
    records = copy.deepcopy(training_records[0][:3])
    records[1]["labs"][0]["unit"] = "furlongs"
    records[2]["episode"].pop("index_date")
    with pytest.raises(RecordError) as caught:
        scorer.score_batch(records)
    locs = [e["loc"] for e in caught.value.errors]
    assert [2, "episode", "index_date"] in locs
    records[2]["episode"]["index_date"] = "2025-01-01"
    with pytest.raises(RecordError) as caught:
        scorer.score_batch(records)
    assert [e["loc"] for e in caught.value.errors] == [[1, "labs", 0, "unit"]]
    assert "furlongs" in caught.value.errors[0]["msg"]


def test_an_unknown_subtype_is_kept_and_warned(scorer: Scorer, record) -> None:
    record["patient"]["subtype"] = "HER2+"
    canonical = scorer.score(record)
    record["patient"]["subtype"] = "her2+"  # spelling variant: normalised by the loader
    variant = scorer.score(record)
    assert variant["probability"] == canonical["probability"]
    assert not any(w["code"] == "unseen_category" for w in variant["warnings"])
    record["patient"]["subtype"] = "luminal B"
    codes = {w["code"] for w in scorer.score(record)["warnings"]}
    assert {"input", "unseen_category"} <= codes


def _steep_isotonic() -> Calibrator:
    """An isotonic calibrator with flat stretches and steep ramps between close knots."""
    rng = np.random.default_rng(7)
    p_raw = np.concatenate([rng.uniform(0.01, 0.99, 400), [0.3, 0.3001, 0.3002, 0.9, 0.9001]])
    y = (rng.uniform(size=p_raw.size) < p_raw**2).astype(int)
    y[-5:] = [0, 1, 1, 0, 1]
    return Calibrator("isotonic").fit(p_raw, y)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_the_model_card_carries_the_calibration_curve_for_the_page(
    scorer: Scorer, record, method
) -> None:
    if method == "isotonic":
        model = dataclasses.replace(scorer.model, calibrator=_steep_isotonic())
        scorer = Scorer(model, uri="test")
    calibrator = scorer.model.calibrator
    assert calibrator.method == method
    card = scorer.describe()
    assert card["calibration"] == method
    curve = card["calibration_curve"]
    margin, probability = np.array(curve["margin"]), np.array(curve["probability"])
    assert margin.shape == probability.shape and margin.size >= 241
    assert np.all(np.diff(margin) > 0) and np.all(np.diff(probability) >= 0)
    assert margin[0] <= -12 and margin[-1] >= 12
    # Linear interpolation, clamped at the ends as the page does, stays within 0.002 everywhere.
    dense = np.concatenate([np.linspace(-80, 80, 160_001), np.linspace(-3, 3, 60_001)])
    page = np.interp(dense, margin, probability)
    assert np.abs(page - calibrator.transform_margin(dense)).max() <= 0.002
    # The answers' SHAP base value is a knot: the page's baseline is the calibrator's exactly.
    answer = scorer.score(record)
    base = answer["base_value"]
    assert round(base, 6) in set(curve["margin"])
    assert np.interp(base, margin, probability) == pytest.approx(
        float(calibrator.transform_margin(base)), abs=1e-6
    )
    # The curve at the answer's margin is the answer's probability (within the tolerance).
    assert np.interp(answer["margin"], margin, probability) == pytest.approx(
        answer["probability"], abs=0.002
    )
