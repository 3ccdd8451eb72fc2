"""pipelines/evaluate.py: the sweep runs missing cells through the bundle, skips done ones, and writes the
paper-style table, the paired t-test and the plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from pipelines.evaluate import Cell, main

from .conftest import TINY_CLASSIFY, bundle_env

pytestmark = pytest.mark.slow

CLASSES = ["Effusion", "Mass"]


def _fake_results(folder: Path, aucs: dict[str, float | None], subset: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    defined = [v for v in aucs.values() if v is not None]
    record = {"test": {"per_class_auc": aucs, "mean_auc": sum(defined) / len(defined), "classes": list(aucs)}}
    if subset is not None:
        record["training_subset"] = subset
    (folder / "results.json").write_text(json.dumps(record))


def test_tables_ttest_and_plot_from_existing_cells(tmp_path, capsys):
    out = tmp_path / "sweep"
    mlvicx = {0: (0.80, 0.70), 1: (0.82, 0.74), 2: (0.79, 0.71)}
    random = {0: (0.70, 0.60), 1: (0.74, None), 2: (0.69, 0.63)}
    for fraction in (0.1, 1.0):
        for name, table in (("mlvicx", mlvicx), ("random", random)):
            for seed, (e, m) in table.items():
                bump = 0.05 if fraction == 1.0 else 0.0
                _fake_results(Cell("demo", "frozen", fraction, name, seed).folder(out),
                              {"Effusion": e + bump, "Mass": None if m is None else m + bump})
    code = main(["--out", str(out), "--datasets", "demo", "--protocols", "frozen", "--fractions", "0.1", "1.0",
                 "--seeds", "0", "1", "2", "--pretrained", "mlvicx=enc.pt", "--pretrained", "random=none"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {c["status"] for c in summary["cells"]} == {"skipped (results.json exists)"}
    rows = list(csv.DictReader(open(out / "table.csv")))
    expected_rows = [("0.1", "mlvicx"), ("0.1", "random"), ("1.0", "mlvicx"), ("1.0", "random")]
    assert [(r["fraction"], r["method"]) for r in rows] == expected_rows
    first = rows[0]
    assert float(first["Effusion mean"]) == pytest.approx((0.80 + 0.82 + 0.79) / 3)
    assert float(first["mean_auc mean"]) == pytest.approx(sum((e + m) / 2 for e, m in mlvicx.values()) / 3)
    assert rows[1]["Mass n"] == "2"  # the undefined value of seed 1 is left out, not counted as 0
    markdown = (out / "table.md").read_text()
    assert "| fraction | method | seeds | Effusion | Mass | mean_auc |" in markdown and "0.803 ± 0.015" in markdown
    tests = list(csv.DictReader(open(out / "ttest.csv")))
    assert len(tests) == 2 and tests[0]["a"] == "mlvicx" and tests[0]["b"] == "random"
    a = [(e + m) / 2 for e, m in mlvicx.values()]
    b = [0.65, 0.74, 0.66]  # mean over the defined classes of each random run
    expected = ttest_rel(a, b)
    assert float(tests[0]["p_value"]) == pytest.approx(expected.pvalue)
    assert float(tests[0]["t"]) == pytest.approx(expected.statistic)
    assert (out / "metric_vs_fraction.png").stat().st_size > 1000
    assert "Paired t-test" in capsys.readouterr().out
    assert tests[0]["subsets"] == "unknown" and "do not record their training subset" in (out / "ttest.md").read_text()


@pytest.mark.parametrize("resample", [True, False])
def test_ttest_states_whether_subsets_were_resampled(tmp_path, resample):
    out = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(0.8, 0.7), (0.82, 0.75), (0.78, 0.7)]):
        subset = {"fraction_seed": seed if resample else None, "n_images": 10, "n_patients": 5,
                  "ids_sha256": f"{seed if resample else 0:064x}"}
        for name, auc in (("mlvicx", a), ("random", b)):
            _fake_results(Cell("demo", "frozen", 0.1, name, seed).folder(out), {"Effusion": auc}, subset)
    argv = ["--out", str(out), "--fractions", "0.1", "--seeds", "0", "1", "2", "--pretrained", "mlvicx=enc.pt",
            "--pretrained", "random=none"] + ([] if resample else ["--no-resample-fractions"])
    assert main(argv) == 0
    test = next(csv.DictReader(open(out / "ttest.csv")))
    assert test["subsets"] == ("resampled" if resample else "fixed") and test["same_subset_pairs"] == "3"
    text = (out / "ttest.md").read_text()
    assert "paired over the downstream seeds" in text
    assert ("each seed drew its own nested, patient-level" in text) == resample
    assert ("every run trained on the datalist's one label-fraction subset" in text) == (not resample)
    assert json.loads((out / "summary.json").read_text())["resample_fractions"] is resample


def test_resample_fractions_passes_the_seed_as_fraction_seed(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--seeds", "4", "--pretrained", "a=none", "--dry-run"]
    assert main(base) == 0
    assert "--fraction_seed 4" in capsys.readouterr().out
    assert main([*base, "--no-resample-fractions"]) == 0
    assert "--fraction_seed" not in capsys.readouterr().out


def test_sweep_runs_a_missing_cell_through_the_bundle_then_skips_it(nih_demo, encoder_file, work, monkeypatch):
    out = work / "sweep"
    for key, value in bundle_env(work).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = {k.lstrip("-"): v for k, v in zip(TINY_CLASSIFY[::2], TINY_CLASSIFY[1::2])}
    settings.update(max_epochs="1", track="False")
    overrides = [f"{k}={v}" for k, v in settings.items()]
    argv = ["--out", str(out), "--datasets", "demo", "--data-dir", str(nih_demo), "--protocols", "frozen",
            "--fractions", "1.0", "--seeds", "0",
            "--pretrained", f"mlvicx={encoder_file}", "--pretrained", "random=none",
            "--compare", "mlvicx", "random", "--set", *overrides]
    assert main(argv) == 0
    cells = json.loads((out / "summary.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["ran", "ran"]
    results = json.loads(Path(cells[1]["results"]).read_text())
    assert results["pretrained"]["kind"] == "none" and results["settings"]["max_epochs"] == 1
    assert main(argv) == 0
    statuses = [c["status"] for c in json.loads((out / "summary.json").read_text())["cells"]]
    assert statuses == ["skipped (results.json exists)"] * 2
    tests = list(csv.DictReader(open(out / "ttest.csv")))
    assert tests[0]["n_pairs"] == "1" and tests[0]["note"] == "needs at least 2 paired seeds"
