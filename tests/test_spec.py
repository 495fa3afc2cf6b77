"""Job spec validation: every error names the field (and the file), paths stay confined."""

from __future__ import annotations

import json

import pytest

from fcn_dist.errors import SpecError
from fcn_dist.spec import MAX_SPEC_BYTES, JobSpec, load_spec, parse_overrides


def _spec(**kw):
    return JobSpec.from_dict({"backbone": "resnet18", **kw})


def test_yaml_with_overrides_and_json_round_trip(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("name: demo\nbackbone: resnet18\nepochs: 3\ncrop_size: 96\n")
    spec = load_spec(f, ["lr=0.01", "scale_range=[0.75, 1.5]"], variant="16s")
    assert (spec.name, spec.variant, spec.epochs, spec.lr) == ("demo", "16s", 3, 0.01)
    assert spec.crop_size == [96, 96] and spec.scale_range == [0.75, 1.5]
    assert spec.model_name == "fcn16s_resnet18"
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and json.loads(spec.to_json())["variant"] == "16s"


@pytest.mark.parametrize("field,value,needle", [
    ("variant", "4s", "variant"),
    ("backbone", "vgg99", "backbone"),
    ("epochs", 0, "epochs"),
    ("lr", -1, "lr"),
    ("amp", "fp8", "amp"),
    ("crop_size", [8, 8], "crop_size"),
    ("scale_range", [2.0, 1.0], "scale_range"),
    ("name", "../../etc", "name"),
    ("name", "x; rm -rf /", "name"),
    ("batch_size", "many", "batch_size"),
    ("backbone_weights", "/nonexistent/w.pth", "backbone_weights"),
])
def test_bad_fields_are_named(field, value, needle):
    with pytest.raises(SpecError, match=needle):
        _spec(**{field: value})


def test_unknown_field_and_bad_files(tmp_path):
    with pytest.raises(SpecError, match="unknown field.*colour"):
        _spec(colour="red")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        JobSpec.from_yaml(bad)
    with pytest.raises(SpecError, match="not found"):
        JobSpec.from_yaml(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "#" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(SpecError, match="larger than"):
        JobSpec.from_yaml(big)
    with pytest.raises(SpecError, match="not valid JSON"):
        JobSpec.from_json("{not json")
    with pytest.raises(SpecError, match="must look like key=value"):
        parse_overrides(["epochs"])


def test_store_is_confined_under_the_results_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_STORE", str(tmp_path / "store"))
    assert _spec(store="team-a").store_dir() == (tmp_path / "store" / "team-a").resolve()
    with pytest.raises(SpecError, match="store"):
        _spec(store="../elsewhere")
    with pytest.raises(SpecError, match="store"):
        _spec(store="/tmp")
