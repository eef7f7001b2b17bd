"""Deadlines that add up: the planning deadline from the model settings, refused at start when
a job could not outlive it."""

from __future__ import annotations

import pytest

from bot.deadlines import planning_deadline
from bot.settings import Settings
from bot.startup_checks import Process, deadline_refusals, refusals


@pytest.mark.parametrize(
    ("timeout", "retries", "models", "parallel", "expected"),
    [
        (25, 1, 1, 0, 2 * (2 * 25 + 0.5)),  # the default: 101 s
        (30, 2, 1, 0, 2 * (3 * 30 + 0.5 + 1.0)),  # the old default: 183 s
        (1, 0, 1, 0, 2.0),  # no retries: an answer and a repair
        (10, 1, 3, 0, 2 * (2 * 10 + 0.5)),  # three models at once: one wave
        (10, 1, 3, 1, 3 * 2 * (2 * 10 + 0.5)),  # one at a time: three waves
        (10, 1, 3, 2, 2 * 2 * (2 * 10 + 0.5)),
        (10, 5, 1, 0, 2 * (6 * 10 + 0.5 + 1 + 2 + 4 + 8)),  # backoff capped at 8 s
    ],
)
def test_the_planning_deadline_adds_up(
    timeout: float, retries: int, models: int, parallel: int, expected: float
) -> None:
    assert planning_deadline(timeout, retries, models, parallel) == pytest.approx(expected)


def _settings(**env: str) -> Settings:
    return Settings.from_env({"SOPHIE_LLM_API_KEY": "sk-test", **env})


def test_the_defaults_fit_in_a_job() -> None:
    assert deadline_refusals(_settings()) == []
    assert deadline_refusals(Settings.from_env({})) == []  # offline planner: no model to wait


@pytest.mark.parametrize("process", ["serve", "worker"])
def test_a_planning_deadline_longer_than_a_job_is_refused(process: Process) -> None:
    settings = _settings(SOPHIE_LLM_TIMEOUT="30", SOPHIE_LLM_RETRIES="2")
    (refusal,) = [r for r in refusals(settings, process) if r.variable == "SOPHIE_JOB_TIMEOUT"]
    assert "Planning may take 183 s" in refusal.message
    assert "Set SOPHIE_JOB_TIMEOUT to at least 193" in refusal.message
    assert "SOPHIE_LLM_TIMEOUT" in refusal.message and "SOPHIE_LLM_RETRIES" in refusal.message
    longer = _settings(SOPHIE_LLM_TIMEOUT="30", SOPHIE_LLM_RETRIES="2", SOPHIE_JOB_TIMEOUT="193")
    assert deadline_refusals(longer) == []


def test_more_models_one_at_a_time_need_a_longer_job() -> None:
    settings = _settings(SOPHIE_LLM_MODELS="a/one,b/two", SOPHIE_LLM_PARALLEL="1")
    (refusal,) = deadline_refusals(settings)
    assert "2 model(s)" in refusal.message and "SOPHIE_LLM_PARALLEL=1" in refusal.message
