"""Width of the 95% mean-AUC bootstrap interval when resampling images vs patients (cluster bootstrap).

    python -m pipelines.benchmarks.ci_width [--rho 0.5 0.75] [--n-boot 500] [--separation 1.2] [--demo-dir DIR]

(a) NIH ChestX-ray14 official test split (25,596 images of 2,797 patients): the real patient ids and the
    real 14 labels from ``../shared/reference-labels/nih`` (``Data_Entry_2017_v2020.csv.gz``; test = every image
    in neither ``Xray14_train_official.txt.gz`` nor ``Xray14_val_official.txt.gz``). Scores are simulated per
    class: ``separation * y + sqrt(rho) * u_patient + sqrt(1 - rho) * e_image`` (``u``, ``e`` standard normal),
    i.e. a per-patient random effect whose share of the score variance is ``rho``.
(b) The demo data (``mlvicx_monai.data.demo``, NIH layout; generated in ``--demo-dir`` if absent): its test
    split's patient ids and labels, the same score model.

For each case: the image-level and the patient-level interval (same seed, ``--n-boot`` resamples), their widths
and the ratio. ``--coverage K`` adds, for the NIH case, the share of K simulations (each with new scores) whose
interval covers the AUC of the score model (computed from a simulation of the full population: the mean AUC of
the true model on 20 x the test size).
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

from mlvicx_monai.metrics import bootstrap_auc_ci, mean_auc

REPO = Path(__file__).resolve().parents[2]
LABELS = REPO.parent / "shared" / "reference-labels" / "nih"
NIH_CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
               "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]


def nih_test(labels_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(y [N, 14] int, patient ids [N])`` of the official NIH test split."""
    import pandas as pd

    table = pd.read_csv(labels_dir / "Data_Entry_2017_v2020.csv.gz")
    listed: set[str] = set()
    for name in ("Xray14_train_official.txt.gz", "Xray14_val_official.txt.gz"):
        with gzip.open(labels_dir / name, "rt") as handle:
            listed.update(line.split()[0] for line in handle if line.strip())
    test = table[~table["Image Index"].isin(listed)]
    findings = test["Finding Labels"].str.split("|")
    y = np.array([[int(c in f) for c in NIH_CLASSES] for f in findings], dtype=np.int64)
    return y, test["Patient ID"].astype(str).to_numpy()


def demo_test(demo_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(y, patient ids)`` of the demo (NIH layout) test split."""
    from mlvicx_monai.data.datalist import load_datalist
    from mlvicx_monai.data.demo import prepare_data

    datalist = prepare_data("demo", demo_dir, layout="nih")
    entries = load_datalist(datalist, "test", require_labels=True)
    return np.array([e["label"] for e in entries], dtype=np.int64), np.array([e["patient"] for e in entries])


def simulate(y: np.ndarray, pid: np.ndarray, rho: float, separation: float, rng: np.random.Generator) -> np.ndarray:
    _, inverse = np.unique(pid, return_inverse=True)
    effect = rng.normal(size=(inverse.max() + 1, y.shape[1]))[inverse]
    return separation * y + np.sqrt(rho) * effect + np.sqrt(1.0 - rho) * rng.normal(size=y.shape)


def widths(name: str, y: np.ndarray, pid: np.ndarray, rhos: list[float], args: argparse.Namespace) -> None:
    n_patients = len(set(pid.tolist()))
    print(f"\n## {name}: {len(y)} images, {n_patients} patients, {y.shape[1]} classes "
          f"(prevalence {y.mean(axis=0).min():.4f}-{y.mean(axis=0).max():.4f}), n_boot {args.n_boot}")
    print("| rho | mean AUC | image CI | width | patient CI | width | patient / image | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for rho in rhos:
        s = simulate(y, pid, rho, args.separation, np.random.default_rng(args.seed))
        t0 = time.perf_counter()
        img = bootstrap_auc_ci(y, s, n_boot=args.n_boot, seed=args.seed)
        pat = bootstrap_auc_ci(y, s, n_boot=args.n_boot, seed=args.seed, patient_ids=pid)
        dt = time.perf_counter() - t0
        wi, wp = img[1] - img[0], pat[1] - pat[0]
        print(f"| {rho:g} | {mean_auc(y, s):.4f} | [{img[0]:.4f}, {img[1]:.4f}] | {wi:.4f} | "
              f"[{pat[0]:.4f}, {pat[1]:.4f}] | {wp:.4f} | {wp / wi:.2f} | {dt:.1f} |")


def coverage(y: np.ndarray, pid: np.ndarray, rho: float, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed + 1)
    big = np.tile(y, (20, 1))
    big_pid = np.concatenate([np.char.add(pid.astype(str), f"#{k}") for k in range(20)])
    truth = mean_auc(big, simulate(big, big_pid, rho, args.separation, rng))
    hits = {"image": 0, "patient": 0}
    for _ in range(args.coverage):
        s = simulate(y, pid, rho, args.separation, rng)
        for unit, ids in (("image", None), ("patient", pid)):
            low, high = bootstrap_auc_ci(y, s, n_boot=args.n_boot, seed=int(rng.integers(1 << 31)), patient_ids=ids)
            hits[unit] += int(low <= truth <= high)
    print(f"\ncoverage of the nominal 95% interval, rho {rho:g}, {args.coverage} simulations (true mean AUC "
          f"{truth:.4f}): image {hits['image'] / args.coverage:.2f}, patient {hits['patient'] / args.coverage:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rho", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--separation", type=float, default=1.2, help="score shift of positives (AUC ~0.8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels-dir", type=Path, default=LABELS)
    parser.add_argument("--demo-dir", type=Path, default=REPO / "runs" / "demo_data")
    parser.add_argument("--coverage", type=int, default=0, help="simulations of the NIH coverage check (0: none)")
    parser.add_argument("--skip", choices=["nih", "demo"], nargs="*", default=[])
    args = parser.parse_args(argv)
    if "nih" not in args.skip:
        y, pid = nih_test(args.labels_dir)
        widths("NIH official test split, simulated scores", y, pid, args.rho, args)
        if args.coverage:
            coverage(y, pid, args.rho[0], args)
    if "demo" not in args.skip:
        y, pid = demo_test(args.demo_dir)
        widths("demo (NIH layout) test split, simulated scores", y, pid, args.rho, args)


if __name__ == "__main__":
    main()
