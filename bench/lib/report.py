#!/usr/bin/env python3
"""Turn run.sh's rows (results.tsv) and machine notes (meta.txt) into the markdown report.

With several rounds, a target's row is its median round (by req/s) and every ratio is the
median of the per-round ratios, so a ratio always compares two measurements from the same round.
The report ends with the project's targets, each ratio against its threshold (PASS / FAIL); they
are informational, run.sh's exit status does not depend on them.
"""

import csv
import statistics
import sys

ORDER = ["direct", "nginx", "bare", "haproxy-rs256", "haproxy-es256", "hfgate-rs256", "hfgate-es256",
         "hfgate-5rules", "hfgate-500rules", "haproxy-rs256-distinct", "hfgate-rs256-distinct",
         "haproxy-es256-distinct", "hfgate-es256-distinct"]
RULE_TARGETS = ("hfgate-5rules", "hfgate-500rules")
# The full pipeline (authentication, a Cedar decision, the audit line, metrics) with a repeated token.
FULL = "hfgate-5rules"
DISTINCT = ("hfgate-rs256-distinct", "hfgate-es256-distinct")
# The project's targets: (label, subject, other, measure, threshold). measure "rps": subject/other
# req/s must be at least the threshold; "p99": subject/other p99 must be at most the threshold.
TARGETS = [
    ("full pipeline / HAProxy RS256, req/s", FULL, "haproxy-rs256", "rps", 2.0),
    ("full pipeline / nginx, req/s", FULL, "nginx", "rps", 0.85),
    ("full pipeline / nginx, p99 (no worse)", FULL, "nginx", "p99", 1.0),
    ("distinct RS256 / HAProxy distinct RS256, req/s", "hfgate-rs256-distinct", "haproxy-rs256-distinct", "rps", 1.3),
    ("distinct ES256 / HAProxy distinct ES256, req/s", "hfgate-es256-distinct", "haproxy-es256-distinct", "rps", 1.5),
    ("500 rules / 5 rules, req/s", "hfgate-500rules", "hfgate-5rules", "rps", 0.90),
]


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
    # (subject, other, headline): the project's targets in bold, then what explains them.
    candidates = [(t[1], t[2], True) for t in TARGETS if t[3] == "rps"] + [
        (FULL, "direct", False),
        ("bare", "nginx", False),  # the stack alone: the most hfgate's own code could reach
        (FULL, "bare", False),  # what hfgate's work costs on top of its stack
        (FULL, "hfgate-rs256", False),  # what the decision (and 40 more routes) costs
        ("hfgate-500rules", "haproxy-rs256", False),
        ("hfgate-rs256", "haproxy-rs256", False),  # authentication only, no policy
        ("hfgate-rs256", "nginx", False),
        ("hfgate-es256", "haproxy-es256", False),
        ("hfgate-es256", "nginx", False),
        ("hfgate-es256", "hfgate-rs256", False),
        ("hfgate-rs256-distinct", FULL, False),  # a first-seen token against a cached one
        ("hfgate-es256-distinct", "hfgate-rs256-distinct", False),
        ("haproxy-rs256-distinct", "haproxy-rs256", False),  # HAProxy verifies every time either way
        ("haproxy-es256-distinct", "haproxy-es256", False),
    ]
    pairs = [(a, b, h) for a, b, h in candidates if a in measured_targets and b in measured_targets]
    if not any(t.startswith("hfgate-") for t in measured_targets):
        # Without hfgate, still show how the peers relate to the plain proxy and to the upstream.
        peers = [t for t in measured_targets if t.startswith("haproxy-")]
        pairs = [(t, "nginx", False) for t in peers if "nginx" in measured_targets]
        pairs += [(t, "direct", False) for t in ["nginx"] + peers
                  if t in measured_targets and "direct" in measured_targets]
    if pairs:
        w("Ratios (same round; " + ("median over rounds; " if spread else "")
          + "req/s above 1 = the first is faster, latency below 1 = the first answers sooner; "
          + f"the project's targets in bold; `{FULL}` is the full pipeline):")
        w("")
        w("| comparison | req/s ratio | p50 ratio | p99 ratio |")
        w("|---|---:|---:|---:|")
        for subject, other, headline in pairs:
            got = ratio_rows(rows, subject, other)
            label = f"{subject} / {other}"
            label = f"**{label}**" if headline else label
            if not got:
                w(f"| {label} | – | – | – |")
                continue
            rps, p50, p99 = (statistics.median(g[i] for g in got) for i in range(3))
            w(f"| {label} | {rps:.2f} | {p50:.2f} | {p99:.2f} |")
        w("")

    if measured_targets or any(r["status"] == "invalid" for r in rows):
        w("Per target (median round): how busy the proxy core (proxy under test and upstream) and the load")
        w("core (wrk) were, the measured process's and the upstream's share of the proxy core, the part of")
        w("each core used by processes outside the benchmark, the process's thread count, socket errors,")
        w("hfgate's audit lines and, for the distinct-token targets, the tokens: requests sent / of them")
        w("reusing a token / pool size, and for hfgate the different token subjects in its audit file")
        w("against the audit lines that carry one (warm-up included).")
        w("")
        w("| target | proxy core | load core | process CPU | upstream CPU | others on proxy / load core "
          "| threads | socket errors | audit lines | tokens sent / reused / pool | audit subjects |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for target in targets:
            measured = [r for r in rows if r["target"] == target and r["status"] in ("ok", "invalid")]
            if not measured:
                continue
            r = median_row(measured)
            tokens = "–"
            if num(r.get("tokens_sent")) is not None:
                tokens = f"{int(num(r['tokens_sent'])):,} / {int(num(r['tokens_reused'])):,} / {int(num(r['tokens_pool'])):,}"
            subjects = r.get("audit_subjects") or "-"
            subjects = "–" if subjects == "-" else f"{int(num(subjects)):,}"
            w(f"| {target} | {r['cpu_proxy']} % | {r['cpu_load']} % | {r['proc_cpu']} % | {r['upstream_cpu']} % "
              f"| {r['other_proxy']} % / {r['other_load']} % | {r['threads']} "
              f"| {r['err_socket']} | {r['audit_lines']} | {tokens} | {subjects} |")
        w("")
        if "direct" in measured_targets:
            w("`direct` is the upstream itself: its process CPU is the upstream's.")
            w("")

    w("Machine:")
    w("")
    labels = {"idle": "busy before the run"}
    for key in ("host", "cpu", "nproc", "idle", "nginx", "haproxy", "wrk", "openssl", "hfgate", "commit", "tokens"):
        if meta.get(key):
            w(f"- {labels.get(key, key)}: {meta[key]}")
    w("")

    # The project's targets, last: each ratio from this run against its threshold. Informational only.
    w("Targets (ratios measured in this run" + ("; median over rounds" if spread else "")
      + f"; full pipeline = `{FULL}`: authentication, Cedar decision, audit line, metrics):")
    w("")
    w("| target | ratio | threshold | verdict |")
    w("|---|---:|---:|---|")
    for label, subject, other, measure, threshold in TARGETS:
        got = ratio_rows(rows, subject, other)
        bound = f"≥ {threshold:.2f}" if measure == "rps" else f"≤ {threshold:.2f}"
        name = f"{label} (`{subject}` / `{other}`)"
        if not got:
            w(f"| {name} | – | {bound} | not measured |")
            continue
        value = statistics.median(g[0 if measure == "rps" else 2] for g in got)
        passed = value >= threshold if measure == "rps" else value <= threshold
        verdict = "PASS" if passed else "FAIL"
        reused = [r for r in rows if r["target"] == subject and r["status"] == "ok"
                  and (num(r.get("tokens_reused")) or 0) > 0]
        if reused:
            verdict += " (tokens were reused: not a distinct-token measurement)"
        w(f"| {name} | {value:.2f} | {bound} | {verdict} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
