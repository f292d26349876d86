"""A view into Generate streams as `replay.client.generate` reads them.

`generate` keeps only the first and last token timestamps of a stream. The
inter-token metrics need every gap, so the runner hands `generate` an
`ObservedStub`: it forwards each call to the real stub and passes every
token chunk to a `TokenGaps` on the way. Nothing else about the call changes:
cancelling, errors and any other attribute go to the real call object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.metrics import TokenGaps

__all__ = ["ObservedStub"]


class ObservedStub:
    """Stands in for an EmulatorStub for one call, recording its token gaps.

    `gaps` receives the chunks of the Generate call made through this stub.
    """

    def __init__(self, stub: emulator_pb2_grpc.EmulatorStub, gaps: TokenGaps) -> None:
        self._stub = stub
        self.gaps = gaps

    def Generate(  # noqa: N802 - name fixed by the generated stub
        self, request: emulator_pb2.GenerateRequest, **kwargs: Any
    ) -> _ObservedCall:
        """Start the call on the real stub and return it wrapped."""
        return _ObservedCall(self._stub.Generate(request, **kwargs), self.gaps)


class _ObservedCall:
    """Async iterator over a call's responses that records each chunk's timestamps."""

    def __init__(self, call: Any, gaps: TokenGaps) -> None:
        self._call = call
        self._gaps = gaps
        self._responses: AsyncIterator[emulator_pb2.GenerateResponse] | None = None

    def __aiter__(self) -> _ObservedCall:
        self._responses = self._call.__aiter__()
        return self

    async def __anext__(self) -> emulator_pb2.GenerateResponse:
        assert self._responses is not None, "iterate with 'async for'"
        response = await self._responses.__anext__()
        if response.WhichOneof("kind") == "chunk":
            self._gaps.add_chunk(response.chunk.emulated_ms)
        return response

    def __getattr__(self, name: str) -> Any:
        # cancel(), code(), details() and the rest act on the real call.
        return getattr(self._call, name)
