"""schemathesis with every check over the app's own OpenAPI schema: response schemas, status codes, content types,
headers, schema-valid requests accepted, schema-invalid ones rejected, stateful links. The schema must tell the
truth; the one allowance (a documented 400 where a limit depends on the loaded model) is in schemathesis.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import drain_jobs

ROOT = Path(__file__).resolve().parents[2]

# One worker: schemathesis' workers are threads, and on CPython 3.11 two threads building ASTs at once (hypothesis
# parses lambda sources to describe filtered strategies) share the interpreter's AST recursion counter and fail with
# "SystemError: AST constructor recursion depth mismatch" (cf. python/cpython#106905).
# CI hit it once as a schemathesis "Runtime Error" in the coverage phase.


def test_schemathesis_with_every_check_finds_nothing(base_url: str, deployed_app: dict) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [
            str(cli), "--no-color", "--config-file", str(ROOT / "schemathesis.toml"), "run",
            f"{base_url}/openapi.json", "--checks", "all", "--max-examples", "6", "--workers", "1",
            "--request-timeout", "130", "--seed", "20261129",
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=1200,
    )  # fmt: skip
    if "jobs" in deployed_app["config"]["applications"][0].get("args", {}):
        drain_jobs(base_url)  # the content jobs it queued are not left running into the next tests
    summary = done.stdout[-3000:]
    failures = done.stdout.partition("FAILURES")[2].partition("WARNINGS")[0]  # each failure with its reproduction
    tested = next(line for line in summary.splitlines() if line.strip().startswith("Tested:"))
    assert int(tested.split(":")[1]) >= 33, summary  # every operation of the API was exercised (one left out)
    assert done.returncode == 0, failures[:12000] + summary
