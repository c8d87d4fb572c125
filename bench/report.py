#!/usr/bin/env python3
"""Writes docs/BENCHMARKS.md from one run of bench/run.sh.

usage: report.py OUT_DIR REPO_DIR > BENCHMARKS.md

Reads only that run's raw JSON: OUT_DIR/gs/<key>.json (bench/loadgen, one line each) and
OUT_DIR/peers/<peer>.<scenario>.json (the shared peer harness). A figure that is missing or
failed is shown as "-" with the reason listed under "Checks"; nothing is filled in from
elsewhere.
"""
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

OUT, REPO = sys.argv[1], sys.argv[2]
problems = []


def load(path):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        d = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError) as e:
        problems.append(f"{os.path.relpath(path, OUT)}: {e}")
        return None
    if d is not None and "error" in d:
        problems.append(f"{os.path.relpath(path, OUT)}: {d['error']}")
        return None
    return d


GS = {os.path.basename(p)[:-5]: load(p) for p in sorted(glob.glob(f"{OUT}/gs/*.json"))}
PEER = {}
for p in sorted(glob.glob(f"{OUT}/peers/*.json")):
    name = os.path.basename(p)[:-5]
    if ".try" in name or name.endswith(".skipped"):
        continue
    peer, _, scen = name.rpartition(".")
    PEER.setdefault(peer, {})[scen] = load(p)


def g(d, *path):
    for k in path:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def num(x, d=0):
    if x is None:
        return "-"
    if isinstance(x, (int, float)):
        return f"{x:,.{d}f}"
    return str(x)


def ratio(a, b, d=2):
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.{d}f}x"


def sh(cmd, cwd=None):
    try:
        return subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except Exception:
        return ""


out = []
w = out.append

# --- header -------------------------------------------------------------------------------------
elapsed = sh(f"cat {OUT}/elapsed_s")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
peers_md = sh(f"cat {OUT}/peers/RESULTS.md")
m = re.search(r"^Versions: (.*)$", peers_md, re.M)
peer_versions = m.group(1) if m else sh("rustc --version")
build = sh(f"cat {OUT}/build.txt")
runs = sh(f"tail -n1 {OUT}/peers/runs.jsonl")
try:
    runs = json.loads(runs)
except ValueError:
    runs = {}

w("# Benchmarks")
w("")
try:
    run_end = datetime.datetime.fromtimestamp(os.path.getmtime(f"{OUT}/elapsed_s"), datetime.timezone.utc)
except OSError:
    run_end = datetime.datetime.now(datetime.timezone.utc)
w(f"Generated from the run that ended {run_end:%Y-%m-%d %H:%M} UTC, by `bench/run.sh` "
  f"in {num(int(elapsed) if elapsed.isdigit() else None)} s of wall time. Every figure below comes "
  "from that one run; rerun the command to reproduce them, and compare figures as ratios within "
  "one run, never across runs.")
w("")
w(f"Machine: {os.cpu_count()} cores ({cpu}), {mem}, kernel {platform.release()}. **The load "
  "generators run on the same 2 cores as the server under test**, so each figure is server + "
  "client cost together; the CPU table at the end shows who used what, including other processes "
  "on the machine (other engineers' builds and tests share it).")
w("")
phases = [g(d, "phase") for d in GS.values()] + [g(d, "phase") for sc in PEER.values() for d in sc.values()]
phases = [ph for ph in phases if ph and ph.get("wall_s")]
if phases:
    other = sum(ph.get("other_cpu_s") or 0 for ph in phases) / sum(ph["wall_s"] for ph in phases)
    w(f"Machine load: during the measured phases of this run, other processes used on average "
      f"**{other:.2f} of the 2 cores** (see 'other CPU s' per scenario below); figures taken on a "
      "busy machine understate every server, and the ratios between servers measured minutes apart "
      "carry that noise too.")
    w("")
w(f"Versions: {peer_versions}.")
w("")
w("geostream runs at its defaults (`geostream serve --data-dir <fresh dir>`: SQLite store with every "
  "commit synced, in-process broker) except for the per-connection request rate limit, lifted with "
  "`GEOSTREAM_LIMITS__REQUESTS_PER_SEC=100000000 GEOSTREAM_LIMITS__REQUEST_BURST=100000000` in the harness "
  "and in bench/loadgen's scenarios alike: the benchmark's publishers and ping clients send more than "
  "the default 2,000 requests/s per connection on purpose, and no peer limits them.")
