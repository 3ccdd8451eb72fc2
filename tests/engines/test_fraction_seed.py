"""fraction_seed: seeded, nested, patient-level training subsets of the downstream bundles' items."""

from __future__ import annotations

import pytest

from mlvicx_monai.data.datalist import load_datalist, read_datalist
from mlvicx_monai.data.demo import datalist_path
from mlvicx_monai.engines.classify import classification_items, patients_by_id, training_subset

pytestmark = pytest.mark.slow  # needs the session's demo data


def test_seeded_subsets_are_nested_patient_level_and_recorded(nih_demo):
    datalist = datalist_path("demo", nih_demo, "nih")
    names = list(read_datalist(datalist)["class_names"])
    held_out = {e["patient"] for e in load_datalist(datalist, "val+test")}
    fixed = classification_items(datalist, "train", names, fraction=0.3)
    assert [i["id"] for i in fixed] == [e["id"] for e in load_datalist(datalist, "train", fraction=0.3)]
    records = {}
    for seed in (0, 1, 2):
        sets = [{i["id"] for i in classification_items(datalist, "train", names, fraction=f, fraction_seed=seed)}
                for f in (0.01, 0.1, 0.3, 1.0)]
        assert sets[0] <= sets[1] <= sets[2] <= sets[3]  # nested for one seed
        items = classification_items(datalist, "train", names, fraction=0.3, fraction_seed=seed)
        patients = patients_by_id(items)
        assert patients is not None and not set(patients.values()) & held_out  # patient-disjoint from val/test
        all_train = classification_items(datalist, "train", names)
        inside = set(patients.values())
        assert {i["id"] for i in all_train if i["patient"] in inside} == sets[2]  # all images of chosen patients
        records[seed] = training_subset(items, 0.3, seed)
        assert records[seed]["n_images"] == len(items) and records[seed]["fraction_seed"] == seed
    # seeds draw different subsets: of 10 seeds, 4-6 distinct 30 % subsets on this demo (45 training images; the
    # patients' pseudonyms, so the split, follow the session's secret); 3 seeds drew one subset for some secrets
    drawn = {r["ids_sha256"] for r in records.values()} | {
        training_subset(classification_items(datalist, "train", names, fraction=0.3, fraction_seed=s), 0.3, s)
        ["ids_sha256"] for s in range(3, 10)
    }
    assert len(drawn) > 1
    assert training_subset(fixed, 0.3, None)["fraction_seed"] is None
