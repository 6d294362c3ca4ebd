"""Config: defaults, YAML, command-line overrides, and field-level errors."""

from __future__ import annotations

import pytest

from gradguide.config import EvalConfig, load_config, to_dict
from gradguide.errors import GradguideError


def test_defaults_yaml_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("task: rte\nshots: 4\nscoring:\n  batch_size: 3\n")
    c = load_config(EvalConfig, f, {"shots": 8, "scoring.max_length": 256, "seed": None})
    assert (c.task, c.shots, c.seed) == ("rte", 8, 0)
    assert (c.scoring.batch_size, c.scoring.max_length) == (3, 256)
    assert to_dict(c)["scoring"]["batch_size"] == 3


def test_string_overrides_are_coerced():
    c = load_config(EvalConfig, None, {"limit": "12", "scoring.length_normalize": "true"})
    assert c.limit == 12 and c.scoring.length_normalize is True


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("shots: many\n", "shots"),
        ("bogus: 1\n", "bogus"),
        ("scoring:\n  nope: 1\n", "scoring.nope"),
    ],
)
def test_bad_settings_name_file_and_field(tmp_path, text, field):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(GradguideError) as e:
        load_config(EvalConfig, f)
    assert e.value.field == field and str(f) in str(e.value)


def test_invalid_yaml_has_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("task: sst2\nshots: [1, 2\n")
    with pytest.raises(GradguideError) as e:
        load_config(EvalConfig, f)
    assert e.value.line is not None and "invalid YAML" in str(e.value)


def test_missing_and_non_mapping_file(tmp_path):
    with pytest.raises(GradguideError, match="not found"):
        load_config(EvalConfig, tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(GradguideError, match="mapping"):
        load_config(EvalConfig, f)
