"""A federation of federations against the flat federation of the same organisations
(scripts/hierarchy): bytes crossing the top level per trained token, and held-out loss.

Runs `fedlm up` on Topologies/hierarchy.toml (three regions of three trainers, each region with
its own broker and aggregator) and on Topologies/experiments/standalone/flat-9.toml (the same nine
trainers, data, speeds and budgets under one aggregator), `--runs` times each, alternating.

- Top-level bytes: what crosses the top broker. Flat: every trainer's bytes sent and received
  (its stats.json). Hierarchy: each regional aggregator's uplink's (its stats.json).
- Tokens: the top ledger's accepted tokens (in the hierarchy, the regions report theirs).
- Held-out loss: the top's final model on every data cluster of the demo corpus (`fedlm eval`,
  mean over clusters); and each region's own final model on its region's clusters, against the
  flat model on the same clusters.

Links differ by region (`--links`, default germanic 20 ms / 100 Mbit/s, romance 100 ms /
20 Mbit/s, code 250 ms / 50 Mbit/s): whatever crosses a region's link to the top goes through a
delay relay (scripts/lib/wan_relay.py) with that round trip and rate. In the flat federation
every trainer talks to the top through its region's link; in the hierarchy the regional
aggregator's uplink does, and the region's trainers reach their regional broker directly (a
region is local).
"""

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib

FEDLM = os.environ.get("FEDLM_BIN", ".build/release/fedlm")  # FEDLM_BIN: another build to measure
HIERARCHY = "Topologies/hierarchy.toml"
FLAT = "Topologies/experiments/standalone/flat-9.toml"
# Set from the hierarchical topology in main(): its prepared data, and each region's data
# clusters (those of its trainers), e.g. {"germanic": ["en", "de"], ...}.
HIERARCHY_USED = HIERARCHY
DATA = None
REGIONS = {}


def read_hierarchy(path):
    """The hierarchy's data directory and each region's data clusters."""
    with open(path, "rb") as f:
        t = tomllib.load(f)
    regions = {}
    for r in t["region"]:
        clusters = []
        for trainer in r["trainer"]:
            clusters += [c for c in trainer.get("clusters", []) if c not in clusters]
        regions[r["name"]] = clusters
    return t["data"], regions
TOP = "127.0.0.1:5555"
RELAY_PORT = 5601


def parse_links(text):
    """'germanic=20:100,romance=100:20' -> {region: (rtt ms, Mbit/s)}; 'none' -> {}."""
    if text == "none":
        return {}
    links = {}
    for item in text.split(","):
        region, spec = item.split("=")
        rtt, rate = spec.split(":")
        links[region] = (float(rtt), float(rate))
    return links


def linked(topology, links, out):
    """A copy of `topology` whose connections to the top go through each region's relay: a flat
    trainer's `broker`, a region's `upstream`. Returns its path."""
    with open(HIERARCHY_USED, "rb") as f:
        regions = {r["name"]: [t["name"] for t in r["trainer"]] for r in tomllib.load(f)["region"]}
    port = {r: RELAY_PORT + i for i, r in enumerate(sorted(regions))}
    region_of = {t: r for r, ts in regions.items() for t in ts}
    lines, table = [], None
    for line in open(topology).read().split("\n"):
        lines.append(line)
        if line.startswith("["):
            table = line.strip()
        m = re.match(r'^name = "(.+)"', line)
        if m and table == "[[trainer]]" and region_of.get(m.group(1)) in links:
            lines.append(f'broker = "tcp://127.0.0.1:{port[region_of[m.group(1)]]}"')
        if m and table == "[[region]]" and m.group(1) in links:
            lines.append(f'upstream = "tcp://127.0.0.1:{port[m.group(1)]}"')
    path = os.path.join(out, os.path.basename(topology))
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path, port


def start_relays(links, port):
    relays = []
    for region, (rtt, rate) in links.items():
        relays.append(subprocess.Popen([sys.executable, "scripts/lib/wan_relay.py", f"127.0.0.1:{port[region]}", TOP,
                                        "--rtt-ms", str(rtt), "--rate-mbit", str(rate)]))
    time.sleep(0.5)
    return relays


def newest_checkpoint(run):
    db = sqlite3.connect(os.path.join(run, "ledger.sqlite"))
    (path,) = db.execute("SELECT checkpoint_path FROM versions ORDER BY number DESC LIMIT 1").fetchone()
    return path


