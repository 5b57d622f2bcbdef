"""An organisation joining a federation under way, against the same organisation alone
(scripts/newcomer).

Runs `fedlm up` on a topology with one trainer that has `join_at_tokens` (default
Topologies/experiments/standalone/newcomer.toml: four organisations of the demo corpus run the worth-joining
recipe, Italian joins at the midpoint of their budgets with a cluster of its own), then trains the
newcomer alone from scratch on its own data with the same token budget (`fedlm train --tokens`,
the same model config and learning-rate schedule), and prints both curves on the same held-out
windows (the first 16 of each cluster's validation split: the aggregator's evaluation windows):

- the newcomer's curve: its cluster's model at each of the aggregator's evaluations, against the
  tokens the newcomer itself had contributed by then (its first point is the model it started
  from: the global model when it joined);
- alone: its model every `--validate-every` steps;
- how many of its own tokens the newcomer needed to reach the loss alone reaches with its whole
  budget, and both final models scored by `fedlm eval` on the same 16 windows.
"""
import argparse
import csv
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tomllib

FEDLM = os.environ.get("FEDLM_BIN", ".build/release/fedlm")


def newcomer_of(topology):
    joiners = [t for t in topology.get("trainer", []) if "join_at_tokens" in t]
    if len(joiners) != 1:
        sys.exit("the topology needs exactly one [[trainer]] with join_at_tokens (the newcomer)")
    return joiners[0]


def federated_curve(run_dir, name, cluster):
    """(tokens the newcomer contributed, loss of its cluster's model) at each evaluation since it joined."""
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    evaluations = db.execute("SELECT time, value FROM metrics WHERE name = ? ORDER BY time", (f"personalized_loss/{cluster}",)).fetchall()
    arrivals = db.execute("SELECT received_at, tokens FROM updates WHERE trainer = ? AND outcome != 'refused' ORDER BY received_at",
                          (name,)).fetchall()
    curve = []
    for time, loss in evaluations:
        curve.append((sum(t for at, t in arrivals if at <= time), loss))
    return curve


def global_curve(run_dir):
    """The global model's mean validation loss at each of the aggregator's evaluations."""
    db = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    return [v for (v,) in db.execute("SELECT value FROM metrics WHERE name = 'validation_loss' ORDER BY time")]


def alone_curve(out, cluster):
    with open(os.path.join(out, "validation.csv")) as f:
        rows = list(csv.DictReader(f))
    return [(int(r["tokens"]), float(r[cluster])) for r in rows]


def evaluate(checkpoint, data, cluster):
    out = subprocess.run([FEDLM, "eval", "--checkpoint", checkpoint, "--data", data, "--max-batches", "2", "--json"],
                         capture_output=True, text=True, check=True)
    return next(c["loss"] for c in json.loads(out.stdout)["clusters"] if c["cluster"] == cluster)


def tokens_to_reach(curve, target):
    return next((t for t, loss in curve if loss <= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="Topologies/experiments/standalone/newcomer.toml")
    parser.add_argument("--out", default="runs/newcomer-experiment")
    parser.add_argument("--seed", type=int, help="the model config's training seed (default: the config's)")
    parser.add_argument("--validate-every", type=int, default=24, help="alone: steps between evaluations")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(args.topology, "rb") as f:
        topology = tomllib.load(f)
    newcomer = newcomer_of(topology)
    name, cluster, budget = newcomer["name"], newcomer["cluster"], newcomer["tokens"]
    (data_cluster,) = newcomer["clusters"]
    model, data = topology["model"], topology["data"]
    if args.seed is not None:
        model, topology_path = seeded(args, topology, model)
    else:
        topology_path = args.topology
    run_dir = topology["run_directory"]

    print(f"==> federation: {os.path.basename(args.topology)}, {name} joins at {newcomer['join_at_tokens']} tokens", flush=True)
    with open(os.path.join(args.out, "up.log"), "w") as log:
        subprocess.run([FEDLM, "up", topology_path, "--fresh"], stdout=log, stderr=subprocess.STDOUT, check=True)
    export = os.path.join(args.out, "federated-" + name)
    subprocess.run([FEDLM, "cluster", "export", cluster, "--topology", topology_path, "--out", export],
                   capture_output=True, check=True)
    federated = federated_curve(run_dir, name, cluster)

    print(f"==> {name} alone: {budget} tokens of {data_cluster}, from scratch", flush=True)
    alone_dir = os.path.join(args.out, "alone-" + name)
    with open(os.path.join(args.out, "alone.log"), "w") as log:
        subprocess.run([FEDLM, "train", "--config", model, "--data", data, "--clusters", data_cluster, "--tokens", str(budget),
                        "--out", alone_dir, "--validate-every", str(args.validate_every), "--sample-bytes", "0", "--threads", "1"],
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    alone = alone_curve(alone_dir, data_cluster)

    final_alone = evaluate(os.path.join(alone_dir, "checkpoint"), data, data_cluster)
    final_federated = evaluate(export, data, data_cluster)
    reached = tokens_to_reach(federated, final_alone)
    glob = global_curve(run_dir)
    report = {"newcomer": name, "budget": budget, "join_at_tokens": newcomer["join_at_tokens"], "federated_curve": federated,
              "alone_curve": alone, "final_alone": final_alone, "final_federated": final_federated,
              "tokens_to_alone_final": reached, "global_curve": glob}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)

    print(f"\n{name}'s held-out loss against its own tokens (16 windows of its validation text)")
    print(f"{'its tokens':>12}{'joined':>10}{'alone':>10}")
    points = sorted(set(t for t, _ in federated) | set(t for t, _ in alone))
    def at(curve, t):
        before = [loss for x, loss in curve if x <= t]
        return before[-1] if before else None
    for t in points:
        j, a = at(federated, t), at(alone, t)
        print(f"{t:12d}{(f'{j:.4f}' if j is not None else '-'):>10}{(f'{a:.4f}' if a is not None else '-'):>10}")
    print(f"\nstarted from (the model it joined with): {federated[0][1]:.4f}" if federated else "no evaluation of its cluster")
    print(f"final, fedlm eval: joined {final_federated:.4f}, alone {final_alone:.4f} "
          f"(alone / joined perplexity {math.exp(final_alone - final_federated):.2f}x)")
    if reached is None:
        print(f"the newcomer did not reach alone's final loss {final_alone:.4f} within its budget")
    else:
        print(f"reached alone's final loss {final_alone:.4f} after {reached} of its {budget} tokens ({100 * reached / budget:.0f}% of its budget)")
    rises = sum(1 for a, b in zip(glob[1:], glob[2:]) if b > a + 0.02)
    print(f"global model: {glob[0]:.4f} -> {glob[-1]:.4f} over {len(glob)} evaluations, {rises} rises above 0.02 after the first"
          if glob else "global model: no evaluation")


def seeded(args, topology, model):
    """A copy of the model config and topology with another training seed."""
    text = open(model).read()
    text = re.sub(r"(?m)^seed\s*=.*$", f"seed = {args.seed}", text) if re.search(r"(?m)^seed\s*=", text) else text.replace("[training]", f"[training]\nseed = {args.seed}", 1)
    model_path = os.path.join(args.out, "model.toml")
    with open(model_path, "w") as f:
        f.write(text)
    topo = open(args.topology).read().replace(f'model = "{topology["model"]}"', f'model = "{model_path}"', 1)
    topo_path = os.path.join(args.out, "topology.toml")
    with open(topo_path, "w") as f:
        f.write(topo)
    return model_path, topo_path


if __name__ == "__main__":
    main()
