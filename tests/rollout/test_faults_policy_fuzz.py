"""Fuzzing the policy loader: any text is a policy or a ``PolicyError``, nothing else.

``test_policy_hostile`` pins each known attack (bombs, duplicate keys, non-finite numbers,
size, depth, encoding); this draws what nobody listed: random YAML-ish text, and a valid
policy with one value replaced by a value of any type, including ones YAML reads as NaN,
infinities, huge integers, dates, nulls, lists and mappings. The loader either returns a
policy or raises :class:`PolicyError` with at least one issue naming the file; a refusal
never is a traceback.
"""

from __future__ import annotations

import math

import pytest
from fakes import url_policy
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.policy.loader import PolicyError, parse_policy

POLICY = url_policy("fuzz", "http://127.0.0.1:1", "http://127.0.0.1:2", """\
  steps:
    - weight: 10
      pauseSeconds: 0
    - weight: 100
  canary: {maxRequests: 80, concurrency: 2, timeoutSeconds: 20}
  gates:
    - type: latency
      maxRatio: 1.1
    - type: error-rate
      maxRate: 0.05
""")
# The scalar values a hostile edit replaces, one at a time.
SLOTS = ["1.1", "0.05", "80", "2", "20", "10", "0", "100", "fuzz", "latency", "url"]
YAML_VALUES = st.sampled_from([
    ".nan", ".inf", "-.inf", "-1", "0", "1e400", "99999999999999999999999999", "null", "~",
    "[]", "{}", "[1, 2]", "{a: 1}", "2024-01-01", "yes", "'1.1'", '"\\u0000"', "!!binary aGk=",
    "&a 1", "*a", "|\n      text", "0x1F", "0o17", "1_000", "!!python/object:os.system x",
]) | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20).map(
    lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')


def _load(text: str) -> None:
    try:
        policy = parse_policy(text, "fuzz.yaml")
    except PolicyError as e:
        assert e.issues and all(i.file == "fuzz.yaml" for i in e.issues), e
        return
    for gate in policy.spec.gates:  # an accepted policy holds finite numbers only
        for value in gate.model_dump().values():
            assert not (isinstance(value, float) and not math.isfinite(value)), policy


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SLOTS), YAML_VALUES)
def test_one_replaced_value_loads_or_is_a_policy_error(slot: str, value: str) -> None:
    at = POLICY.index(f" {slot}") + 1
    _load(POLICY[:at] + value + POLICY[at + len(slot):])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#\n .,?%@`1\t\\")), max_size=120))
def test_yaml_ish_noise_loads_or_is_a_policy_error(text: str) -> None:
    _load(text)


@pytest.mark.parametrize("cut", range(0, len(POLICY), 37))
def test_a_truncated_policy_is_a_policy_error(cut: int) -> None:
    with pytest.raises(PolicyError):
        parse_policy(POLICY[:cut], "fuzz.yaml")


def test_the_unmutated_policy_loads() -> None:
    """The control: the fuzzed policy is valid as written, so acceptance is possible."""
    assert len(parse_policy(POLICY, "fuzz.yaml").spec.gates) == 2
