"""What the CLI says: the probability table of `score` and `--out -`, fail-fast hints for a
missing registry, the promote refusal, the help text, `--version` and quiet library output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ctit.cli import SUMMARIES, app, ctit_version

ROOT = Path(__file__).parents[1]
REPO = Path(__file__).parents[2]


def _records(fixtures, tmp_path: Path, n: int) -> Path:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(fixtures.synthetic_records(n, seed=8)[0]), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ score


def test_score_prints_a_short_probability_table(runner, fixtures, model_dir, tmp_path) -> None:
    from serving.scoring.scorer import Scorer

    path = _records(fixtures, tmp_path, 3)
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(path)])
    assert result.exit_code == 0, result.output
    answers = Scorer.load(str(model_dir)).score_batch(json.loads(path.read_text()))
    lines = result.stdout.splitlines()
    assert any("Probability" in line and "Interval" in line for line in lines)
    for answer in answers:
        row = next(line for line in lines if answer["episode_id"] in line)
        low, high = answer["interval"]
        assert f"{100 * answer['probability']:.0f}%" in row
        assert f"{100 * low:.0f}% to {100 * high:.0f}%" in row
        assert answer["band"] in row
    assert "scored 3 episodes" in result.output
    assert not list(tmp_path.glob("*.json"))[1:]  # nothing written without --out


def test_score_out_dash_writes_json_alone_to_stdout(runner, fixtures, model_dir, tmp_path):
    path = _records(fixtures, tmp_path, 2)
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(path), "--out", "-"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)  # stdout is the JSON, nothing else
    assert [a["record_index"] for a in answers] == [0, 1]
    assert "Probability" in result.stderr  # the table goes to stderr then


def test_score_table_is_short_for_large_batches(runner, fixtures, model_dir, tmp_path) -> None:
    path = _records(fixtures, tmp_path, 25)
    out = tmp_path / "all.csv"
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "first 20 of 25 episodes" in result.stdout
    assert len(out.read_text().splitlines()) == 26  # the file has every answer


# ---------------------------------------------------------------------------- registry hints


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--model", "models:/ctit-response@champion", "PATIENT"],
        ["serve", "--model", "models:/ctit-response@champion"],
        ["report", "--model", "models:/ctit-response@champion", "--out", "r.html"],
        ["promote", "ctit-response"],
    ],
)
def test_registry_commands_without_a_store_fail_fast_and_create_nothing(
    runner, argv, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patient = tmp_path / "patient.json"
    patient.write_text("{}", encoding="utf-8")
    argv = [str(patient) if a == "PATIENT" else a for a in argv]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"no MLflow store at {tmp_path / 'mlruns.db'}" in text
    assert "--tracking-uri" in text and "MLFLOW_TRACKING_URI" in text
    assert "nothing was created" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patient.json"]  # no empty mlruns.db


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store holding one registered model, `other`, with a version but no alias."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("x", (root / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.create_registered_model("other")
    client.create_model_version("other", f"runs:/{run.info.run_id}/model", run.info.run_id)
    return uri


def test_a_store_without_the_model_names_the_models_it_has(runner, store) -> None:
    result = runner.invoke(
        app, ["report", "--model", "models:/ctit-response@champion", "--out", "r.html",
              "--tracking-uri", store],
    )  # fmt: skip
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "has no registered model 'ctit-response'" in text
    assert "registered models there: other" in text
    missing_alias = runner.invoke(
        app, ["serve", "--model", "models:/other@champion", "--tracking-uri", store]
    )
    assert missing_alias.exit_code == 2
    assert "no version with the alias @champion" in " ".join(missing_alias.output.split())


# ------------------------------------------------------------------------------------ promote


GATES = {
    "min_auroc_low": 0.6,
    "slope_band": [0.8, 1.2],
    "max_auroc_drop": 0.0,
    "max_brier_increase": 0.0,
    "comparators": [],
}  # fmt: skip (runs made by hand)


def _registered_run(client: MlflowClient, experiment: str, name: str, label: str) -> str:
    run = client.create_run(experiment)
    run_id = run.info.run_id
    for key, value in (("xgboost.auroc", 0.8), ("xgboost.auroc.low", 0.75),
                       ("xgboost.calibration_slope", 1.0), ("xgboost.brier", 0.16)):  # fmt: skip
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "ctit.data_fingerprint", "44b04299db8f" + "0" * 52)
    client.set_tag(run_id, "ctit.label_definition", label)
    client.log_dict(run_id, {"name": "t", "promotion": GATES}, "experiment/experiment.json")
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id).version
    client.set_registered_model_alias(name, "candidate", version)
    return version


def test_promote_refusal_names_the_label_and_the_way_out(runner, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("p", (tmp_path / "artifacts").as_uri())
    client.create_registered_model("m")
    v1 = _registered_run(client, experiment, "m", "plt100_or_rise50_d14")
    client.set_registered_model_alias("m", "champion", v1)
    _registered_run(client, experiment, "m", "plt75_d14")
    refused = runner.invoke(app, ["promote", "m", "--tracking-uri", uri])
    assert refused.exit_code == 1, refused.output
    text = " ".join(refused.output.split())
    assert "another response label (plt100_or_rise50_d14 vs plt75_d14" in text
    assert "--allow-new-data" in text
    assert "fingerprint 44b04299db8f vs 44b04299db8f" not in text  # the same cohort: not said
    allowed = runner.invoke(app, ["promote", "m", "--tracking-uri", uri, "--allow-new-data"])
    assert allowed.exit_code == 0, allowed.output
    assert "not compared head to head" in " ".join(allowed.output.split())


# --------------------------------------------------------------------------------------- help


def test_help_lists_the_tour_in_order_with_one_placeholder_spelling(runner) -> None:
    top = runner.invoke(app, ["--help"], terminal_width=80)
    assert top.exit_code == 0
    listed = re.findall(r"^  ([a-z]+)  ", top.output, re.M)
    assert listed == list(SUMMARIES)
    assert listed.index("simulate") < listed.index("validate")
    for name in SUMMARIES:
        page = runner.invoke(app, [name, "--help"], terminal_width=80)
        assert page.exit_code == 0, name
        assert not re.search(r"<(bool|str|int|path|float|list)", page.output), (name, page.output)
        assert "…" not in page.output and max(map(len, page.output.splitlines())) <= 100, name
        assert "Traceback" not in page.output
    promote = runner.invoke(app, ["promote", "--help"]).output
    assert "[promotion]" in promote and "experiment ()" not in promote
    serve = " ".join(runner.invoke(app, ["serve", "--help"], terminal_width=80).output.split())
    assert "--workers N" in serve and "CTIT_API_TOKEN turns on bearer tokens" in serve


def test_version(runner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ctit {ctit_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", ctit_version())


# ------------------------------------------------------------------------------ quiet output


def _ctit(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "ctit", *argv], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_mlflow_info_lines_are_shown_only_with_verbose(tmp_path) -> None:
    for name, verbose in (("quiet.db", False), ("loud.db", True)):
        (tmp_path / name).touch()  # an empty store: MLflow creates its tables (INFO lines)
        argv = ["promote", "m", "--tracking-uri", f"sqlite:///{name}"]
        done = _ctit(*(["-v", *argv] if verbose else argv), cwd=tmp_path)
        assert done.returncode == 2
        assert ("INFO mlflow" in done.stderr) is verbose, done.stderr
        assert "error: the MLflow store" in done.stderr


def test_python_warnings_are_hidden_without_verbose(tmp_path) -> None:
    code = (
        "import sys, warnings\n"
        "from ctit.cli import quiet_libraries\n"
        "quiet_libraries(sys.argv[1] == 'v')\n"
        "warnings.warn('integer column schema hint', UserWarning)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for flag, shown in (("q", False), ("v", True)):
        done = subprocess.run(
            [sys.executable, "-c", code, flag], env=env, capture_output=True, text=True,
            timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert ("integer column schema hint" in done.stderr) is shown


# --------------------------------------------------------------------------- cohort messages


def test_validate_mentions_the_simulators_oracle_without_warning(runner, cohort_dir) -> None:
    (cohort_dir / "oracle.csv").write_text("episode_id,p\nE1,0.5\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(cohort_dir)])
    assert result.exit_code == 0, result.output
    assert "oracle.csv: the simulator's own file, not read" in result.output
    assert "not a contract table" not in result.output  # not listed among the warnings


def test_an_invalid_cohort_is_reported_one_way_by_every_command(runner, cohort_dir, tmp_path):
    episodes = cohort_dir / "episodes.csv"
    lines = episodes.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("index_date")] = "not-a-date"
    episodes.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n", encoding="utf-8")
    experiment = tmp_path / "e.toml"
    experiment.write_text('name = "x"\n', encoding="utf-8")
    outputs = {}
    for argv in (
        ["features", str(cohort_dir), "--out", str(tmp_path / "f.csv")],
        ["labels", str(cohort_dir), "--out", str(tmp_path / "l.csv")],
        ["train", str(experiment), "--cohort", str(cohort_dir), "--tracking-uri",
         f"sqlite:///{tmp_path / 'm.db'}"],
    ):  # fmt: skip
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, (argv[0], result.output)
        text = " ".join(result.output.split())
        assert text.startswith(f"error: {cohort_dir} is not a valid cohort"), (argv[0], text)
        assert "episodes:2: index_date" in text and "ctit validate" in text
        outputs[argv[0]] = text
    assert len(set(outputs.values())) == 1  # word for word the same report
    assert runner.invoke(app, ["validate", str(cohort_dir)]).exit_code == 1
