#!/usr/bin/env python3
"""Runs Autobahn test suite cases (with the kosoku runner) against a WebSocket server.

    autobahn_run.py URL OUTDIR [--case PATTERN ...] [--exclude PATTERN ...] [--table FILE]

Writes the Autobahn-format reports (index.json, index.html, one file per case) and
summary.json (one entry per case: id, behavior, close behavior, codes, the runner's
explanation) into OUTDIR. With --table, also writes the case table as Markdown. Exit status:
0 when every case ran and none failed, 1 when some case failed, 2 when the run itself failed.
Used by scripts/autobahn.sh and by crates/geostream-server/tests/autobahn.rs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter, OrderedDict

from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports

# Verdicts that count as passing, as Autobahn defines them.
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def summarize(results) -> list[dict]:
    out = []
    for r in results:
        out.append(
            {
                "id": r.case_id,
                "behavior": r.behavior.value,
                "behavior_close": r.behavior_close.value,
                "remote_close_code": r.remote_close_code,
                "local_close_code": r.local_close_code,
                "result": r.result,
                "result_close": r.result_close,
                "description": r.description,
                "expectation": r.expectation,
                "duration_ms": r.duration,
            }
        )
    out.sort(key=lambda c: case_key(c["id"]))
    return out


def verdict(c: dict) -> str:
    """One verdict per case: the worse of the exchange and the closing handshake."""
    b, bc = c["behavior"], c["behavior_close"]
    if b not in PASSING or bc not in PASSING:
        return "FAILED" if b != "UNIMPLEMENTED" else "UNIMPLEMENTED"
    for v in ("NON-STRICT", "INFORMATIONAL"):
        if v in (b, bc):
            return v
    return "OK"


def table(summary: list[dict], selection: str) -> str:
    groups: "OrderedDict[str, Counter]" = OrderedDict()
    total: Counter = Counter()
    for c in summary:
        g = c["id"].split(".")[0]
        v = verdict(c)
        groups.setdefault(g, Counter())[v] += 1
        total[v] += 1
    cols = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    try:
        from importlib.metadata import version

        runner = f"kosoku {version('kosoku')}"
    except Exception:
        runner = "kosoku"
    lines = [
        f"{runner} fuzzingclient, cases {selection}.",
        "",
        "| cases | run | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for g, cnt in groups.items():
        lines.append(
            f"| {g}.* | {sum(cnt.values())} | " + " | ".join(str(cnt[c]) for c in cols) + " |"
        )
    lines.append(
        f"| **all** | **{sum(total.values())}** | "
        + " | ".join(f"**{total[c]}**" for c in cols)
        + " |"
    )
    lines += [
        "",
        "Every case whose verdict is not OK:",
        "",
        "| case | exchange | closing | server's close code | runner's note |",
        "|---|---|---|---|---|",
    ]
    others = [c for c in summary if verdict(c) != "OK"]
    for c in others:
        note = c["result"] if c["behavior"] != "OK" else c["result_close"]
        note = " ".join(str(note).split()).replace("|", "\\|")
        lines.append(
            f"| {c['id']} | {c['behavior']} | {c['behavior_close']} | "
            f"{c['remote_close_code'] if c['remote_close_code'] is not None else '-'} | {note} |"
        )
    if not others:
        lines.append("| (none) | | | | |")
    return "\n".join(lines) + "\n"


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("outdir")
    ap.add_argument("--case", action="append", default=None)
    ap.add_argument("--exclude", action="append", default=None)
    ap.add_argument("--table", default=None)
    ap.add_argument("--parallelism", type=int, default=1)
    a = ap.parse_args()
    failed = False
    try:
        results = await run_fuzzingclient(
            a.url, a.case, a.exclude, concurrency=a.parallelism
        )
    except FailureError as f:
        results = f.results
        failed = True
    except Exception as e:  # the run itself broke (connection refused, ...)
        print(f"autobahn run failed: {e}", file=sys.stderr)
        return 2
    if not results:
        print("autobahn run selected no case", file=sys.stderr)
        return 2
    os.makedirs(a.outdir, exist_ok=True)
    write_reports(results, a.outdir)
    summary = summarize(results)
    with open(os.path.join(a.outdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    counts = Counter(verdict(c) for c in summary)
    print(
        f"{len(summary)} cases: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    if a.table:
        selection = ", ".join(a.case or ["all"])
        if a.exclude:
            selection += " (except " + ", ".join(a.exclude) + ")"
        with open(a.table, "w") as f:
            f.write(table(summary, selection))
    bad = [c for c in summary if verdict(c) in ("FAILED", "UNIMPLEMENTED")]
    for c in bad:
        print(
            f"FAILED {c['id']}: {c['behavior']}/{c['behavior_close']}: {c['result']} {c['result_close']}",
            file=sys.stderr,
        )
    return 1 if (failed or bad) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
