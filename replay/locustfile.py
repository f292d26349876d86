"""Ready locustfile: Locust users that send a trace's requests to the emulator.

    locust -f replay/locustfile.py --headless --host 127.0.0.1:50051 \\
        --cmx-trace trace.parquet --cmx-speedup 10 --run-time 10m

`cmx locust` runs Locust with this file. The `--cmx-*` options are described
in `replay.locust_options` and the README (Locust 2.47's `--help` does not
list them); `replay.locust_user` describes what is reported to Locust and
written to Parquet.
"""

from replay.locust_user import GenerateUser

__all__ = ["GenerateUser"]
