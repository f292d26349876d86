"""Validation of Generate requests, before they reach the model.

Every problem is reported as one sentence naming the field, the value and
the accepted range, sent back with INVALID_ARGUMENT.
"""

from __future__ import annotations

import math

from cmx.v1 import emulator_pb2
from emulator.profiles import Profiles

__all__ = ["MAX_ID_CHARS", "prompt_tokens", "validate_request"]

# Maximum length of request_id and session_id. Ids are echoed in summaries
# and results, and a longer one is almost certainly a client bug.
MAX_ID_CHARS = 256


def validate_request(
    request: emulator_pb2.GenerateRequest, profiles: Profiles
) -> str | None:
    """Return why `request` is invalid, naming the field and accepted range."""
    return (
        _check_ids(request)
        or _check_token_ids(request, profiles)
        or _check_lengths(request, profiles)
        or _check_hashes(request, profiles)
    )


def prompt_tokens(request: emulator_pb2.GenerateRequest) -> int:
    """Return the prompt length: `input_tokens`, or the count of token ids."""
    return request.input_tokens or len(request.prompt_token_ids)


def _check_token_ids(
    request: emulator_pb2.GenerateRequest, profiles: Profiles
) -> str | None:
    token_ids = request.prompt_token_ids
    if not token_ids:
        return None
    if request.input_tokens not in (0, len(token_ids)):
        return (
            f"input_tokens must be 0 or the count of prompt_token_ids "
            f"({len(token_ids)}), got {request.input_tokens}"
        )
    vocab_size = profiles.model.vocab_size
    largest = max(token_ids)
    if largest >= vocab_size:
        position = list(token_ids).index(largest)
        return (
            f"prompt_token_ids must be below the vocabulary size {vocab_size}, "
            f"got {largest} at position {position}"
        )
    return None


def _check_ids(request: emulator_pb2.GenerateRequest) -> str | None:
    for name in ("request_id", "session_id"):
        value: str = getattr(request, name)
        if len(value) > MAX_ID_CHARS:
            return f"{name} must be at most {MAX_ID_CHARS} characters, got {len(value)}"
        if not value.isprintable():
            return f"{name} must contain only printable characters, got {value!r}"
    return None


def _check_lengths(
    request: emulator_pb2.GenerateRequest, profiles: Profiles
) -> str | None:
    window = profiles.model.max_context_tokens
    input_tokens = prompt_tokens(request)
    if input_tokens < 1:
        return f"input_tokens must be at least 1, got {request.input_tokens}"
    if request.output_tokens < 1:
        return f"output_tokens must be at least 1, got {request.output_tokens}"
    if input_tokens + request.output_tokens > window:
        return (
            f"input_tokens + output_tokens must be at most {window} "
            f"({profiles.model.name} context window), got "
            f"{input_tokens + request.output_tokens}"
        )
    return None


def _check_hashes(
    request: emulator_pb2.GenerateRequest, profiles: Profiles
) -> str | None:
    hashes = request.prefix_block_hashes
    if not hashes:
        return None
    window = profiles.model.max_context_tokens
    if not 1 <= request.block_tokens <= window:
        return (
            f"block_tokens must be in 1..{window} when prefix_block_hashes are "
            f"given, got {request.block_tokens}"
        )
    input_tokens = prompt_tokens(request)
    blocks = math.ceil(input_tokens / request.block_tokens)
    if len(hashes) > blocks:
        return (
            f"prefix_block_hashes has {len(hashes)} blocks of {request.block_tokens} "
            f"tokens but input_tokens {input_tokens} fills only {blocks}"
        )
    seen: dict[int, int] = {}
    for position, block_hash in enumerate(hashes):
        if block_hash in seen:
            # A block's hash covers its whole prefix, so one prompt cannot
            # have two blocks with the same hash.
            return (
                f"prefix_block_hashes must be distinct: positions "
                f"{seen[block_hash]} and {position} both hold {block_hash}"
            )
        seen[block_hash] = position
    return None
