"""Helpers shared by the `cmx trace` subcommands: outputs and progress bars.

Every command that writes a file writes it to a temporary name beside the
output and renames it into place at the end, so a failed run leaves no
half-written file at the output path. An existing output is rejected
unless `--force` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from traces.errors import TraceError

__all__ = [
    "add_output_arguments",
    "atomic_output",
    "check_output",
    "is_same_file",
    "progress_bar",
    "write_output",
]


def add_output_arguments(parser: argparse.ArgumentParser, metavar: str) -> None:
    """Add the required `-o/--output` and the `--force` options."""
    parser.add_argument(
        "-o", "--output", required=True, metavar=metavar, help="file to write"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the output file if it exists"
    )


def check_output(output: Path, force: bool) -> Path:
    """Reject an output path that cannot be written, before any work starts."""
    if output.is_dir():
        raise TraceError(f"{output}: output is a folder; give a file name")
    if output.exists() and not force:
        raise TraceError(f"{output}: file exists; pass --force to replace it")
    if not output.parent.is_dir():
        raise TraceError(f"{output}: output folder {output.parent} does not exist")
    return output


def is_same_file(first: Path, second: Path) -> bool:
    """Return whether two paths name the same file, through links too, or would."""
    try:
        return first.samefile(second)
    except OSError:  # one of them does not exist yet
        return first.resolve() == second.resolve()


@contextlib.contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """Yield a temporary path beside `output`, renamed to `output` on success.

    The temporary file is removed when the block raises. An OSError while
    writing or renaming becomes a TraceError naming the output.
    """
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise TraceError(f"{output}: cannot write the file ({error})") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_output(args: argparse.Namespace, write: Callable[[Path], int]) -> int:
    """Write `args.output` (honouring `--force`) through `write`; return 0.

    `write` fills the temporary path it is given and returns the number of
    requests written, which is printed with the output path.
    """
    output = check_output(Path(args.output), args.force)
    with atomic_output(output) as temporary:
        rows = write(temporary)
    print(f"wrote {rows} requests to {output}")
    return 0


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, in_bytes: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield a callback that moves a progress bar on stderr to a count.

    The bar shows only when stderr is a terminal; otherwise the callback
    does nothing.
    """
    if not sys.stderr.isatty():
        yield lambda completed: None
        return
    count_column = DownloadColumn() if in_bytes else MofNCompleteColumn()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        count_column,
        TimeRemainingColumn(),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda completed: progress.update(task, completed=completed)
