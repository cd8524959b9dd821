"""Parameters are declared once (eclm_ros/ros/params.py): the shipped YAML files and the README's tables are
checked against the declarations, so code, configuration and documentation cannot drift."""
from pathlib import Path

import pytest
import yaml

from eclm_ros.ros.params import NODES, readme_section

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("node", sorted(NODES))
def test_the_shipped_yaml_sets_every_declared_parameter_to_its_default(node):
    doc = yaml.safe_load((REPO / "config" / f"{node}.yaml").read_text())
    values = doc[f"/**/{node}"]["ros__parameters"]
    specs = {p.name: p for p in NODES[node]}
    assert set(values) == set(specs), f"config/{node}.yaml differs from params.py: {set(values) ^ set(specs)}"
    for name, value in values.items():
        assert specs[name].problem(value) is None, f"{node}.{name}={value!r}: {specs[name].problem(value)}"
        assert value == specs[name].default, f"{node}.{name}: YAML {value!r}, declared {specs[name].default!r}"


def test_the_readme_tables_are_generated_from_the_declarations():
    readme = (REPO / "README.md").read_text()
    begin = readme.index("<!-- parameters:")
    section = readme[readme.index("\n", begin) + 1:readme.index("<!-- end of parameters -->")]
    assert section == readme_section(), "README parameters are stale: regenerate with python -m eclm_ros.ros.params"


def test_a_value_outside_its_range_is_refused_with_the_reason():
    specs = {p.name: p for p in NODES["edge_learner"]}
    assert "must be" in specs["upload_ratio"].problem(1.5)
    assert specs["runtime"].problem("tensorrt").startswith("must be one of")
    assert specs["upload_batch"].problem(True) is not None  # a bool is no integer here
    assert specs["upload_ratio"].problem(float("nan")) == "must be finite"
    assert specs["upload_ratio"].problem(0.3) is None
