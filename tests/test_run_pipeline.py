"""End to end: `mld run` on a tiny budget, then evaluate, simulate, export and compare on its model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from discover import report as compare_report
from discover.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, shipped_dataset):
    """Every 6th frame of the shipped run: the same physics, a sixth of the cost."""
    path = tmp_path_factory.mktemp("data") / "water_small.npz"
    shipped_dataset.select(slice(None, None, 6)).save(path)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_dataset):
    work = tmp_path_factory.mktemp("run")
    models, report = work / "models", work / "report"
    result = CliRunner().invoke(app, [
        "run", "--dataset", str(small_dataset), "--models", str(models), "--out", str(report),
        "--search-budget", "2", "--budget", "quick", "--steps", "1000", "--nve-steps", "200", "--seed", "1",
    ])
    assert result.exit_code == 0, result.output
    return models, report


def test_run_writes_model_files(finished_run):
    models, _ = finished_run
    for name in ("model.json", "kernels.py", "equations.md", "pareto.csv", "metrics.json", "baseline.npz"):
        assert (models / name).is_file(), name
    for folder in ("pairwise", "tabulated", "manybody", "manybody_tabulated"):
        for name in ("model.json", "kernels.py", "equations.md"):
            assert (models / folder / name).is_file(), f"{folder}/{name}"
    metrics = json.loads((models / "metrics.json").read_text())
    assert metrics["default_model"] in ("manybody", "pairwise")
    for row in ("tabulated", "closed_form", "quadratic_baseline", "manybody_tabulated", "manybody_closed_form"):
        for group in ("O", "H", "all"):
            figures = metrics["models"][row][group]
            assert figures["rmse"] > 0 and np.isfinite(figures["relative"])
        assert metrics["models"][row]["n_parameters"] > 0
    assert metrics["engine"] in ("operon", "pysr")
    assert "symbolic_search" in metrics["wall_time_s"]


def test_run_report_parses_and_figures_are_png(finished_run):
    _, report = finished_run
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["models"]) == {"manybody", "pairwise"}  # the report shows both
    for run in metrics["models"].values():
        for pair in ("OO", "OH", "HH"):
            assert np.isfinite(run["rdf"][pair]["learned"]["first_peak_angstrom"])
        speed = run["speed"]
        engine = speed["engine_seconds_per_step"]
        # the engine alone, as `mld simulate` runs the model (tabulated), against CP2K's mean step; the
        # production run's time holds its output and the compilation of its loops, so it is slower
        assert speed["engine_form"] == "tabulated" and 0 < engine["tabulated"] < speed["production_seconds_per_step"]
        assert engine["closed_form"] > 0
        assert speed["speedup"] == pytest.approx(speed["cp2k_seconds_per_step"] / engine["tabulated"], rel=1e-12)
        assert speed["speedup"] > speed["production_speedup"] > 1
        if speed["cp2k_cores"]:  # CP2K's output at hand (the shared runs): its CPU time, wall × cores
            assert speed["speedup_cpu"] == pytest.approx(speed["speedup"] * speed["cp2k_cores"], rel=1e-12)
        else:
            assert speed["speedup_cpu"] is None
    assert set(metrics["force_errors"]) == {"manybody", "manybody_tabulated", "pairwise", "tabulated",
                                            "quadratic_baseline"}
    text = (report / "report.md").read_text()
    assert "GFN1-xTB" in text and "Learned agent losses" in text
    assert "engine alone, as a long `mld simulate` run takes it" in text
    for name in ("rdf.png", "parity.png", "pair_laws.png", "pareto.png", "geometry_temperature.png", "vdos.png"):
        data = (report / "figures" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert f"figures/{name}" in text


def test_evaluate_reports_the_same_validation_error_as_discover(finished_run, small_dataset, tmp_path):
    from discover.dataset import Dataset
    from discover.force_matching import split_frames

    models, _ = finished_run
    data = Dataset.load(small_dataset)
    _, valid = split_frames(data.n_frames)
    validation = tmp_path / "valid.npz"
    data.select(valid).save(validation)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", str(models / "model.json"), str(validation), "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["force_errors"]["all"]
    metrics = json.loads((models / "metrics.json").read_text())
    row = "manybody_closed_form" if metrics["default_model"] == "manybody" else "closed_form"
    expected = metrics["models"][row]["all"]
    assert figures["rmse"] == pytest.approx(expected["rmse"], rel=1e-9)


def test_simulate_cli_runs_a_replicated_box(finished_run, small_dataset, tmp_path):
    from simulate.trajectory import read_trajectory

    models, _ = finished_run
    out = tmp_path / "md"
    result = CliRunner().invoke(app, ["simulate", str(models), "--init", f"{small_dataset}:3", "--steps", "40",
                                      "--replicate", "2x1x1", "--trajectory-every", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    traj = read_trajectory(out / "trajectory.xyz")
    assert traj["positions"].shape == (3, 192, 3)
    assert np.allclose(traj["box"][0], [2 * 9.865406, 9.865406, 9.865406])


def _simulate_pairwise(models, small_dataset, out, *flags, steps=40):
    from simulate.trajectory import read_trajectory

    result = CliRunner().invoke(app, ["simulate", str(models / "pairwise"), "--init", f"{small_dataset}:3",
                                      "--steps", str(steps), "--thermostat", "nve", "--trajectory-every", "20",
                                      *flags, "--out", str(out)])
    return result, (read_trajectory(out / "trajectory.xyz") if result.exit_code == 0 else None)


def test_simulate_cli_tabulates_by_default_and_follows_the_closed_form_trajectory(finished_run, small_dataset,
                                                                                   tmp_path):
    models, _ = finished_run
    runs = {}
    for flags in ((), ("--no-tabulate",), ("--tabulate",)):
        result, runs[flags] = _simulate_pairwise(models, small_dataset, tmp_path / ("".join(flags) or "default"), *flags)
        assert result.exit_code == 0, result.output
    closed, tabulated = runs[("--no-tabulate",)], runs[("--tabulate",)]
    assert not np.array_equal(closed["forces"], tabulated["forces"])  # the tables did run
    np.testing.assert_allclose(tabulated["forces"], closed["forces"], atol=1e-6)
    np.testing.assert_allclose(tabulated["positions"], closed["positions"], atol=1e-7)
    np.testing.assert_array_equal(runs[()]["forces"], tabulated["forces"])  # the default: the tables


def test_simulate_cli_falls_back_to_the_closed_form_only_where_tables_were_not_asked_for(finished_run, small_dataset,
                                                                                         tmp_path, monkeypatch):
    from simulate import tabulate

    def refuse(kernel_module, *args, label=None, **kwargs):
        raise tabulate.TabulationError(f"{label}: law OO needs more than {tabulate.MAX_CELLS} cells")

    monkeypatch.setattr(tabulate, "tabulate_kernel_module", refuse)
    models, _ = finished_run
    result, default = _simulate_pairwise(models, small_dataset, tmp_path / "default")
    assert result.exit_code == 0, result.output
    assert "closed form (the laws cannot be tabulated" in result.output and "OO needs more" in result.output
    _, closed = _simulate_pairwise(models, small_dataset, tmp_path / "closed", "--no-tabulate")
    np.testing.assert_array_equal(default["forces"], closed["forces"])
    result, _ = _simulate_pairwise(models, small_dataset, tmp_path / "asked", "--tabulate")
    assert result.exit_code == 1
    assert "OO needs more" in result.output and "Traceback" not in result.output


def test_export_cli_writes_lammps_deck_for_the_pairwise_model(finished_run, small_dataset, tmp_path):
    models, _ = finished_run
    result = CliRunner().invoke(app, ["export", str(models / "pairwise"), "--to", "lammps", "--out",
                                      str(tmp_path / "lmp"), "--init", str(small_dataset)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lmp" / "in.lammps").is_file()


def test_export_cli_refuses_lammps_for_the_many_body_model_in_one_line(finished_run, small_dataset, tmp_path):
    models, _ = finished_run
    result = CliRunner().invoke(app, ["export", str(models / "manybody"), "--to", "lammps", "--out",
                                      str(tmp_path / "lmp"), "--init", str(small_dataset)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "three-body" in lines[0], result.output
    assert not (tmp_path / "lmp" / "in.lammps").exists()


@pytest.mark.parametrize("args, fragment", [
    (["simulate", "no_such_model", "--steps", "1"], "no_such_model"),
    (["evaluate", "no_such.json", "data/water32_300K.npz"], "no_such.json"),
    (["compare", "no_such_dir"], "no_such_dir"),
    (["export", "no_such_dir", "--to", "lammps", "--out", "x"], "no_such_dir"),
])
def test_bad_paths_give_one_line_errors(args, fragment):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def test_report_says_plainly_when_a_learned_rdf_has_no_first_peak():
    """A washed-out shell (the molecular pairwise model's g_OH has only a shoulder) is reported as such,
    not as a NaN shift."""
    import copy

    from discover import report

    metrics = json.loads((Path(__file__).parents[1] / "reports" / "default" / "metrics.json").read_text())
    run = copy.deepcopy(metrics["models"][metrics["default_model"]])
    entry = run["rdf"]["OH"]
    entry["learned"]["first_peak_angstrom"] = entry["learned"]["first_peak_height"] = float("nan")
    entry["first_peak_shift_angstrom"] = entry["first_peak_height_ratio"] = float("nan")
    lines = [line for line in report.verdicts(run) if line.startswith("g_OH")]
    assert len(lines) == 1 and "no first peak" in lines[0] and "nan" not in lines[0]
    assert report._peak_cell(entry) == "none"
    # the other way round: a peak the model has and CP2K has not
    entry["learned"]["first_peak_angstrom"], entry["reference"]["first_peak_angstrom"] = 2.1, float("nan")
    lines = [line for line in report.verdicts(run) if line.startswith("g_OH")]
    assert len(lines) == 1 and "where CP2K has none" in lines[0] and "nan" not in lines[0]
    assert report._peak_cell(entry) == "2.100"


# closed form: the default before tables
@pytest.mark.parametrize(("flags", "closed"), [(("--no-tabulate",), True), ((), False)])
def test_simulate_cli_resumes_a_run_by_default_as_it_ran_bit_for_bit(finished_run, small_dataset, tmp_path, flags,
                                                                      closed):
    models, _ = finished_run
    first, _ = _simulate_pairwise(models, small_dataset, tmp_path / "broken", *flags)
    assert first.exit_code == 0, first.output
    resumed, a = _simulate_pairwise(models, small_dataset, tmp_path / "broken", "--resume", steps=60)
    assert resumed.exit_code == 0, resumed.output
    assert ("closed form, as the checkpoint's run" in resumed.output) == closed
    unbroken, b = _simulate_pairwise(models, small_dataset, tmp_path / "unbroken", *flags, steps=60)
    assert unbroken.exit_code == 0, unbroken.output
    assert a["positions"].shape[0] == b["positions"].shape[0] == 4
    np.testing.assert_array_equal(a["positions"], b["positions"])


def test_simulate_cli_resume_from_a_corrupt_checkpoint_is_one_line(finished_run, small_dataset, tmp_path):
    models, _ = finished_run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"")
    result, _ = _simulate_pairwise(models, small_dataset, tmp_path / "run", "--resume")
    assert result.exit_code == 1
    assert "cannot read checkpoint" in result.output and "Traceback" not in result.output


def test_speed_without_cp2k_timings_or_tables_reads_not_available():
    # a dataset without CP2K's timings (no .ener) and a model whose laws cannot be tabulated: no ratio is made
    # up, and the report's cells say so
    engine = {"threads": 1, "closed_form": 1e-4, "tabulated": None, "tabulated_note": "a law with a pole"}
    speed = compare_report.speed_figures(96, None, None, engine, 3e-4, 10.0)
    assert speed["engine_form"] == "closed_form"
    assert speed["speedup"] is None and speed["speedup_cpu"] is None and speed["production_speedup"] is None
    assert compare_report._cp2k_time_cell(speed) == "n/a"
    assert compare_report._engine_cell({"speed": speed}) == "100 µs (closed form: the laws cannot be tabulated)"
    timed = compare_report.speed_figures(96, 1.25, 2, engine, 3e-4, 10.0)
    assert timed["speedup"] == pytest.approx(12500) and timed["speedup_cpu"] == pytest.approx(25000)
    assert compare_report._engine_cell({"speed": timed}) == ("100 µs (×12,500), ×25,000 in CPU time (closed form: the laws "
                                                     "cannot be tabulated)")

