#!/usr/bin/env python3
"""Runs the FinSight benchmarks and regenerates BENCHMARKS.md. Never edit
BENCHMARKS.md by hand: run this script.

    scripts/bench-report.py                 # run every bench target, then write the report
    scripts/bench-report.py --bench flags   # run only these bench targets (repeatable);
                                            # results of the others are kept from earlier runs
    scripts/bench-report.py --no-run        # only rewrite the report from existing results

The bench target `gateway` is the load run of examples/gateway with wrk
(scripts/load-gateway.sh), not a criterion target; it runs with the others.

Sources:
* criterion results, target/criterion/**/new/{benchmark,estimates}.json. A
  comparison is a group `<crate>/<scenario>` with functions `finsight` and
  `peer:<name>`; the report gives both means and the ratio finsight/peer.
* extra figures written by the bench programs through
  `finsight_benches::record`, target/finsight-bench/<crate>.jsonl.
* targets named by the issues, benches/targets/<crate>.json:
  {"<group or record name>": "<target text>"}.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
CRITERION_ARGS = ["--warm-up-time", "1", "--measurement-time", "3"]


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "rustc": sh("rustc", "--version"),
        "redis": sh("redis-server", "--version"),
        "commit": sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
    }


def bench_targets():
    manifest = (ROOT / "benches" / "Cargo.toml").read_text()
    names, in_bench = [], False
    for line in manifest.splitlines():
        s = line.strip()
        if s.startswith("["):
            in_bench = s == "[[bench]]"
        elif in_bench and s.startswith("name"):
            names.append(s.split("=", 1)[1].strip().strip('"'))
    return names + ["gateway"]


def fmt_time(ns):
    if ns < 1_000:
        return f"{ns:.1f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


def fmt_num(v):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def result_dirs():
    """This run's target dir first, then any in FINSIGHT_BENCH_DIRS (colon-separated)."""
    dirs = [TARGET] + [Path(p) for p in os.environ.get("FINSIGHT_BENCH_DIRS", "").split(":") if p]
    return [d for d in dirs if d.exists()]


def criterion_results():
    groups = defaultdict(dict)
    seen = set()
    for base in [d / "criterion" for d in result_dirs()]:
        for bj in base.glob("**/new/benchmark.json"):
            key = bj.relative_to(base)
            if key in seen:
                continue
            seen.add(key)
            read_one(bj, groups)
    return groups


def read_one(bj, groups):
    try:
        b = json.loads(bj.read_text())
        e = json.loads((bj.parent / "estimates.json").read_text())
    except (OSError, ValueError):
        return
    group = b.get("group_id") or b.get("full_id")
    func = b.get("function_id") or b.get("value_str") or "finsight"
    if b.get("value_str") and b.get("function_id"):
        func = f"{b['function_id']}/{b['value_str']}"
    mean = e["mean"]["point_estimate"]
    groups[group][func] = mean
    return groups


def load_targets():
    targets = {}
    for f in sorted((ROOT / "benches" / "targets").glob("*.json")):
        try:
            targets.update(json.loads(f.read_text()))
        except ValueError as err:
            print(f"bench-report: {f}: {err}", file=sys.stderr)
    return targets


def load_records():
    records = defaultdict(list)
    seen = set()
    files = []
    for d in result_dirs():
        for f in sorted((d / "finsight-bench").glob("*.jsonl")):
            if f.name not in seen:
                seen.add(f.name)
                files.append(f)
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                records[r["krate"]].append(r)
    return records


def report(command, note=""):
    m = machine()
    groups = criterion_results()
    records = load_records()
    targets = load_targets()
    out = []
    out.append("# Benchmarks\n")
    out.append("Generated by `scripts/bench-report.py`; do not edit by hand.\n")
    out.append(f"- generated: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, commit `{m['commit']}`")
    out.append(f"- command: `{command}`{note}")
    out.append(f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}")
    out.append(f"- toolchain: {m['rustc']}; {m['redis']}")
    out.append("- criterion times are means; ratio = FinSight time / peer time (below 1.0: FinSight is faster)\n")

    by_crate = defaultdict(list)
    for g in sorted(groups):
        by_crate[g.split("/", 1)[0]].append(g)
    crates = sorted(set(by_crate) | set(records))
    if not crates:
        out.append("No benchmark results yet: run `scripts/bench-report.py`.\n")
    for c in crates:
        out.append(f"## {c}\n")
        if by_crate.get(c):
            out.append("| benchmark | FinSight | peer | peer time | ratio | target |")
            out.append("|---|---|---|---|---|---|")
            for g in by_crate[c]:
                funcs = groups[g]
                ours = {k: v for k, v in funcs.items() if not k.startswith("peer:")}
                peers = {k[5:]: v for k, v in funcs.items() if k.startswith("peer:")}
                for name, ns in sorted(ours.items()):
                    label = g if name == "finsight" else f"{g} ({name})"
                    tgt = targets.get(g, targets.get(label, ""))
                    if peers:
                        for pname, pns in sorted(peers.items()):
                            out.append(f"| {label} | {fmt_time(ns)} | {pname} | {fmt_time(pns)} | {ns / pns:.2f} | {tgt} |")
                    else:
                        out.append(f"| {label} | {fmt_time(ns)} | — | — | — | {tgt} |")
                if not ours:
                    for pname, pns in sorted(peers.items()):
                        out.append(f"| {g} | — | {pname} | {fmt_time(pns)} | — | |")
            out.append("")
        if records.get(c):
            out.append("| measurement | FinSight | peer | peer value | ratio | target |")
            out.append("|---|---|---|---|---|---|")
            for r in records[c]:
                ratio = "—"
                if r.get("peer_value"):
                    ratio = f"{r['value'] / r['peer_value']:.2f}"
                tgt = r.get("target") or targets.get(r["name"], "")
                out.append(
                    f"| {r['name']} | {fmt_num(r['value'])} {r['unit']} | {r.get('peer') or '—'} | "
                    f"{fmt_num(r.get('peer_value'))}{' ' + r['unit'] if r.get('peer_value') is not None else ''} | {ratio} | {tgt} |"
                )
            out.append("")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out).rstrip() + "\n")
    print(f"bench-report: wrote {ROOT / 'BENCHMARKS.md'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="append", help="bench target to run (repeatable)")
    ap.add_argument("--no-run", action="store_true", help="only regenerate the report")
    args = ap.parse_args()
    benches = args.bench or bench_targets()
    command = "scripts/bench-report.py" + "".join(f" --bench {b}" for b in (args.bench or []))
    note = ""
    if args.no_run:
        command += " --no-run"
        note = " (report rewritten from the results of earlier runs)"
    elif args.bench:
        note = " (the other targets' results are kept from their last run in the same target dir)"
    if not args.no_run:
        services = ROOT / "scripts" / "services.sh"
        subprocess.run([str(services)], check=True)
        for b in benches:
            (TARGET / "finsight-bench" / f"{b}.jsonl").unlink(missing_ok=True)
            if b == "gateway":
                cmd = [str(ROOT / "scripts" / "load-gateway.sh")]
            else:
                cmd = ["cargo", "bench", "-p", "finsight-benches", "--bench", b, "--", *CRITERION_ARGS]
            print("bench-report: " + " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
    report(command, note)


if __name__ == "__main__":
    main()