w("")
w("geostream build measured (release profile, binary copied at the start of the run):")
w("")
blines = build.splitlines()
changed = [l for l in blines if l.startswith("  ")]
w("```")
w("\n".join(l for l in blines if not l.startswith("  ") and not l.startswith("uncommitted")) or "(no build record)")
if changed:
    dirs = sorted({l.split()[-1].split("/")[0] + ("/" + l.split()[-1].split("/")[1] if "/" in l.split()[-1] else "") for l in changed})
    w(f"uncommitted changes in the tree it was built from: {len(changed)} files, in {', '.join(dirs)}")
w("```")
w("")
knobs = " ".join(f"{k}={os.environ[k]}" for k in ("QUICK", "NO_BUILD", "GS_BIN", "GS_LOADGEN_BIN", "SKIP_PEERS", "ONLY", "PEERS")
                 if os.environ.get(k))
w(f"This run: `{(knobs + ' ') if knobs else ''}bench/run.sh`" + (
  " (NO_BUILD: the release binaries above were built beforehand with the cargo commands run.sh "
  "uses" + (", and copies of them measured" if os.environ.get("GS_BIN") or os.environ.get("GS_LOADGEN_BIN")
            else "") + ")."
  if os.environ.get("NO_BUILD") else "."))
try:
    with open(f"{OUT}/gs/reruns.txt") as f:
        reruns = [l.split() for l in f if l.strip()]
except OSError:
    reruns = []
if reruns:
    last = {}
    for key, *at in reruns:
        last[key] = at[0] if at else "?"
    w("")
    w("Rerun after the full run with `ONLY=...` (same binaries, same `$OUT`), because another process "
      "disturbed them the first time; their figures below are from the rerun: "
      + ", ".join(f"`{k}` ({t} UTC)" for k, t in sorted(last.items())) + ".")
w("")
w("Reproduce: `bench/run.sh` (10-11 minutes plus the release build; `QUICK=1` for a ~6-minute smoke run, "
  "`SKIP_PEERS=1` for geostream only). The raw JSON of this run was in "
  f"`{OUT}`; the per-scenario commands are in the tables' `args` (see Raw results).")
w("")

# --- targets ----------------------------------------------------------------------------------
def best_fanout(size):
    keys = [f"fanout{size}-json", f"fanout{size}-msgpack", f"fanout{size}-msgpack-zstd"]
    vals = [(k, g(GS.get(k), "delivered_per_s"), g(GS.get(k), "lost")) for k in keys if GS.get(k)]
    return vals


nats = PEER.get("nats", {})
sio = PEER.get("socketio", {})
raw = PEER.get("rust-raw", {})
gsj = PEER.get("geostream", {})
gsm = PEER.get("geostream-msgpack", {})


def text_of(name):
    try:
        with open(os.path.join(OUT, "gs", name)) as f:
            return f.read()
    except OSError:
        return ""


def grab(text, pattern):
    m = re.search(pattern, text)
    return float(m.group(1).replace(",", "")) if m else None


FENCE_TXT, HOOK_TXT = text_of("geofences.txt"), text_of("webhooks.txt")
FENCES_N = grab(FENCE_TXT, r"fences: (\d+)")
FENCE_CPS = grab(FENCE_TXT, r"= (\d+) changes/s")
FENCE_EPC = grab(FENCE_TXT, r"\(([\d.]+) per change")
HOOK_DPS = grab(HOOK_TXT, r"= (\d+) deliveries/s")
HOOK_PER = grab(HOOK_TXT, r"\((\d+) per endpoint")


def met(ok):
    return "**met**" if ok else "**missed**"


w("## Targets (DESIGN.md)")
w("")
w("geostream's figures through the peer harness (same load generator as the peers, same run) "
  "for the targets stated against peers; bench/loadgen for the rest.")
