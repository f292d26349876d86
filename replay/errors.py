"""Exceptions raised by the replay package."""

from __future__ import annotations

__all__ = ["ReplayError"]


class ReplayError(Exception):
    """Base class of every error the replay package raises on bad input or setup.

    The message names the bad value and what would be accepted. Failed requests
    are not errors: they become result rows with their gRPC status.
    """
