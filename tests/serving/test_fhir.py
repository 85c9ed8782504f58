"""FHIR R4 adapter: bundles from a third-party generator and hand-written ones become the same
records as the cohort contract, and scores come back as schema-valid RiskAssessments."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.cohort import cohort_from_tables
from data.drugs import is_known
from serving.fhir.convert import (
    FhirError,
    drugs_in_text,
    fhir_to_patient_records,
    is_fhir,
    is_index_order,
    resources_in,
    risk_assessment,
    rxnorm_table,
)
from serving.request.records import patient_record_to_tables, validate_record

ROOT = Path(__file__).resolve().parents[1]
FHIR = ROOT / "fixtures" / "fhir"
CAREBUNDLE = sorted((FHIR / "carebundle").glob("*.json"))
AUGMENTED = FHIR / "augmented" / "anaemia-7-0001-ctit.json"
MIXED = FHIR / "handwritten" / "mixed-units.json"
MIXED_RECORD = FHIR / "handwritten" / "mixed-units.record.json"
TODAY = dt.date(2025, 6, 1)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def risk_validator() -> jsonschema.Draft6Validator:
    schema = _load(ROOT / "fixtures" / "schemas" / "fhir.schema.json")
    root = {"$ref": "#/definitions/RiskAssessment", "definitions": schema["definitions"]}
    return jsonschema.Draft6Validator(root)


def _cohort(record: dict):
    clean = copy.deepcopy(record)
    for row in clean["labs"]:
        row.pop("source", None)
    return cohort_from_tables(patient_record_to_tables(clean))


def _frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].sort_values(columns).reset_index(drop=True)


# --------------------------------------------------------------------------- detection


def test_is_fhir_tells_fhir_from_scoring_records() -> None:
    assert is_fhir({"resourceType": "Bundle", "type": "collection"})
    assert is_fhir([{"resourceType": "Patient", "id": "1"}, {"resourceType": "Observation"}])
    assert not is_fhir(_load(MIXED_RECORD))
    assert not is_fhir([])
    assert not is_fhir([{"resourceType": "Patient"}, {"patient_id": "P1"}])
    assert not is_fhir("Bundle")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"resourceType": "Bundle", "type": "history", "entry": []}, "Bundle.type 'history'"),
        (
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"id": "x"}}]},
            "Bundle.entry[0].resource: not a FHIR resource",
        ),
        ({"resourceType": "Practitioner", "id": "d1"}, "no Patient resource"),
        ({"patient": {"patient_id": "P1"}}, "not FHIR JSON"),
    ],
)
def test_bad_input_raises_an_error_naming_where(payload: object, message: str) -> None:
    with pytest.raises(FhirError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fhir_to_patient_records(payload)


# --------------------------------------------------------------------------- generator bundles


@pytest.mark.parametrize("path", CAREBUNDLE, ids=lambda p: p.stem)
def test_generator_bundles_become_valid_records(path: Path) -> None:
    bundle = _load(path)
    records, warnings = fhir_to_patient_records(bundle, today=TODAY)
    assert len(records) == 1
    record = records[0]
    validate_record({k: v for k, v in record.items()})
    resources = {e["fullUrl"]: e["resource"] for e in bundle["entry"] if "fullUrl" in e}
    patient = next(r for r in resources.values() if r["resourceType"] == "Patient")
    assert record["patient"]["birth_date"] == patient["birthDate"]
    assert record["patient"]["sex"] == "F"
    assert record["episode"]["index_date"] == TODAY.isoformat()
    assert any("index date = today (2025-06-01)" in w for w in warnings)
    # every lab row is a laboratory Observation of the bundle, value and UCUM code unchanged
    lab_observations = {
        url: r
        for url, r in resources.items()
        if r["resourceType"] == "Observation"
        and any(c["code"] == "laboratory" for cat in r["category"] for c in cat["coding"])
    }
    assert {row["source"] for row in record["labs"]} == set(lab_observations)
    for row in record["labs"]:
        observation = lab_observations[row["source"]]
        assert row["test"] == observation["code"]["coding"][0]["code"]
        assert row["value"] == observation["valueQuantity"]["value"]
        assert row["unit"] == observation["valueQuantity"]["code"]
    # the generator's platelet count survives the cohort loader in the canonical unit
    plt = next(r for r in lab_observations.values() if r["code"]["coding"][0]["code"] == "777-3")
    labs = _cohort(record).labs
    assert labs.loc[labs["test"] == "PLT", "value"].tolist() == [plt["valueQuantity"]["value"]]


def test_generator_medication_outside_the_drug_table_is_reported_not_a_regimen() -> None:
    records, warnings = fhir_to_patient_records(
        _load(FHIR / "carebundle" / "anaemia-7-0001.json"), today=TODAY
    )
    assert records[0]["regimens"] == []
    assert any("levothyroxine sodium 0.05 MG Oral Tablet" in w for w in warnings)


def test_augmented_generator_bundle_gives_the_ctit_episode() -> None:
    records, warnings = fhir_to_patient_records(_load(AUGMENTED), today=TODAY)
    record = records[0]
    assert record["episode"] == {
        "episode_id": "80401638-20250310",
        "index_date": "2025-03-10",
        "dose_mg": 7.5,
    }
    assert record["patient"]["bone_mets"] is True
    assert "liver_mets" not in record["patient"]
    assert record["regimens"] == [
        {"start_date": "2024-06-03", "drugs": ["docetaxel"], "end_date": "2024-10-20"},
        {"start_date": "2024-11-15", "drugs": ["trastuzumab deruxtecan"], "end_date": "2025-01-30"},
        {"start_date": "2025-02-24", "drugs": ["carboplatin", "gemcitabine"]},
    ]
    cohort = _cohort(record)
    plt = cohort.labs[cohort.labs["test"] == "PLT"]
    # 262 and 88 in 10*3/uL, 61000 /uL -> 61, 38 in 10*3/uL; all x10^9/L
    assert plt["value"].tolist() == [262.0, 88.0, 61.0, 38.0]
    assert not any("index date = today" in w for w in warnings)


# --------------------------------------------------------------------------- hand-written bundle


def test_mixed_units_bundle_equals_the_contract_record_after_loading() -> None:
    records, _ = fhir_to_patient_records(_load(MIXED), today=TODAY)
    expected = _load(MIXED_RECORD)
    got, want = _cohort(records[0]), _cohort(expected)
    columns = ["patient_id", "time", "test", "value", "unit"]
    pd.testing.assert_frame_equal(_frame(got.labs, columns), _frame(want.labs, columns))
    columns = ["patient_id", "start_date", "end_date", "drugs", "classes"]
    pd.testing.assert_frame_equal(_frame(got.regimens, columns), _frame(want.regimens, columns))
    pd.testing.assert_frame_equal(
        got.episodes[["episode_id", "patient_id", "index_date", "age_years", "dose_mg"]],
        want.episodes[["episode_id", "patient_id", "index_date", "age_years", "dose_mg"]],
    )
    for column in ["sex", "birth_date", "race", "ecog", "liver_mets"]:
        assert got.patients[column].tolist() == want.patients[column].tolist(), column
    for column in ["bone_mets", "marrow_involvement"]:  # unknown, not false
        assert column not in got.patients or got.patients[column].isna().all()


def test_mixed_units_bundle_warnings_name_each_resource() -> None:
    records, warnings = fhir_to_patient_records(_load(MIXED), today=TODAY)
    text = "\n".join(warnings)
    assert "Observation/plt-bad-unit: unit 'mmol/L' is not accepted for PLT" in text
    assert "Observation/anc-1: ANC reported as '<0.4'" in text
    assert "Observation/local-1: no LOINC code (local platelet index)" in text
    assert "Condition/cond-marrow-late: marrow_involvement recorded after the index date" in text
    assert "ondansetron 8 mg IV" in text and "zoledronic acid" in text
    sources = {row["source"] for row in records[0]["labs"]}
    assert "Observation/plt-error" not in sources  # entered-in-error
    assert "Observation/hr-1" not in sources  # vital signs are not labs
    # the gemcitabine order of 2025-04-25 is represented by its administration of 04-28
    assert [r["start_date"] for r in records[0]["regimens"]] == [
        "2024-09-02",
        "2025-01-06",
        "2025-04-28",
    ]


def test_fhir_input_and_contract_record_give_the_same_score(scorer) -> None:
    records, _ = fhir_to_patient_records(_load(MIXED), today=TODAY)
    from_fhir = scorer.score(records[0])
    from_record = scorer.score(_load(MIXED_RECORD))
    assert from_fhir["probability"] == from_record["probability"]
    assert from_fhir["interval"] == from_record["interval"]
    assert from_fhir["contributions"] == from_record["contributions"]
    # control: the same bundle with the last platelet count at 90 instead of 34 scores otherwise
    bundle = _load(MIXED)
    for entry in bundle["entry"]:
        if entry["resource"].get("id") == "plt-3":
            entry["resource"]["valueQuantity"]["value"] = 90
    changed, _ = fhir_to_patient_records(bundle, today=TODAY)
    assert scorer.score(changed[0])["probability"] > from_fhir["probability"]


def test_augmented_generator_bundle_scores_like_its_contract_twin(scorer) -> None:
    records, _ = fhir_to_patient_records(_load(AUGMENTED), today=TODAY)
    twin = copy.deepcopy(records[0])
    for row in twin["labs"]:
        row.pop("source")
        if row["test"] == "777-3" and row["unit"] == "/uL":
            row.update(test="PLT", value=row["value"] / 1000, unit="10*9/L")
    assert scorer.score(records[0])["probability"] == scorer.score(twin)["probability"]


# --------------------------------------------------------------------------- rules


def _patient(pid: str = "p1") -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-01-01"}


def _plt(oid: str, pid: str, when: str, value: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "10*9/L"},
    }


def _order(oid: str, status: str, authored: str | None, text: str = "hetrombopag") -> dict:
    order = {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"text": text},
        "subject": {"reference": "Patient/p1"},
    }
    if authored:
        order["authoredOn"] = authored
    return order


def test_index_date_parameter_wins_over_orders_and_draft_wins_over_active() -> None:
    resources = [
        _patient(),
        _order("a", "active", "2025-01-02"),
        _order("d", "draft", "2024-12-30"),
        _order("x", "cancelled", "2025-02-01"),
    ]
    records, warnings = fhir_to_patient_records(resources, today=TODAY)
    assert records[0]["episode"]["index_date"] == "2024-12-30"
    assert any("2 hetrombopag orders" in w and "MedicationRequest/d" in w for w in warnings)
    records, _ = fhir_to_patient_records(resources, index_date="2025-03-01", today=TODAY)
    assert records[0]["episode"]["index_date"] == "2025-03-01"
    with pytest.raises(FhirError, match="index_date"):
        fhir_to_patient_records(resources, index_date="March")


def test_searchset_nested_bundles_duplicates_and_outcomes() -> None:
    observation = _plt("o1", "p1", "2025-03-01T08:00:00Z", 50)
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": observation, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ],
    }
    records, _ = fhir_to_patient_records([_patient(), searchset, observation], today=TODAY)
    assert [row["source"] for row in records[0]["labs"]] == ["Observation/o1"]
    assert records[0]["labs"][0]["time"] == "2025-03-01T08:00:00"
    assert resources_in([searchset, observation]) == [observation]


def test_two_patients_and_a_reference_without_patient_resource() -> None:
    resources = [
        _patient("p1"),
        _patient("p2") | {"gender": "male"},
        _plt("o1", "p1", "2025-03-01", 50),
        _plt("o2", "p2", "2025-03-01", 70),
        _plt("o3", "p9", "2025-03-01", 90),
    ]
    records, warnings = fhir_to_patient_records(resources, index_date="2025-03-02")
    by_id = {r["patient"]["patient_id"]: r for r in records}
    assert [row["value"] for row in by_id["p1"]["labs"]] == [50.0]
    assert [row["value"] for row in by_id["p2"]["labs"]] == [70.0]
    assert by_id["p2"]["patient"]["sex"] == "M"
    assert by_id["p9"]["patient"] == {"patient_id": "p9"}
    assert any(w.startswith("Patient/p9: no Patient resource") for w in warnings)


def test_rxnorm_code_wins_over_contradicting_text_with_a_warning() -> None:
    statement = {
        "resourceType": "MedicationStatement",
        "id": "s1",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "40048",
                    "display": "cisplatin",
                }
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-01-10",
    }
    records, warnings = fhir_to_patient_records([_patient(), statement], index_date="2025-02-01")
    assert records[0]["regimens"] == [{"start_date": "2025-01-10", "drugs": ["carboplatin"]}]
    assert any("RxNorm code says carboplatin but the text says cisplatin" in w for w in warnings)


def test_drug_text_matching_prefers_the_longest_name_and_finds_hetrombopag() -> None:
    assert drugs_in_text("Trastuzumab deruxtecan 5.4 mg/kg") == ["trastuzumab deruxtecan"]
    assert drugs_in_text("T-DM1 then Herceptin") == ["trastuzumab emtansine", "trastuzumab"]
    assert drugs_in_text("gemcitabine + carboplatin (GCb)") == ["gemcitabine", "carboplatin"]
    assert drugs_in_text("Hetrombopag olamine 7.5 mg") == ["hetrombopag"]
    assert drugs_in_text("ondansetron 8 mg") == []
    assert is_index_order(_order("d", "draft", None), ("draft",))
    assert not is_index_order(_order("d", "draft", None, text="eltrombopag"), ("draft",))


def test_rxnorm_table_names_known_drugs_with_unique_codes() -> None:
    table = rxnorm_table()
    codes = [e.rxcui for e in table if e.rxcui]
    assert len(codes) == len(set(codes))
    assert all(code.isdigit() for code in codes)
    assert {e.role for e in table} == {"anticancer", "supportive", "index"}
    for entry in table:
        assert entry.role == "index" or is_known(entry.drug), entry.drug
        if entry.rxcui is None and entry.role != "index":
            assert "text only" in entry.note, entry.drug
    path = Path(__file__).resolve().parents[2] / "serving" / "fhir" / "rxnorm.csv"
    with path.open(encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == ["drug", "rxcui", "role", "note"]


# --------------------------------------------------------------------------- RiskAssessment


def _answer(probability: float = 0.42, band: str = "intermediate") -> dict:
    return {
        "episode_id": "pt-17-20250520",
        "probability": probability,
        "interval": [0.35, 0.5],
        "band": band,
        "top_factors": [{"feature": "plt_last", "text": "platelet count 34 x10^9/L: lowers"}],
        "warnings": [{"code": "stale_lab", "message": "albumin is 9 days old"}],
        "model": {"name": "ctit-response", "version": "4", "label_definition": "plt75_d14"},
    }


def test_risk_assessment_is_valid_fhir_r4_and_carries_the_score(risk_validator) -> None:
    records, _ = fhir_to_patient_records(_load(MIXED), today=TODAY)
    when = dt.datetime(2025, 5, 20, 3, 0, tzinfo=dt.UTC)
    resource = risk_assessment(_answer(), records[0], occurred_at=when)
    errors = [e.message for e in risk_validator.iter_errors(resource)]
    assert errors == []
    assert resource["status"] == "final"
    assert resource["subject"] == {"reference": "Patient/pt-17"}
    assert resource["occurrenceDateTime"] == "2025-05-20T03:00:00Z"
    prediction = resource["prediction"][0]
    assert prediction["probabilityDecimal"] == 0.42
    assert prediction["qualitativeRisk"]["coding"][0]["code"] == "moderate"
    assert "plt75_d14" in prediction["outcome"]["text"]
    assert resource["method"]["coding"][0] == {
        "system": "urn:ctit:model",
        "code": "ctit-response",
        "version": "4",
    }
    # basis: the model-analyte Observations up to the index date (no vitals, no local codes)
    assert [b["reference"] for b in resource["basis"]] == [
        "Observation/plt-1",
        "Observation/plt-2",
        "Observation/plt-3",
        "Observation/hb-1",
        "Observation/alb-1",
        "Observation/crea-1",
        "Observation/anc-1",
    ]
    assert any("albumin is 9 days old" in note["text"] for note in resource["note"])


def test_risk_assessment_from_a_transaction_bundle_names_its_basis_by_display(
    risk_validator,
) -> None:
    records, _ = fhir_to_patient_records(_load(AUGMENTED), today=TODAY)
    resource = risk_assessment(_answer(0.81, "high"), records[0])
    assert not list(risk_validator.iter_errors(resource))
    assert resource["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert all("reference" not in b for b in resource["basis"])
    assert "PLT 38.0 10*3/uL 2025-03-09T08:30:00" in [b["display"] for b in resource["basis"]]


def test_schema_check_catches_a_malformed_risk_assessment(risk_validator) -> None:
    records, _ = fhir_to_patient_records(_load(MIXED), today=TODAY)
    resource = risk_assessment(_answer(), records[0])
    resource["prediction"][0]["probabilityDecimal"] = "0.42"
    resource["probability"] = 0.42
    assert len(list(risk_validator.iter_errors(resource))) >= 2
    with pytest.raises(ValueError, match="outside"):
        risk_assessment(_answer(probability=1.2), records[0])


def test_risk_assessment_of_a_real_score_validates(scorer, risk_validator) -> None:
    records, _ = fhir_to_patient_records(_load(MIXED), today=TODAY)
    answer = scorer.score(records[0])
    resource = risk_assessment(answer, records[0])
    assert not list(risk_validator.iter_errors(resource))
    assert resource["prediction"][0]["probabilityDecimal"] == round(answer["probability"], 4)
    assert resource["method"]["text"] == "ctit-response 7"


# --------------------------------------------------------------------------- robustness

JUNK = [None, 0, -1.5, True, "", "x", "2025-13-45", [], {}, [None], {"a": 1}]


def test_a_resource_with_a_wrongly_typed_element_is_skipped_with_its_place_named() -> None:
    bundle = _load(MIXED)
    for entry in bundle["entry"]:
        if entry["resource"].get("id") == "plt-3":
            entry["resource"]["valueQuantity"]["value"] = "34"
        if entry["resource"].get("id") == "ms-1":
            entry["resource"]["effectivePeriod"] = "2024-09-02"
    records, warnings = fhir_to_patient_records(bundle, today=TODAY)
    assert (
        "Observation/plt-3: malformed Observation (valueQuantity.value: Input should be a valid "
        "number); skipped"
    ) in warnings
    assert any(w.startswith("MedicationStatement/ms-1: malformed") for w in warnings)
    assert "Observation/plt-3" not in {row["source"] for row in records[0]["labs"]}
    assert "paclitaxel" not in {d for r in records[0]["regimens"] for d in r["drugs"]}


def _paths(obj, prefix=()):
    """Every (path) to a value inside nested dicts and lists."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


def _mangle(bundle: dict, path: tuple, junk: object) -> dict:
    out = copy.deepcopy(bundle)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = copy.deepcopy(junk)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_bundles_give_warnings_or_fhir_errors_never_crashes(data) -> None:
    bundle = _load(MIXED) if data.draw(st.booleans()) else _load(AUGMENTED)
    paths = list(_paths(bundle))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        bundle = _mangle(bundle, path, data.draw(st.sampled_from(JUNK)))
        paths = list(_paths(bundle))
        if not paths:
            break
    try:
        records, warnings = fhir_to_patient_records(bundle, today=TODAY)
    except FhirError:
        return
    assert all(isinstance(w, str) for w in warnings)
    for record in records:
        assert set(record) == {"patient", "episode", "labs", "regimens"}
        json.dumps(record)