w("")
w("| target | geostream | reference | result |")
w("|---|---|---|---|")
for size, scen in (("64 B", "fanout64"), ("1 KiB", "fanout1k")):
    gj, gm = g(gsj.get(scen), "delivered_per_s"), g(gsm.get(scen), "delivered_per_s")
    lj, lm = g(gsj.get(scen), "lost"), g(gsm.get(scen), "lost")
    n, s = g(nats.get(scen), "delivered_per_s"), g(sio.get(scen), "delivered_per_s")
    best = max([x for x in (gj, gm) if x is not None], default=None)
    ok = best is not None and n is not None and s is not None and best >= n and best >= 20 * s \
        and (lj or 0) == 0 and (lm or 0) == 0
    w(f"| fan-out 1,000 subs, {size}: ≥ NATS, ≥ 20x Socket.IO, no loss | JSON {num(gj)}, "
      f"MessagePack {num(gm)} msg/s; lost {num(lj)} / {num(lm)} | NATS {num(n)}; 20x Socket.IO "
      f"{num(None if s is None else 20 * s)} | {met(ok) if best is not None else '-'}: "
      f"best encoding {ratio(best, n)} NATS, {ratio(best, s, 1)} Socket.IO |")
lat = [(k, g(GS.get(f"latency-{k}"), "latency_ms", "p99")) for k in ("json", "msgpack", "msgpack-zstd")]
hp99 = [g(gsj.get("fanout64rate"), "latency_us", "p99"), g(gsm.get("fanout64rate"), "latency_us", "p99")]
lat_ok = [x for _, x in lat if x is not None]
w(f"| p99 < 10 ms at 20 broadcasts/s to 1,000 subs | bench/loadgen p99: "
  + ", ".join(f"{k} {num(x, 1)} ms" for k, x in lat) +
  f"; harness p99 JSON {num(None if hp99[0] is None else hp99[0] / 1000, 1)}, MessagePack "
  f"{num(None if hp99[1] is None else hp99[1] / 1000, 1)} ms | 10 ms; NATS p99 "
  f"{num(None if g(nats.get('fanout64rate'), 'latency_us', 'p99') is None else g(nats.get('fanout64rate'), 'latency_us', 'p99') / 1000, 1)} ms | "
  f"{met(all(x < 10 for x in lat_ok)) if lat_ok else '-'} |")
rj, rm = g(gsj.get("rtt"), "rtt_per_s"), g(gsm.get("rtt"), "rtt_per_s")
rn = g(nats.get("rtt"), "rtt_per_s")
pj, pm = g(gsj.get("rtt"), "latency_us", "p50"), g(gsm.get("rtt"), "latency_us", "p50")
best = max([x for x in (rj, rm) if x is not None], default=None)
p50s = [x for x in (pj, pm) if x is not None]
w(f"| round trips ≥ NATS with 50 clients, p50 < 0.5 ms | JSON {num(rj)}/s (p50 {num(None if pj is None else pj / 1000, 2)} ms), "
  f"MessagePack {num(rm)}/s (p50 {num(None if pm is None else pm / 1000, 2)} ms) | NATS {num(rn)}/s | "
  f"{met(best is not None and rn is not None and best >= rn and min(p50s or [1e9]) < 500) if best else '-'}: {ratio(best, rn)} NATS |")
idle = GS.get("idle")
bpc = g(idle, "server_bytes_per_conn")
conn_ok = (g(idle, "connected") or 0) >= 19000 and (g(idle, "failed") or 0) == 0
w(f"| 19,000 idle connections at ≤ 4,000 B each, model for 1,000,000 | {num(g(idle, 'connected'))} connected, "
  f"{num(bpc)} B/conn (fitted slope {num(g(idle, 'model', 'bytes_per_conn_slope'))} B/conn); 1M would need "
  f"~{num(g(idle, 'model', 'rss_gib_for_1m'), 1)} GiB RSS | 4,000 B; rust-raw {num(g(raw.get('idle'), 'server_bytes_per_conn'))} B at "
  f"{num(runs.get('idle_conns'))} conns | {met(conn_ok and bpc is not None and bpc <= 4000) if idle else '-'} |")
sl = GS.get("spatial-large")
w(f"| 50,000 position updates/s through 100,000 viewport subscriptions | {num(g(sl, 'updates_per_s'))} updates/s "
  f"through {num(g(sl, 'subs'))} subscriptions, {num(g(sl, 'pushes_per_s'))} pushes/s | 50,000/s; Tile38 ~6,000/s with 23,000 fences (DESIGN.md, not measured here) | "
  f"{met((g(sl, 'updates_per_s') or 0) >= 50000 and (g(sl, 'subs') or 0) >= 100000) if sl else '-'} |")
