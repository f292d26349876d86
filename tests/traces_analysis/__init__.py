"""Tests of traces.analysis and the `cmx analyze` subcommand."""
