#!/usr/bin/env python3
"""Turn run.sh's rows (results.tsv) and machine notes (meta.txt) into the markdown report.

With several rounds, a target's row is its median round (by req/s) and every ratio is the
median of the per-round ratios, so a ratio always compares two measurements from the same round.
"""

import csv
import statistics
import sys

ORDER = ["direct", "nginx", "haproxy-rs256", "haproxy-es256", "hfgate-rs256", "hfgate-es256",
         "hfgate-5rules", "hfgate-500rules"]
RULE_TARGETS = ("hfgate-5rules", "hfgate-500rules")
# (subject, other): the smallest req/s ratio the project requires.
REQUIREMENTS = {("hfgate-500rules", "hfgate-5rules"): 0.90}


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load(path):
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            row["round"] = int(row["round"])
            requests, duration = num(row["requests"]), num(row["duration_us"])
            row["rps"] = requests / (duration / 1e6) if requests is not None and duration else None
            row["note"] = (row.get("note") or "").replace("|", "\\|")  # keeps the markdown table whole
            rows.append(row)
    return rows


def ms(us):
    value = num(us)
    return "–" if value is None else f"{value / 1000:.2f} ms"


def median_row(rows):
    """The round whose req/s is the median (lower middle for an even count)."""
    ordered = sorted(rows, key=lambda r: r["rps"])
    return ordered[(len(ordered) - 1) // 2]


def ratio_rows(rows, subject, other):
    """Per-round (req/s, p50, p99) ratios subject/other for the rounds where both are valid."""
    by_round = {}
    for row in rows:
        if row["status"] == "ok":
            by_round.setdefault(row["round"], {})[row["target"]] = row
    out = []
    for pair in by_round.values():
        if subject in pair and other in pair:
            a, b = pair[subject], pair[other]
            out.append((a["rps"] / b["rps"],
                        num(a["p50_us"]) / max(num(b["p50_us"]), 1),
                        num(a["p99_us"]) / max(num(b["p99_us"]), 1)))
    return out


def main():
    tsv, meta_path = sys.argv[1], sys.argv[2]
    rows = load(tsv)
    meta = {}
    with open(meta_path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            meta[key] = value

    targets = [t for t in ORDER if any(r["target"] == t for r in rows)]
    rounds = max((r["round"] for r in rows), default=1)
    out = []
    w = out.append

    w(f"# hfgate benchmark — {meta.get('date', '')}")
    w("")
    w(f"{meta.get('load', '')}; {meta.get('pinning', '')}.")
    w("")
    spread = rounds > 1
    w("| target | req/s | p50 | p99 |" + (" req/s range |" if spread else "") + " note |")
    w("|---|---:|---:|---:|" + ("---:|" if spread else "") + "---|")
    for target in targets:
        mine = [r for r in rows if r["target"] == target]
        measured = [r for r in mine if r["status"] in ("ok", "invalid")]
        if not measured:
            reason = mine[0]["note"] if mine else ""
            status = mine[0]["status"].upper() if mine else ""
            w(f"| {target} | – | – | – |" + (" – |" if spread else "") + f" {status}: {reason} |")
            continue
        best = median_row(measured)
        note = best["note"]
        if best["status"] == "invalid":
            note = f"INVALID: {note}"
        failed = [r for r in mine if r["status"] == "failed"]
        if failed:
            note = (note + "; " if note else "") + f"{len(failed)} round(s) failed: {failed[0]['note']}"
        cell = f"| {target} | {best['rps']:,.0f} | {ms(best['p50_us'])} | {ms(best['p99_us'])} |"
        if spread:
            lo = min(r["rps"] for r in measured)
            hi = max(r["rps"] for r in measured)
            cell += f" {lo:,.0f}–{hi:,.0f} |"
        w(cell + f" {note} |")
    w("")

    measured_targets = [t for t in targets if any(r["target"] == t and r["status"] == "ok" for r in rows)]
    subjects = [t for t in ("hfgate-rs256", "hfgate-es256") if t in measured_targets]
    pairs = []
    for subject in subjects:
        alg = subject.split("-")[1]
        others = [f"haproxy-{alg}", "nginx", "direct"] + [
            t for t in measured_targets
            if t.startswith(("haproxy-", "hfgate-")) and t not in (subject, f"haproxy-{alg}") + RULE_TARGETS]
        pairs += [(subject, o, o == f"haproxy-{alg}") for o in others if o in measured_targets]
    # Authorization rules (RS256 token): 500 against 5 rules is the headline, then what the rules
    # (with their 40 extra routes) cost against no rules, and where that leaves hfgate next to HAProxy.
    small, large = RULE_TARGETS
    rule_pairs = [(large, small, True), (small, "hfgate-rs256", False), (large, "hfgate-rs256", False),
                  (small, "haproxy-rs256", False), (large, "haproxy-rs256", False)]
    pairs += [(a, b, h) for a, b, h in rule_pairs if a in measured_targets and b in measured_targets]
    # A required ratio whose targets did not both measure still gets its row, saying so.
    for (a, b) in REQUIREMENTS:
        if (a in targets or b in targets) and not any(p[:2] == (a, b) for p in pairs):
            pairs.append((a, b, True))
    if not pairs:
        # Without hfgate, still show how the peers relate to the plain proxy and to the upstream.
        peers = [t for t in measured_targets if t.startswith("haproxy-")]
        pairs = [(t, "nginx", False) for t in peers if "nginx" in measured_targets]
        pairs += [(t, "direct", False) for t in ["nginx"] + peers
                  if t in measured_targets and "direct" in measured_targets]
    if pairs:
        w("Ratios (same round; " + ("median over rounds; " if spread else "")
          + "req/s above 1 = the first is faster, latency below 1 = the first answers sooner):")
        w("")
        required = any(p[:2] in REQUIREMENTS for p in pairs)
        w("| comparison | req/s ratio | p50 ratio | p99 ratio |" + (" requirement |" if required else ""))
        w("|---|---:|---:|---:|" + ("---|" if required else ""))
        for subject, other, headline in pairs:
            got = ratio_rows(rows, subject, other)
            label = f"{subject} / {other}"
            label = f"**{label}**" if headline else label
            minimum = REQUIREMENTS.get((subject, other))
            if not got:
                verdict = f" req/s ≥ {minimum:.2f}: not measured |" if minimum else " |"
                w(f"| {label} | – | – | – |" + (verdict if required else ""))
                continue
            rps, p50, p99 = (statistics.median(g[i] for g in got) for i in range(3))
            verdict = ""
            if minimum:
                verdict = f" req/s ≥ {minimum:.2f}: **{'met' if rps >= minimum else 'NOT MET'}** |"
            elif required:
                verdict = " |"
            w(f"| {label} | {rps:.2f} | {p50:.2f} | {p99:.2f} |" + verdict)
        w("")

    if measured_targets or any(r["status"] == "invalid" for r in rows):
        w("Per target (median round): how busy the proxy core and the load core were, the measured")
        w("process's own share of one core, the part of each core used by processes outside the benchmark,")
        w("the process's thread count, socket errors, and hfgate's audit lines.")
        w("")
        w("| target | proxy core | load core | process CPU | others on proxy / load core | threads "
          "| socket errors | audit lines |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for target in targets:
            measured = [r for r in rows if r["target"] == target and r["status"] in ("ok", "invalid")]
            if not measured:
                continue
            r = median_row(measured)
            w(f"| {target} | {r['cpu_proxy']} % | {r['cpu_load']} % | {r['proc_cpu']} % "
              f"| {r['other_proxy']} % / {r['other_load']} % | {r['threads']} "
              f"| {r['err_socket']} | {r['audit_lines']} |")
        w("")
        if "direct" in measured_targets:
            w("`direct` is the upstream itself, so its process runs on the load core.")
            w("")

    w("Machine:")
    w("")
    labels = {"idle": "busy before the run"}
    for key in ("host", "cpu", "nproc", "idle", "nginx", "haproxy", "wrk", "openssl", "hfgate", "commit"):
        if meta.get(key):
            w(f"- {labels.get(key, key)}: {meta[key]}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
