"""schemathesis with every check over the app's own OpenAPI schema: response schemas, status codes, content types,
headers, schema-valid requests accepted, schema-invalid ones rejected, stateful links. The schema must tell the
truth; the one allowance (a documented 400 where a limit depends on the loaded model) is in schemathesis.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Two schemathesis processes, each with one worker, over two halves of the API. Not one process with two workers:
# schemathesis' workers are threads, and on CPython 3.11 two threads building ASTs at once (hypothesis parses
# lambda sources to describe filtered strategies) share the interpreter's AST recursion counter and fail with
# "SystemError: AST constructor recursion depth mismatch" (cf. python/cpython#106905); CI hit it once as a
# schemathesis "Runtime Error" in the coverage phase. Processes share nothing, and one worker alone took 233 s
# here. The text routes are one half (the slowest, no links to the rest); everything else, links included, is
# the other.
TEXT_ROUTES = "^/v1/(completions|chat/completions)$"


def schemathesis(base_url: str, log: Path, *selection: str) -> subprocess.Popen[bytes]:
    """One schemathesis run in the background, its output in ``log`` (a file: a full pipe would stall it)."""
    cli = Path(sys.executable).with_name("schemathesis")
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                str(cli), "--no-color", "--config-file", str(ROOT / "schemathesis.toml"), "run",
                f"{base_url}/openapi.json", "--checks", "all", "--max-examples", "10", "--workers", "1",
                "--request-timeout", "130", "--seed", "20261129", *selection,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_schemathesis_with_every_check_finds_nothing(base_url: str, tmp_path: Path) -> None:
    logs = [tmp_path / "text.log", tmp_path / "rest.log"]
    runs = [
        # The text routes have no links: no stateful phase for them (it would fail for want of links).
        schemathesis(base_url, logs[0], "--include-path-regex", TEXT_ROUTES, "--phases", "examples,coverage,fuzzing"),
        schemathesis(base_url, logs[1], "--exclude-path-regex", TEXT_ROUTES),
    ]
    tested = 0
    for run, log in zip(runs, logs, strict=True):
        run.wait(timeout=1200)
        summary = log.read_text(errors="replace")[-6000:]
        line = next(line for line in summary.splitlines() if line.strip().startswith("Tested:"))
        tested += int(line.split(":")[1])
        assert run.returncode == 0, summary
    assert tested >= 23  # every operation of the API was exercised
