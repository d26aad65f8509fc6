"""A burst timed by a C client: ``h2load`` (Debian's ``nghttp2-client``) sends ``n`` requests on ``n`` connections
at once and logs each one's status and latency. A Python client opening hundreds of connections on a 2-core
machine adds seconds of its own (measured: a static 503 from HAProxy took p95 2.5 s through httpx, 37 ms in all
through h2load), so bursts are never timed from Python.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import pct

REFUSED = (429, 503)


def h2load_burst(url: str, path: str, body: dict[str, Any], n: int = 300, accepted: int = 200) -> dict[str, Any]:
    """POST ``body`` to ``url + path`` ``n`` times at once; served (status ``accepted``) and refused, with each
    group's latency."""
    h2load = shutil.which("h2load")
    if h2load is None:
        raise RuntimeError("h2load is missing: `make setup` installs Debian's nghttp2-client (apt)")
    with tempfile.TemporaryDirectory(prefix="burst-") as tmp:
        data, log = Path(tmp) / "body.json", Path(tmp) / "log.tsv"
        data.write_text(json.dumps(body))
        command = [h2load, "--h1", "-n", str(n), "-c", str(n), "-m", "1", "-d", str(data)]
        command += ["-H", "content-type: application/json", "--log-file", str(log), url + path]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    results = [(int(status), int(micros) / 1000) for _, status, micros in rows]
    served = [ms for code, ms in results if code == accepted]
    refused = [ms for code, ms in results if code in REFUSED]
    return {
        "requests": n,
        "answered": len(results),
        "served": len(served),
        "refused": len(refused),
        "other": dict(Counter(code for code, _ in results if code != accepted and code not in REFUSED)),
        "served_p50_ms": pct(served, 0.5),
        "served_p95_ms": pct(served, 0.95),
        "refused_p50_ms": pct(refused, 0.5),
        "refused_p95_ms": pct(refused, 0.95),
        "refused_max_ms": max(refused, default=float("nan")),
    }