tl = GS.get("tiles")
w(f"| ≥ 1 GB/s of tiles on loopback; one-feature delta ≥ 90% smaller | {num(g(tl, 'tile_mib_per_s'), 1)} MiB/s closed loop, "
  f"{num(g(tl, 'open_loop', 'tile_mib_per_s'), 1)} MiB/s open loop (edit to push p99 {num(g(tl, 'open_loop', 'push_latency_ms', 'p99'), 1)} ms); delta "
  f"{num(g(tl, 'delta_saving_pct'), 1)}% smaller ({num(g(tl, 'delta_pushes'))} deltas) | 1 GB/s; 90% | "
  f"{met((g(tl, 'tile_bytes_per_s') or 0) >= 1e9) if tl else '-'} (throughput), "
  f"{met((g(tl, 'delta_saving_pct') or 0) >= 90) if g(tl, 'delta_saving_pct') is not None else '-'} (delta) |")
ed = {n: g(GS.get(f"edits-{n}"), "edits_per_s") for n in (1, 10, 50)}
beste = max([x for x in ed.values() if x is not None], default=None)
w(f"| geofences: ≥ 50,000 changes/s with 100,000 fences on one layer, ≤ 5 hits per change (issue 20) | "
  f"{num(FENCE_CPS)} changes/s with {num(FENCES_N)} fences, {num(FENCE_EPC, 2)} events per change | 50,000/s | "
  f"{met((FENCE_CPS or 0) >= 50000 and (FENCES_N or 0) >= 100000 and (FENCE_EPC or 9) <= 5) if FENCE_CPS else '-'} |")
w(f"| ≥ 20,000 acknowledged, fsync'd edits/s (SQLite) | " + ", ".join(f"{n} editors {num(x)}/s" for n, x in ed.items()) +
  f" | 20,000/s; Tile38 22,000/s with a once-a-second sync (DESIGN.md) | {met(beste is not None and beste >= 20000) if beste else '-'} |")
w("")
w("Latency in bench/loadgen and in the harness: both read with a 16 KiB WebSocket buffer. Until "
  "December 2026 bench/loadgen kept tungstenite's default of 128 KiB, which tungstenite zero-fills "
  "before every socket read: half of the load generator's CPU went to that `memset` while 1,000 "
  "subscribers read 20 broadcasts a second, and its p99 (16 ms against the harness's 11 ms) was "
  "mostly its own queueing. With 16 KiB, that scenario on that machine (an AMD EPYC) gave p99 "
  "10.7-11.4 ms and half the load generator's CPU. geostream's Rust client and the CLI's "
  "connection use 16 KiB too. The harness and bench/loadgen are different load generators "
  "sharing the two cores with the server, and on some machines their p99s differ by more "
  "than a few milliseconds: compare each with the figures its own generator measured.")
w("")

# --- peers, same harness -------------------------------------------------------------------------
w("## Side by side with the peers (shared peer harness, same load generator, same run)")
w("")
if runs:
    w(f"Harness parameters: idle {num(runs.get('idle_conns'))} connections held {runs.get('idle_hold')} s; fan-out "
      f"{num(runs.get('fan_subs'))} subscribers, closed loop with a window of {runs.get('fan_window')} messages, "
      f"{runs.get('fan_duration')} s; fixed rate {runs.get('fan_rate')} msg/s; rtt {runs.get('rtt_clients')} clients, "
      f"{runs.get('rtt_duration')} s; fresh server per scenario; harness wall time {runs.get('elapsed_s')} s. "
      "Definitions: `../shared/peers/README.md` and `bench/peers/README.md`.")
    w("")
