"""Admission control: bounded load, so that overload is refused at once.

A request beyond either bound is refused with RESOURCE_EXHAUSTED before it
reaches the model, instead of waiting in a queue that grows without bound
until every client times out.
"""

from __future__ import annotations

from dataclasses import dataclass

from emulator.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_ACTIVE_REQUESTS",
    "DEFAULT_MAX_QUEUED_PROMPT_TOKENS",
    "AdmissionLimits",
    "admission_problem",
]

# About twice the decode batch capacity of the default deployment
# (160 NPUs x 96 sequences = 15,360): a full batch plus as many waiting.
DEFAULT_MAX_ACTIVE_REQUESTS = 32_768
# 2^24 prompt tokens: about 30 emulated seconds of prefill for the default
# six prefill instances at 5,655 tokens/s per NPU.
DEFAULT_MAX_QUEUED_PROMPT_TOKENS = 16_777_216


@dataclass(frozen=True)
class AdmissionLimits:
    """Bounds on the load the model accepts; raises ConfigError below 1.

    `max_active_requests` counts requests from admission to their last
    token. `max_queued_prompt_tokens` counts prompt tokens waiting for or in
    prefill over all prefill instances.
    """

    max_active_requests: int = DEFAULT_MAX_ACTIVE_REQUESTS
    max_queued_prompt_tokens: int = DEFAULT_MAX_QUEUED_PROMPT_TOKENS

    def __post_init__(self) -> None:
        for name in ("max_active_requests", "max_queued_prompt_tokens"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"admission {name} must be at least 1, got {value}")


def admission_problem(
    limits: AdmissionLimits,
    active_requests: int,
    queued_prompt_tokens: int,
    input_tokens: int,
) -> str | None:
    """Return why a request of `input_tokens` cannot be admitted, or None."""
    if active_requests >= limits.max_active_requests:
        return (
            f"admission limit reached: {active_requests} requests are active and "
            f"max_active_requests is {limits.max_active_requests}; retry later"
        )
    if queued_prompt_tokens + input_tokens > limits.max_queued_prompt_tokens:
        return (
            f"admission limit reached: {queued_prompt_tokens} prompt tokens are "
            f"queued for prefill, and {input_tokens} more would pass "
            f"max_queued_prompt_tokens {limits.max_queued_prompt_tokens}; retry later"
        )
    return None
