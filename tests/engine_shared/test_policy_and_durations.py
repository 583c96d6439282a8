"""The shared delivery policy and duration parsing behave as the docs say."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from queue_engine.durations import parse_duration, parse_rfc3339
from queue_engine.policy import MAX_RETRY_AFTER, Backoff, DeliveryPolicy, Outcome, Verdict


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5", 1.5),
        (3, 3.0),
        (timedelta(milliseconds=20), 0.02),
    ],
)
def test_durations_people_write(text: str | int | timedelta, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 s", "5x", "s5", "-1s", -1, "1s garbage"])
def test_bad_durations_say_what_is_accepted(bad: str | int) -> None:
    with pytest.raises(ValueError, match=r"(500ms|negative)"):
        parse_duration(bad)


def test_rfc3339_needs_a_zone() -> None:
    assert parse_rfc3339("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="no zone"):
        parse_rfc3339("2026-01-02T03:04:05")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339("tomorrow")


def test_backoff_grows_to_its_cap() -> None:
    backoff = Backoff(initial=1, max=10, multiplier=2)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert 0.9 <= backoff.jittered(1) <= 1.1


def test_retry_after_wins_over_backoff() -> None:
    policy = DeliveryPolicy(backoff=Backoff(initial=5, max=60))
    assert policy.next_delay(1, Outcome.retry("busy", after=0.5)) == 0.5
    assert 4.5 <= policy.next_delay(1, Outcome.retry("busy")) <= 5.5


def test_policy_from_the_yaml_form_and_its_errors() -> None:
    policy = DeliveryPolicy.from_mapping(
        {"maxAttempts": 3, "backoff": {"initial": "100ms", "max": "2s", "multiplier": 3}, "timeout": "5s"}
    )
    assert policy == DeliveryPolicy(3, Backoff(0.1, 2.0, 3.0), 5.0)
    assert DeliveryPolicy.from_mapping(None) == DeliveryPolicy()
    with pytest.raises(ValueError, match=r"unknown key\(s\) backoff.inital, maxAtempts"):
        DeliveryPolicy.from_mapping({"maxAtempts": 3, "backoff": {"inital": "1s"}})
    with pytest.raises(ValueError, match="maxAttempts is 0"):
        DeliveryPolicy.from_mapping({"maxAttempts": 0})
    with pytest.raises(ValueError, match="initial <= max"):
        DeliveryPolicy.from_mapping({"backoff": {"initial": "10s", "max": "1s"}})


def test_unavailable_is_a_retry_that_counts_no_attempt() -> None:
    outcome = Outcome.unavailable("connection refused")
    assert outcome.verdict is Verdict.RETRY and not outcome.attempted
    assert Outcome.retry("x").attempted


@pytest.mark.parametrize("after", [math.inf, float("1e999"), math.nan, -math.inf])
def test_a_retry_after_that_is_not_a_finite_number_falls_back_to_the_backoff(after: float) -> None:
    policy = DeliveryPolicy(backoff=Backoff(initial=5, max=60))
    assert 4.5 <= policy.next_delay(1, Outcome.retry("busy", after=after)) <= 5.5


def test_a_huge_retry_after_is_cut_to_a_day() -> None:
    policy = DeliveryPolicy()
    assert policy.next_delay(1, Outcome.retry("busy", after=2.0**40)) == MAX_RETRY_AFTER == 86_400
