"""Fuzzed input: random --set pairs and recipe files are accepted or refused with a one-line
DfkdError, never a traceback (property-based, Hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from dfkd.config import RunConfig, load_config, merge, parse_overrides, read_yaml
from dfkd.errors import DfkdError
from dfkd.methods import get_method, list_methods

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _known_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name != "method_settings"]
    keys += [f"student_optim.{k}" for k in ("lr", "momentum", "weight_decay")]
    keys += [f"generator.{k}" for k in ("nz", "ngf", "width", "stages", "lr", "betas")]
    for method in list_methods():
        keys += [f"{method}.{f.name}" for f in dataclasses.fields(get_method(method).Settings)]
    return keys


KNOWN = _known_keys()
ODD_VALUES = ["", " ", "~", "null", "yes", "no", "on", "off", ".nan", ".inf", "-.inf", "NaN",
              "1e308", "1e999", "-0", "0x1F", "0o17", "1_000", "2026-11-26", "[1, 2", "{a: 1",
              "[1, 2]", "{a: 1}", "[]", "{}", "!!python/object/apply:os.system ['true']",
              "!!binary aGVsbG8=", "&a [*a]", "*undefined", "'quoted'", '"double"', "- a\n- b",
              "a: b: c", "%YAML 1.2", "---", "...", "#comment", "|\n  text", ">", "\t", "\x00",
              "é", "💥", "-1", "0", "1", "3.5", "true", "false", "cpu", "cuda", "auto", "log",
              "none", "val", "test", "kl", "l1", "[0.5, 0.999]", "[0.5]", "[a, b]"]
numbers = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True))
values = st.one_of(
    st.sampled_from(ODD_VALUES),
    numbers.map(str),
    st.text(max_size=20),
    st.lists(numbers, max_size=3).map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)
keys = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(lambda k: k + "x"),            # near misses
    st.sampled_from(KNOWN).map(lambda k: k.replace(".", "..")),
    st.text(max_size=15),
    st.sampled_from(["", ".", "a.", ".a", "cudfkd", "generator", "search", "method",
                     "student_optim.lr.x"]),
)


def _accepted_or_one_line(load) -> None:
    try:
        load()
    except DfkdError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(keys, values), min_size=1, max_size=3),
       method=st.sampled_from(list_methods()))
def test_set_overrides_are_accepted_or_refused_in_one_line(pairs, method):
    overrides = [f"{k}={v}" for k, v in pairs]
    _accepted_or_one_line(lambda: load_config(merge({"method": method},
                                                    parse_overrides(overrides))))


def _check_finite(cfg) -> None:
    """An accepted config holds no NaN or infinite number."""
    def walk(value):
        if isinstance(value, float):
            assert math.isfinite(value), cfg
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
    walk(cfg.to_dict())


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([k for k in KNOWN if "." in k or k in ("epochs", "batch_size")]),
       value=st.sampled_from([".nan", ".inf", "-.inf", "1e999"]))
def test_non_finite_numbers_are_refused(key, value):
    try:
        cfg = load_config(parse_overrides([f"{key}={value}"]))
    except DfkdError as exc:
        assert "\n" not in str(exc)
        return
    _check_finite(cfg)


yaml_leaf = st.one_of(numbers, st.text(max_size=10), st.booleans(), st.none())
yaml_tree = st.recursive(yaml_leaf, lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(KNOWN), st.text(max_size=8)), children,
                    max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(yaml_tree.map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
                     st.sampled_from(ODD_VALUES), st.text(max_size=60)))
def test_recipe_files_are_accepted_or_refused_in_one_line(tmp_path, doc):
    path = tmp_path / "recipe.yaml"
    try:
        path.write_text(doc)
    except (UnicodeEncodeError, ValueError):
        return  # not a file a user could have written
    _accepted_or_one_line(lambda: load_config(read_yaml(path)))
