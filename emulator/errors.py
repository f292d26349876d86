"""Exceptions raised by the emulator package."""

from __future__ import annotations

__all__ = ["ConfigError", "EmulatorError"]


class EmulatorError(Exception):
    """Base class of every error the emulator raises on bad input or config."""


class ConfigError(EmulatorError):
    """A profile or deployment setting that is missing, malformed or out of range."""