order = ["geostream", "geostream-msgpack", "rust-raw", "nats", "ws", "socketio"]
w("| peer | idle: server B/conn | fan-out 64 B: delivered msg/s | lost | @20 msg/s p50 ms | p99 ms | fan-out 1 KiB: msg/s | lost | rtt: round trips/s | p50 µs | p99 µs |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for p in order + sorted(set(PEER) - set(order)):
    d = PEER.get(p)
    if d is None:
        continue
    ms = lambda x: None if x is None else x / 1000
    w(f"| {p} | {num(g(d.get('idle'), 'server_bytes_per_conn'))} | {num(g(d.get('fanout64'), 'delivered_per_s'))} | "
      f"{num(g(d.get('fanout64'), 'lost'))} | {num(ms(g(d.get('fanout64rate'), 'latency_us', 'p50')), 1)} | "
      f"{num(ms(g(d.get('fanout64rate'), 'latency_us', 'p99')), 1)} | {num(g(d.get('fanout1k'), 'delivered_per_s'))} | "
      f"{num(g(d.get('fanout1k'), 'lost'))} | {num(g(d.get('rtt'), 'rtt_per_s'))} | "
      f"{num(g(d.get('rtt'), 'latency_us', 'p50'))} | {num(g(d.get('rtt'), 'latency_us', 'p99'))} |")
w("")
w("Ratios (geostream / peer; above 1 = geostream ahead; for idle memory and latency, below 1 = geostream ahead):")
w("")
w("| geostream encoding | vs | idle B/conn | fan-out 64 B | p99 @20/s | fan-out 1 KiB | round trips/s |")
w("|---|---|---:|---:|---:|---:|---:|")
for gname, gd in (("JSON", gsj), ("MessagePack", gsm)):
    for p in ("nats", "socketio", "ws", "rust-raw"):
        d = PEER.get(p)
        if not d or not gd:
            continue
        w(f"| {gname} | {p} | {ratio(g(gd.get('idle'), 'server_bytes_per_conn'), g(d.get('idle'), 'server_bytes_per_conn'))} | "
          f"{ratio(g(gd.get('fanout64'), 'delivered_per_s'), g(d.get('fanout64'), 'delivered_per_s'))} | "
          f"{ratio(g(gd.get('fanout64rate'), 'latency_us', 'p99'), g(d.get('fanout64rate'), 'latency_us', 'p99'))} | "
          f"{ratio(g(gd.get('fanout1k'), 'delivered_per_s'), g(d.get('fanout1k'), 'delivered_per_s'))} | "
          f"{ratio(g(gd.get('rtt'), 'rtt_per_s'), g(d.get('rtt'), 'rtt_per_s'))} |")
w("")

# --- geostream, own load generator ----------------------------------------------------------------
w("## geostream in detail (bench/loadgen, all three encodings)")
w("")
w("bench/loadgen speaks protocol v1 through geostream-core's codec, from source addresses "
  "127.0.0.2-127.0.0.41, a fresh server (`geostream serve`, defaults, empty data directory) per "
  "scenario. Each subscriber checks the sequence number of every delivery (loss, gaps, duplicates); "
  "one push in 1,024 is decoded in full with the codec to check the fast path. Latency = receive "
  "time - send time embedded in the payload, over every delivery.")
w("")
w("### Channel fan-out")
w("")
w("| scenario | encoding | subs | payload | mode | published msg/s | delivered msg/s | lost | dup/reorder | p50 ms | p99 ms | p99.9 ms | max ms |")
w("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
fan_keys = [k for k in GS if k.startswith(("fanout", "latency", "slow"))]
for k in sorted(fan_keys, key=lambda k: (k.split("-")[0], k)):
    d = GS[k]
    if d is None:
        w(f"| {k} | - | | | | | | | | | | | failed (see Checks) |")
        continue
    mode = f"{num(d.get('rate_target'))} msg/s" if d.get("rate_target") else f"closed, window {d.get('window')}"
    if d.get("stalled_subs"):
        mode += f", +{d['stalled_subs']} stalled"
    L = d.get("latency_ms", {})
    w(f"| {k} | {d.get('encoding')} | {num(d.get('subs'))} | {num(d.get('size'))} B | {mode} | {num(d.get('publish_rate'), 1)} | "
      f"{num(d.get('delivered_per_s'))} | {num(d.get('lost'))} | {num(d.get('dups_or_reordered'))} | {num(L.get('p50'), 2)} | "
      f"{num(L.get('p99'), 2)} | {num(L.get('p999'), 2)} | {num(L.get('max'), 2)} |")
w("")
w("Closed-loop latency is queueing behind the window (window x subscribers / throughput); compare "
  "latencies at the fixed rate (`latency-*`). `slow-stalled` is `slow-baseline` plus one subscriber "
  "that subscribes and never reads: the fast subscribers' latency and loss should not change.")
w("")
w("### Request round trips (50 clients, one `ping` each in flight)")
w("")
w("| encoding | round trips/s | p50 ms | p99 ms | p99.9 ms | failures |")
w("|---|---:|---:|---:|---:|---:|")
for e in ("json", "msgpack", "msgpack-zstd"):
    d = GS.get(f"rtt-{e}")
    L = g(d, "latency_ms") or {}
    w(f"| {e} | {num(g(d, 'round_trips_per_s'))} | {num(L.get('p50'), 3)} | {num(L.get('p99'), 3)} | {num(L.get('p999'), 3)} | {num(g(d, 'failures'))} |")
w("")
w("### Idle connections")
w("")
if idle:
    w(f"{num(idle.get('connected'))} of {num(idle.get('conns_target'))} connections opened ({num(idle.get('failed'))} failed) "
      f"from {idle.get('procs')} load generator processes in {num(idle.get('ramp_s'), 1)} s; {num(idle.get('alive_at_end'))} "
      f"still open at the end. Server RSS {num(idle.get('server_rss_kb_before'))} KiB before, "
      f"{num(idle.get('server_rss_kb_held'))} KiB held: **{num(idle.get('server_bytes_per_conn'))} bytes per connection**.")
    w("")
    w("| connections | server RSS KiB |")
    w("|---:|---:|")
    for s in idle.get("samples", []):
        w(f"| {num(s.get('conns'))} | {num(s.get('rss_kb'))} |")
    w("")
    mdl = idle.get("model", {})
    w(f"Model (least squares over the ramp samples): RSS ≈ {num(mdl.get('fixed_bytes'))} B + "
      f"{num(mdl.get('bytes_per_conn_slope'))} B x connections, so 1,000,000 connections would need about "
      f"**{num(mdl.get('rss_gib_for_1m'), 1)} GiB** of server RSS, plus kernel socket memory (not in RSS; "
      "about 2-4 KiB per idle TCP socket with empty buffers) and 1,000,000 file descriptors (raise "
      "`nofile` and spread clients over enough source addresses / ports: ~28,000 ephemeral ports per "
      "source IP).")
else:
    w("- (no result; see Checks)")
w("")
w("### Viewport routing (layer.subscribe with a bbox, real AIS replay)")
w("")
w("The trajectory is replayed in file order as `feature.batch` `replace` operations (one layer, "
  "last-writer-wins), as fast as the acknowledgements allow (a window of batches in flight on one "
  "connection); every batch is durable before its acknowledgement. Viewports are squares placed "
  "around random reports of the same trajectory, packed 128 per connection. The load generator "
  "computes independently which viewports each report enters, updates or exits, and compares.")
w("")
w("| subs | conns | box | updates/s in (acked) | pushes/s out | pushes per update | enter exp/got | update exp/got | exit exp/got | p50 ms | p99 ms | p99.9 ms | setup s |")
w("|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|")
for k in ("spatial-small", "spatial-large"):
    d = GS.get(k)
    if not d:
        w(f"| {k}: no result (see Checks) | | | | | | | | | | | | |")
        continue
    e, r, L = d["expected"], d["received"], d.get("latency_ms", {})
    w(f"| {num(d['subs'])} | {num(d['conns'])} | {d['box_deg']}° | {num(d['updates_per_s'])} | {num(d['pushes_per_s'])} | "
      f"{num(d['pushes_per_update'], 2)} | {num(e['enter'])} / {num(r['enter'])} | {num(e['update'])} / {num(r['update'])} | "
      f"{num(e['exit'])} / {num(r['exit'])} | {num(L.get('p50'), 1)} | {num(L.get('p99'), 1)} | {num(L.get('p999'), 1)} | {num(d['setup_s'], 1)} |")
d = GS.get("spatial-large") or GS.get("spatial-small")
if d:
    w("")
    w(f"Track: `{d['track']}` ({num(d['track_rows'])} reports, {num(d['objects'])} vessels); batches of {d['batch']} "
      f"reports, {d['window']} in flight; {num(d['updates_sent'])} reports sent in {d['publish_s']} s.")
w("")
w("### Durable edits (feature.patch with the version held)")
w("")
w("Each editor is one connection patching features of its own; *in flight* is how many of its")
w("requests are outstanding at once (pipelined on the one connection, each on its own feature).")
w("For 64 in flight the server allows 64 per connection (`GEOSTREAM_WEBSOCKET__MAX_INFLIGHT_REQUESTS=64`;")
w("the default, `websocket.max_inflight_requests`, is 16).")
w("")
w("| editors | in flight | edits/s | p50 ms | p99 ms | p99.9 ms | failed |")
w("|---:|---:|---:|---:|---:|---:|---:|")
for key, n, k in (("edits-1", 1, 1), ("edits-10", 10, 1), ("edits-50", 50, 1), ("edits-pipelined", 1, 64)):
    d = GS.get(key)
    L = g(d, "latency_ms") or {}
    w(f"| {n} | {k} | {num(g(d, 'edits_per_s'))} | {num(L.get('p50'), 2)} | {num(L.get('p99'), 2)} | {num(L.get('p999'), 2)} | {num(g(d, 'failed'))} |")
w("")
w("### Tiles")
w("")
d = GS.get("tiles")
if d:
    w(f"Layer: Natural Earth 50m countries ({num(d['features'])} features, vector tiles). {d['clients']} clients each "
      f"hold a `tile.subscribe` in `full` mode over the world at zoom {d['zoom']} ({num(d['tiles_per_round'])} tiles) "
      "and repeatedly say, with `tile.update`, that they hold nothing, so the server pushes every tile again "
      f"(MessagePack `bin`, no base64): **{num(d['tile_mib_per_s'], 1)} MiB/s** of tile push frames "
      f"({num(d['tile_pushes'])} pushes). Deltas: a `delta`-mode subscriber over western Europe at zoom 5; "
      f"{d['delta_edits']} one-property edits of features there gave {num(d['delta_pushes'])} delta pushes averaging "
      f"{num(d['delta_bytes_mean'])} B against {num(d['full_bytes_mean'])} B full tiles: "
      f"**{num(d['delta_saving_pct'], 1)}% smaller**.")
    w("")
    w("Each client waits for all its tiles before asking again. Tiles a client asks for are pushed "
      "at once (only edits wait for the `tiles.flush_ms` window), every client's copy of a tile is "
      "one shared frame, and the writer sends a frame's tile bytes from that shared buffer "
      "(`writev`) instead of copying them per connection: this loop is bounded by the CPU of the "
      "server and the load generator on the same two cores (see the CPU table), so it is the peak "
      "bytes/s of the push path.")
    o = d.get("open_loop")
    if o:
        pl = o.get("push_latency_ms") or {}
        el = o.get("edit_latency_ms") or {}
        w("")
        w(f"Open loop (the push path itself): the same {num(o['clients'])} clients only read, as fast as they can, "
          f"while one editor patches a property of one country after another at {num(o['rate'])} edits/s "
          f"without waiting for answers ({num(o['edits_answered'])} of {num(o['edits_sent'])} answered, "
          f"p99 {num(el.get('p99'), 1)} ms). Each changed tile is rendered once and pushed to every client: "
          f"**{num(o['tile_mib_per_s'], 1)} MiB/s** ({num(o['tile_pushes'])} pushes). From sending an edit to a "
          f"client receiving a tile with it (the first push of a tile under the feature's box at a version "
          f"that includes the edit): p50 **{num(pl.get('p50'), 1)} ms**, p99 **{num(pl.get('p99'), 1)} ms** "
          f"(target: the 50 ms flush + 20 ms); {num(o['pushes_missed'])} (edit, client) pairs never saw one. "
          f"Server CPU {num(g(o, 'phase', 'server_cpu_s'), 2)} s in {num(g(o, 'phase', 'wall_s'), 1)} s. "
          "On top of the window, an edit waits for its own durable commit (the answer's p99 above) and for "
          "the changed tiles to be rendered; a re-render decodes and draws only the features that changed "
          "(the others stay decoded with their drawings per tile, within `tiles.decoded_bytes`).")
else:
    w("- (no result; see Checks)")
w("")

w("### Geofences (in-process benchmarks)")
w("")
if FENCE_CPS:
    w("`cargo bench -p geostream-fence --bench fences`: the fence engine replays the US coastal AIS day "
      "(235,967 positions of 1,185 vessels) as changes of one layer against "
      f"{num(FENCES_N)} fences (boxes, circles and polygons of 100 m to 2 km around the track, a quarter "
      f"also reporting `cross`): **{num(FENCE_CPS)} changes/s** on one core, {num(FENCE_EPC, 2)} events per change "
      "(fences hit); every vessel's events checked to be in logical order (enter, inside..., exit).")
    w("")
    w("```")
    w(FENCE_TXT.strip())
    w("```")
else:
    w("- (no geofence result; see Checks)")
w("")
if HOOK_DPS:
    w("`cargo bench -p geostream-server --bench webhooks`: signed webhook POSTs to 4 local receivers "
      f"(in the same process), one request at a time per endpoint over a kept-alive connection: **{num(HOOK_DPS)} "
      f"deliveries/s** in all, {num(HOOK_PER)} per endpoint.")
    w("")
    w("```")
    w(HOOK_TXT.strip())
    w("```")
else:
    w("- (no webhook result; see Checks)")
w("")

# --- CPU ------------------------------------------------------------------------------------------
w("## CPU during each measured phase")
w("")
w("Seconds of CPU while the measured phase ran: the server, the load generator (with its worker "
  "processes) and everything else on the machine. Where 'other' is large the figure is disturbed.")
w("")
w("| source | scenario | wall s | server CPU s | loadgen CPU s | other CPU s | server RSS MiB at end |")
w("|---|---|---:|---:|---:|---:|---:|")
for k, d in GS.items():
    ph = g(d, "phase") or {}
    w(f"| bench/loadgen | {k} | {num(ph.get('wall_s'), 1)} | {num(ph.get('server_cpu_s'), 2)} | {num(ph.get('loadgen_cpu_s'), 2)} | "
      f"{num(ph.get('other_cpu_s'), 2)} | {num(None if ph.get('server_rss_kb') is None else ph['server_rss_kb'] / 1024, 1)} |")
for p in order:
    for s in ("idle", "fanout64", "fanout64rate", "fanout1k", "rtt"):
        ph = g(PEER.get(p, {}).get(s), "phase") or {}
        if not ph:
            continue
        w(f"| harness | {p} / {s} | {num(ph.get('wall_s'), 1)} | {num(ph.get('server_cpu_s'), 2)} | {num(ph.get('loadgen_cpu_s'), 2)} | "
          f"{num(ph.get('other_cpu_s'), 2)} | {num(None if ph.get('server_rss_kb') is None else ph['server_rss_kb'] / 1024, 1)} |")
w("")

# --- checks ----------------------------------------------------------------------------------------
w("## Checks")
w("")
checks = list(problems)
disturbed = []
for k, d in GS.items():
    if not d:
        continue
    if d.get("lost") and not d.get("stalled_subs"):
        checks.append(f"{k}: {num(d['lost'])} deliveries lost")
    if d.get("verify_failed"):
        checks.append(f"{k}: {d['verify_failed']} pushes failed the full codec check")
    if d.get("errors"):
        checks.append(f"{k}: errors {d['errors'][:3]}")
    ph = d.get("phase") or {}
    if ph.get("wall_s") and (ph.get("other_cpu_s") or 0) / ph["wall_s"] > 0.2:
        disturbed.append((k, ph["other_cpu_s"] / ph["wall_s"]))
for p, sc in PEER.items():
    for s, d in sc.items():
        ph = g(d, "phase") or {}
        if ph.get("wall_s") and (ph.get("other_cpu_s") or 0) / ph["wall_s"] > 0.2:
            disturbed.append((f"{p}/{s}", ph["other_cpu_s"] / ph["wall_s"]))
if disturbed:
    n_all = len(phases)
    lo, hi = min(x for _, x in disturbed), max(x for _, x in disturbed)
    checks.append(f"{len(disturbed)} of {n_all} measurements ran while other processes used more than 0.2 "
                  f"cores ({lo:.2f} to {hi:.2f}): " + ", ".join(k for k, _ in disturbed) +
                  ". Those figures are disturbed; rerun on a quiet machine to compare closely.")
for c in checks or ["none"]:
    w(f"- {c}")
w("")
w("## Raw results")
w("")
w("<details><summary>bench/loadgen: one JSON line per scenario</summary>")
w("")
w("```")
for k, d in GS.items():
    if d is not None:
        w(json.dumps(d, sort_keys=True))
w("```")
w("")
w("</details>")
print("\n".join(out))
