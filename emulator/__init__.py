"""Model of a CloudMatrix384 supernode serving an MoE model, and its gRPC server.

The model runs on a discrete-event core whose clock is passed in: `serve`
paces it against the wall clock, and the same code can run in virtual time.
"""

from emulator.errors import ConfigError, EmulatorError

__all__ = ["ConfigError", "EmulatorError"]
