#!/usr/bin/env python3
"""Charts and a verdict table for a soak (or chaos) run.

    soak_report.py RUN_DIR OUT.svg OUT.md [TITLE]

Reads RUN_DIR/samples.csv (t_s, rss_bytes, fds, outbox_queued_bytes, p99_ms, connections,
delivered; with several nodes, their sums) and RUN_DIR/verdict.json, written by gs-soak; writes one SVG with a panel per
series (no plotting library needed) and a Markdown page with the verdict and the chart.
"""

from __future__ import annotations

import csv
import json
import os
import sys

PANELS = [
    ("rss_bytes", "RSS (MiB)", lambda v: v / (1024 * 1024)),
    ("fds", "open fds", lambda v: v),
    ("outbox_queued_bytes", "outbox queued (KiB)", lambda v: v / 1024),
    ("p99_ms", "p99 publish-to-deliver (ms)", lambda v: v),
    ("connections", "connections", lambda v: v),
]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 130, 70, 20, 24, 26


def nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** (len(str(int(v))) - 1)
    for step in (1, 2, 5, 10):
        if v <= step * mag:
            return step * mag
    return v


def panel(rows, key, label, conv, y0) -> list[str]:
    xs = [float(r["t_s"]) for r in rows]
    ys = [conv(float(r[key])) for r in rows]
    tmax = max(xs) if xs else 1.0
    ymax = nice_max(max(ys) if ys else 1.0)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    out = [
        f'<text x="{PAD_L}" y="{y0 + 16}" font-size="13" font-weight="bold">{label}</text>',
        f'<rect x="{PAD_L}" y="{y0 + PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
        f'<text x="{PAD_L - 6}" y="{y0 + PAD_T + 10}" font-size="11" text-anchor="end">{ymax:g}</text>',
        f'<text x="{PAD_L - 6}" y="{y0 + PAD_T + ph}" font-size="11" text-anchor="end">0</text>',
        f'<text x="{PAD_L + pw}" y="{y0 + H - 8}" font-size="11" text-anchor="end">{tmax:.0f} s</text>',
    ]
    pts = " ".join(
        f"{PAD_L + pw * x / tmax:.1f},{y0 + PAD_T + ph - ph * y / ymax:.1f}"
        for x, y in zip(xs, ys)
    )
    if pts:
        out.append(f'<polyline points="{pts}" fill="none" stroke="#1f6feb" stroke-width="1.5"/>')
    return out


def main() -> int:
    run, svg_path, md_path = sys.argv[1], sys.argv[2], sys.argv[3]
    title = sys.argv[4] if len(sys.argv) > 4 else "soak"
    with open(os.path.join(run, "samples.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(run, "verdict.json")) as f:
        verdict = json.load(f)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(PANELS)}" '
        f'font-family="sans-serif">',
        f'<rect width="100%" height="100%" fill="white"/>',
    ]
    for i, (key, label, conv) in enumerate(PANELS):
        parts += panel(rows, key, label, conv, i * H)
    parts.append("</svg>")
    os.makedirs(os.path.dirname(svg_path) or ".", exist_ok=True)
    with open(svg_path, "w") as f:
        f.write("\n".join(parts) + "\n")
    ok = verdict.get("ok")
    lines = [
        f"# {title} run: {'PASSED' if ok else 'FAILED'}",
        "",
        f"Duration {verdict.get('duration_s')} s; samples every 10 s "
        f"(raw data: samples.csv and verdict.json of the run).",
        "",
        f"![{title} series]({os.path.basename(svg_path)})",
        "",
    ]
    nodes = verdict.get("nodes", 1)
    if nodes > 1:
        lines += [
            f"{nodes} nodes: each series is the nodes added up (RSS, fds, outbox, connections); "
            "a killed node's RSS and fds start afresh when it restarts.",
            "",
        ]
    lines += [
        "| check | value |",
        "|---|---|",
    ]
    for k, v in verdict.items():
        if k in ("failures", "ok"):
            continue
        if isinstance(v, float):
            v = f"{v:.3f}"
        lines.append(f"| {k} | {v} |")
    lines += ["", "Failures:" if verdict.get("failures") else "Failures: none.", ""]
    for fl in verdict.get("failures", []):
        lines.append(f"- {fl}")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
