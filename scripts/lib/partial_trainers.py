"""Partial trainers measured (scripts/partial-trainers): their peak memory against a budget, and
what three of them add to a federation of two full trainers.

1. Memory: one trainer of the `small` shape trains a few rounds alone in a federation, first the
   whole model (its peak is the reference F), then with memory budgets of F/2 and F/4 (the
   planner's choice), and F/2 with micro-batches pinned to the whole batch (a partial trainer in
   the strict sense: the top blocks only). Peaks are the processes' VmHWM (stats.json).
2. Value: two full trainers with fixed token budgets, alone and joined by three partial trainers
   at budgets of F/2 and F/4 (the planner's choice), or training only the top block, every
   trainer on all clusters of the demo corpus with its own batches; the held-out loss of the
   final model (`fedlm eval`) and the wall time of each run.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

FEDLM = os.environ.get("FEDLM_BIN", ".build/release/fedlm")
MODEL = "Config/experiments/small-federated.toml"
DATA = "runs/demo-data/shards"


SERVER = {"sgd": ['server_optimizer = "sgd"', "server_learning_rate = 1.0"],
          "nesterov": ['server_optimizer = "nesterov"', "server_learning_rate = 0.7", "server_momentum = 0.9"]}
server = "sgd"
extra_aggregation = []


def topology(path, run, port, trainers, buffer_size=2):
    lines = [f'name = "partial"', f'run_directory = "{run}"', f'model = "{MODEL}"', f'data = "{DATA}"', "[broker]"]
    for i, key in enumerate(["trainers", "aggregator", "publish", "releases"]):
        lines.append(f'{key} = "tcp://127.0.0.1:{port + i}"')
    lines += ["[aggregation]", 'mode = "fedbuff"', f"buffer_size = {buffer_size}"] + SERVER[server] + ["checkpoint_every = 1", "keep_checkpoints = 2", "evaluate_every = 1000"]
    lines += extra_aggregation
    for t in trainers:
        lines.append("[[trainer]]")
        for k, v in t.items():
            lines.append(f"{k} = {json.dumps(v)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def up(name, trainers, port, out, buffer_size=2):
    run = os.path.join(out, name)
    shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run)
    path = os.path.join(out, name + ".toml")
    topology(path, run, port, trainers, buffer_size)
    t0 = time.time()
    result = subprocess.run([FEDLM, "up", path], capture_output=True, text=True)
    seconds = time.time() - t0
    if result.returncode != 0:
        sys.exit(f"{name}: fedlm up failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    stats = {}
    for t in trainers:
        with open(os.path.join(run, "trainers", t["name"], "stats.json")) as f:
            stats[t["name"]] = json.load(f)
    plans = {}
    for log in os.listdir(os.path.join(run, "logs")):
        with open(os.path.join(run, "logs", log), errors="replace") as f:
            for line in f:
                m = re.search(r"\[(.+?)\] memory budget .*?: training (.*)", line)
                if m:
                    plans[m.group(1)] = m.group(2).strip()
    return run, seconds, stats, plans


def evaluate(run):
    checkpoints = sorted((d for d in os.listdir(os.path.join(run, "checkpoints")) if d.startswith("v")), key=lambda d: int(d[1:]))
    latest = os.path.join(run, "checkpoints", checkpoints[-1])
    result = subprocess.run([FEDLM, "eval", "--checkpoint", latest, "--data", DATA, "--json"], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    losses = {c["cluster"]: c["loss"] for c in report["clusters"]} if "clusters" in report else report
    return checkpoints[-1], losses


def mib(b):
    return b / 2**20


def memory(out, port, steps):
    tokens = steps * 16 * 256
    base = {"local_steps": 4, "tokens": tokens}
    rows = []
    _, seconds, stats, _ = up("memory-full", [dict(name="full", **base)], port, out)
    full = stats["full"]["peakResidentBytes"]
    rows.append(("whole model", "-", "-", mib(full), stats["full"]["tokens"] / stats["full"]["trainingSeconds"]))
    for label, budget, extra in [("budget F/2", full // 2, {}), ("budget F/4", full // 4, {})]:
        t = dict(name="part", memory_budget=f"{budget // 2**20}MiB", **base, **extra)
        _, seconds, stats, plans = up("memory-" + re.sub(r"[^a-z0-9]+", "-", label.lower()), [t], port, out)
        s = stats["part"]
        rows.append((label, f"{mib(budget):.0f}", plans.get("part", "?"), mib(s["peakResidentBytes"]), s["tokens"] / s["trainingSeconds"]))
    return full, rows


def value(out, port, full_peak, tokens, partial_tokens, steps, buffer=None, variants=None, partial_steps=None):
    half, quarter = f"{full_peak // 2 // 2**20}MiB", f"{full_peak // 4 // 2**20}MiB"
    fulls = [{"name": f"full-{i}", "local_steps": steps, "tokens": tokens} for i in (1, 2)]

    def partials(extra):
        return [{"name": f"part-{i}", "local_steps": partial_steps or steps, "tokens": partial_tokens, **extra} for i in (1, 2, 3)]
    results = []
    runs = [("two-full", fulls), ("+3 at budget F/2", fulls + partials({"memory_budget": half})),
            ("+3 at budget F/4", fulls + partials({"memory_budget": quarter}))]
    for name, trainers in [r for r in runs if variants is None or r[0] in variants]:
        # FedBuff's buffer as large as the federation (K = trainers): each aggregate averages about
        # one update from everyone, as FedBuff advises for K against concurrency.
        run, seconds, stats, plans = up(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), trainers, port, out,
                                        buffer_size=buffer or len(trainers))
        checkpoint, losses = evaluate(run)
        results.append({"run": name, "seconds": seconds, "checkpoint": checkpoint, "losses": losses,
                        "tokens": {k: v["tokens"] for k, v in stats.items()}, "plans": plans,
                        "peaks": {k: mib(v.get("peakResidentBytes") or 0) for k, v in stats.items()}})
    return f"F/2 = {half}, F/4 = {quarter}", results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/partial-trainers")
    p.add_argument("--port", type=int, default=6900)
    p.add_argument("--memory-steps", type=int, default=8)
    p.add_argument("--tokens", type=int, default=163840, help="each full trainer's token budget")
    p.add_argument("--partial-tokens", type=int, default=163840, help="each partial trainer's token budget")
    p.add_argument("--local-steps", type=int, default=8)
    p.add_argument("--partial-local-steps", type=int, help="the partial trainers' H (default: --local-steps)")
    p.add_argument("--only", choices=["memory", "value"])
    p.add_argument("--buffer-size", type=int, help="FedBuff's K in the value runs (default: the number of trainers)")
    p.add_argument("--server", choices=sorted(SERVER), default="sgd", help="the aggregator's outer optimizer (default sgd at 1.0)")
    p.add_argument("--aggregation", action="append", default=[],
                   help="an extra [aggregation] line for the value runs, e.g. 'partial_updates = \"immediate\"' (repeatable)")
    p.add_argument("--data", help="prepared data directory (default runs/demo-data/shards)")
    p.add_argument("--variants", help="value runs to make, comma-separated: two-full, '+3 at budget F/2', '+3 at budget F/4' (default: all)")
    a = p.parse_args()
    if a.partial_local_steps is not None and a.partial_local_steps < 1:
        p.error(f"--partial-local-steps {a.partial_local_steps}: at least 1")
    global server, extra_aggregation, DATA
    server = a.server
    extra_aggregation = a.aggregation
    DATA = a.data or DATA
    os.makedirs(a.out, exist_ok=True)
    report = {}
    if a.only != "value":
        full, rows = memory(a.out, a.port, a.memory_steps)
        report["memory"] = {"full_peak_mib": mib(full), "rows": rows}
        print(f"\nPeak resident memory, `small` shape, batch 16 x 256 (F = whole-model training's peak = {mib(full):.0f} MiB):\n")
        print("| trainer | budget (MiB) | what it trains | peak (MiB) | tokens/s |")
        print("|---|---|---|---|---|")
        for label, budget, plan, peak, rate in rows:
            print(f"| {label} | {budget} | {plan} | {peak:.0f} | {rate:,.0f} |")
    else:
        with open(os.path.join(a.out, "report.json")) as f:
            full = int(json.load(f)["memory"]["full_peak_mib"] * 2**20)
    if a.only != "memory":
        budget, results = value(a.out, a.port + 10, full, a.tokens, a.partial_tokens, a.local_steps, a.buffer_size,
                                a.variants.split(",") if a.variants else None, a.partial_local_steps)
        report["value"] = {"budget": budget, "results": results}
        k = (f"K = {a.buffer_size}" if a.buffer_size else "K = the number of trainers") + f", server {a.server}"
        k += "".join(f", {line}" for line in a.aggregation)
        k += f", partial trainers' H = {a.partial_local_steps}" if a.partial_local_steps else ""
        print(f"\nTwo full trainers ({a.tokens:,} tokens each), alone and joined by three partial trainers "
              f"({a.partial_tokens:,} tokens each; {budget}; FedBuff {k}):\n")
        print("| run | held-out loss (mean of clusters) | per cluster | wall time (s) | tokens |")
        print("|---|---|---|---|---|")
        for r in results:
            mean = sum(r["losses"].values()) / len(r["losses"])
            per = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["losses"].items()))
            print(f"| {r['run']} | {mean:.4f} | {per} | {r['seconds']:.0f} | {sum(r['tokens'].values()):,} |")
        for r in results:
            parts = {k: v for k, v in r["peaks"].items() if k.startswith("part")}
            if parts:
                print(f"\n{r['run']}: " + "; ".join(f"{k}: {r['plans'].get(k, 'as told')} (peak {v:.0f} MiB)" for k, v in sorted(parts.items())))
    if a.only == "value" and os.path.exists(os.path.join(a.out, "report.json")):
        with open(os.path.join(a.out, "report.json")) as f:
            report = {**json.load(f), **report}
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
