"""`make reliability`: every fault case against real tritonservers on tiny random-init graphs.

    python -m reliability [--graphs DIR] [--work DIR] [--fast] [--case NAME ...]

Prints one line per case, then `reliability: cases=P/N isolation=K/K collisions=0 hijack_refused=yes
admission_ms=... expiry_s=... rss_growth_mb=... lost=0 overload_admitted=A/OFFERED overload_p99_ms=...
overload_refusal_ms=... server_survived=yes|no`; exits non-zero when any case fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from client.server import ROOT
from reliability.cases import CASES
from reliability.harness import CaseFailure, Harness


def ensure_graphs(graphs: Path) -> Path:
    """Tiny random-init graphs at [70,13] (exported once)."""
    if not (graphs / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "export", "--random-init", "tiny", "--out", str(graphs), "--presets",
                        "70,13"], cwd=ROOT, check=True, capture_output=True)
    return graphs


def summary(h: Harness, passed: int, total: int) -> str:
    f = h.figures
    collisions = f.get("collisions", 0) + sum(c - 1 for c in Counter(h.sequence_ids).values() if c > 1)
    return (f"reliability: cases={passed}/{total} isolation={f.get('isolation', 'n/a')} collisions={collisions} "
            f"hijack_refused={f.get('hijack_refused', 'no')} admission_ms={f.get('admission_ms', 'n/a')} "
            f"expiry_s={f.get('expiry_s', 'n/a')} rss_growth_mb={f.get('rss_growth_mb', 'n/a')} "
            f"lost={f.get('lost', 0)} overload_admitted={f.get('overload_admitted', 'n/a')} "
            f"overload_p99_ms={f.get('overload_p99_ms', 'n/a')} "
            f"overload_refusal_ms={f.get('overload_refusal_ms', 'n/a')} "
            f"server_survived={f.get('server_survived', 'n/a')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability", description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=Path, default=ROOT / "artifacts" / "reliability_graphs")
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "reliability")
    ap.add_argument("--fast", action="store_true", help="only the fast core, at its smaller sizes (as make test)")
    ap.add_argument("--case", nargs="+", help="run only these cases")
    ap.add_argument("--json", type=Path, help="also write every case's figures here")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if (not args.fast or c.fast) and (not args.case or c.name in args.case)]
    if not cases:
        ap.error(f"no such case; cases: {', '.join(c.name for c in CASES)}")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    h = Harness(ensure_graphs(args.graphs), args.work, full=not args.fast)
    results, passed = {}, 0
    try:
        for c in cases:
            t0 = time.monotonic()
            try:
                figures = c.run(h)
                passed += 1
                results[c.name] = {"ok": True, **figures}
                print(f"case {c.name}: ok ({time.monotonic() - t0:.1f} s) {json.dumps(figures)}", flush=True)
            except (CaseFailure, Exception) as exc:  # noqa: BLE001 - a failing case is reported, the rest still run
                results[c.name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                print(f"case {c.name}: FAILED ({time.monotonic() - t0:.1f} s) {type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:600]}", flush=True)
    finally:
        h.close()
    if args.json:
        args.json.write_text(json.dumps({"cases": results, "figures": h.figures}, indent=1))
    print(summary(h, passed, len(cases)), flush=True)
    return 0 if passed == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