def evaluate(checkpoint):
    out = subprocess.run([FEDLM, "eval", "--checkpoint", checkpoint, "--data", DATA, "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    return {c["cluster"]: c["loss"] for c in report["clusters"]}


def stats_bytes(paths):
    total = 0
    for p in paths:
        with open(p) as f:
            s = json.load(f)
        total += s["bytesSent"] + s["bytesReceived"]
    return total


def accepted_tokens(run):
    db = sqlite3.connect(os.path.join(run, "ledger.sqlite"))
    return db.execute("SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE outcome != 'refused'").fetchone()[0]


def run(topology, run_dir, log, links, out):
    path, port = linked(topology, links, out)
    relays = start_relays(links, port)
    try:
        return measure(topology, path, run_dir, log)
    finally:
        for r in relays:
            r.kill()
            r.wait()


def measure(topology, path, run_dir, log):
    with open(log, "w") as f:
        started = subprocess.run(["date", "+%s.%N"], capture_output=True, text=True).stdout
        subprocess.run([FEDLM, "up", path, "--fresh"], stdout=f, stderr=subprocess.STDOUT, check=True)
        ended = subprocess.run(["date", "+%s.%N"], capture_output=True, text=True).stdout
    wall = float(ended) - float(started)
    top = evaluate(newest_checkpoint(run_dir))
    result = {"wall_seconds": wall, "tokens": accepted_tokens(run_dir), "top_losses": top,
              "top_loss": statistics.mean(top.values())}
    if "region" not in tomllib.load(open(topology, "rb")):
        trainers = os.path.join(run_dir, "trainers")
        result["top_bytes"] = stats_bytes([os.path.join(trainers, t, "stats.json") for t in os.listdir(trainers)])
        result["own_losses"] = {r: statistics.mean(top[c] for c in cs) for r, cs in REGIONS.items()}
    else:
        regions = os.path.join(run_dir, "regions")
        result["top_bytes"] = stats_bytes([os.path.join(regions, r, "uplink", "stats.json") for r in os.listdir(regions)])
        result["own_losses"] = {}
        for r, cs in REGIONS.items():
            own = evaluate(newest_checkpoint(os.path.join(regions, r)))
            result["own_losses"][r] = statistics.mean(own[c] for c in cs)
    result["bytes_per_token"] = result["top_bytes"] / max(result["tokens"], 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs of each federation (alternating)")
    parser.add_argument("--out", default="runs/hierarchy-experiment")
    parser.add_argument("--hierarchy", default=HIERARCHY, help="the hierarchical topology (regions as in Topologies/hierarchy.toml)")
    parser.add_argument("--flat", default=FLAT, help="the flat federation of the same trainers")
    parser.add_argument("--only", choices=["flat", "hierarchy"], help="run one of the two (the report then has one column)")
    parser.add_argument("--links", default="germanic=20:100,romance=100:20,code=250:50",
                        help="each region's link to the top as REGION=RTT_MS:MBIT_S, comma-separated, or 'none'")
    args = parser.parse_args()
    global HIERARCHY_USED, DATA, REGIONS
    HIERARCHY_USED = args.hierarchy
    DATA, REGIONS = read_hierarchy(args.hierarchy)
    os.makedirs(args.out, exist_ok=True)
    results = {"flat": [], "hierarchy": []}
    for i in range(args.runs):
        for name, topology in [("flat", args.flat), ("hierarchy", args.hierarchy)]:
            if args.only and name != args.only:
                continue
            with open(topology, "rb") as f:
                run_dir = tomllib.load(f)["run_directory"]
            print(f"==> {name}, run {i + 1} of {args.runs}", flush=True)
            r = run(topology, run_dir, os.path.join(args.out, f"{name}-{i + 1}.log"), parse_links(args.links), args.out)
            print(f"    {r['tokens']} tokens, {r['top_bytes'] / 1e9:.2f} GB across the top ({r['bytes_per_token']:.0f} B/token), "
                  f"held-out loss {r['top_loss']:.4f}, wall {r['wall_seconds']:.0f} s", flush=True)
            results[name].append(r)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(results, f, indent=2)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    if args.only:
        n = args.only
        print(f"\nmedians of {args.runs} runs of {n}: {med(n, 'bytes_per_token'):.0f} bytes across the top per token, "
              f"held-out loss {med(n, 'top_loss'):.4f}, own models " + ", ".join(
                  f"{r} {statistics.median(x['own_losses'][r] for x in results[n]):.4f}" for r in REGIONS) + f", wall {med(n, 'wall_seconds'):.0f} s")
        return

    flat_bpt, hier_bpt = med("flat", "bytes_per_token"), med("hierarchy", "bytes_per_token")
    flat_loss, hier_loss = med("flat", "top_loss"), med("hierarchy", "top_loss")
    print(f"\nmedians of {args.runs} runs each; links to the top: {args.links}")
    print(f"{'':34}{'flat':>12}{'hierarchy':>12}{'ratio':>10}")
    print(f"{'bytes across the top per token':34}{flat_bpt:12.0f}{hier_bpt:12.0f}{flat_bpt / hier_bpt:9.2f}x")
    print(f"{'held-out loss, top model':34}{flat_loss:12.4f}{hier_loss:12.4f}{100 * (hier_loss / flat_loss - 1):+9.2f}%")
    for r in REGIONS:
        f_own = statistics.median(x["own_losses"][r] for x in results["flat"])
        h_own = statistics.median(x["own_losses"][r] for x in results["hierarchy"])
        label = f"{r} ({'+'.join(REGIONS[r])}): own model"
        print(f"{label:34}{f_own:12.4f}{h_own:12.4f}{100 * (h_own / f_own - 1):+9.2f}%")
    print(f"{'wall seconds':34}{med('flat', 'wall_seconds'):12.0f}{med('hierarchy', 'wall_seconds'):12.0f}")
    print(f"(report: {args.out}/report.json; flat's 'own model' is its one model on the region's clusters)")


if __name__ == "__main__":
    main()
