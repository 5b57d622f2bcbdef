"""Swift and PyTorch trainers in one federation (scripts/mixed-trainers): the held-out loss of one
Swift and one PyTorch trainer against two Swift trainers at equal tokens, and both trainers'
speed on this CPU.

Each run: broker, aggregator and the trainers as separate processes on loopback (one compute
thread each), every trainer on all clusters of the demo corpus with its own batches and the same
token budget; when the trainers are done the aggregator stops cleanly and `fedlm eval` measures
its final model on the held-out split. Speed: `fedlm bench train` and `python -m
fedlm_client.bench` on the same config, alternating, medians.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

FEDLM = ".build/release/fedlm"
DATA = "runs/demo-data/shards"
PYTHON = ".venv-client/bin/python"


def topology(path, run, model, port, swift_trainers, steps, tokens):
    lines = ['name = "mixed"', f'run_directory = "{run}"', f'model = "{model}"', f'data = "{DATA}"', "[broker]"]
    for i, key in enumerate(["trainers", "aggregator", "publish", "releases"]):
        lines.append(f'{key} = "tcp://127.0.0.1:{port + i}"')
    lines += ["[aggregation]", 'mode = "fedbuff"', "buffer_size = 2", 'server_optimizer = "sgd"', "server_learning_rate = 1.0",
              "checkpoint_every = 1", "keep_checkpoints = 2", "evaluate_every = 1000"]
    for name in swift_trainers:
        lines += ["[[trainer]]", f'name = "{name}"', f"local_steps = {steps}", f"tokens = {tokens}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run(name, kinds, model, port, out, steps, tokens, seed):
    run_dir = os.path.join(out, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    path = os.path.join(out, name + ".toml")
    swift = [f"swift-{i}" for i, k in enumerate(kinds) if k == "swift"]
    topology(path, run_dir, model, port, swift, steps, tokens)
    logs = {n: open(os.path.join(run_dir, n + ".log"), "w") for n in ["broker", "aggregator"] + [f"{k}-{i}" for i, k in enumerate(kinds)]}
    start = time.time()
    broker = subprocess.Popen([FEDLM, "broker", "--topology", path], stdout=logs["broker"], stderr=subprocess.STDOUT)
    aggregator = subprocess.Popen([FEDLM, "aggregator", "--topology", path, "--threads", "1"], stdout=logs["aggregator"],
                                  stderr=subprocess.STDOUT)
    trainers = {}
    for i, kind in enumerate(kinds):
        n = f"{kind}-{i}"
        if kind == "swift":
            cmd = [FEDLM, "trainer", "--topology", path, "--name", n, "--threads", "1"]
        else:
            cmd = [PYTHON, "-m", "fedlm_client", "--broker", f"tcp://127.0.0.1:{port}", "--data", DATA, "--config", model,
                   "--name", n, "--local-steps", str(steps), "--tokens", str(tokens), "--threads", "1", "--seed", str(seed + i),
                   "--state", os.path.join(run_dir, "trainers", n)]
        trainers[n] = subprocess.Popen(cmd, stdout=logs[n], stderr=subprocess.STDOUT)
    for n, p in trainers.items():
        if p.wait() != 0:
            sys.exit(f"{name}: trainer {n} failed; see {run_dir}/{n}.log")
    seconds = time.time() - start
    aggregator.terminate()
    aggregator.wait()
    broker.terminate()
    broker.wait()
    stats = {}
    for n in trainers:
        with open(os.path.join(run_dir, "trainers", n, "stats.json")) as f:
            stats[n] = json.load(f)
    checkpoints = sorted((d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("v")), key=lambda d: int(d[1:]))
    report = json.loads(subprocess.run([FEDLM, "eval", "--checkpoint", os.path.join(run_dir, "checkpoints", checkpoints[-1]),
                                        "--data", DATA, "--json"], capture_output=True, text=True, check=True).stdout)
    return {"run": name, "seconds": seconds, "version": checkpoints[-1], "loss": report["mean_loss"],
            "clusters": {c["cluster"]: c["loss"] for c in report["clusters"]},
            "tokens": {n: s["tokens"] for n, s in stats.items()},
            "rates": {n: s["tokens"] / s["trainingSeconds"] for n, s in stats.items() if s.get("trainingSeconds")}}


def speed(model, reps):
    swift, torch = [], []
    for _ in range(reps):
        r = subprocess.run([FEDLM, "bench", "train", "--config", model, "--threads", "2", "--reps", "1", "--json"],
                           capture_output=True, text=True, check=True)
        swift.append(json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_second_median"])
        r = subprocess.run([PYTHON, "-m", "fedlm_client.bench", "--config", model, "--data", DATA, "--threads", "2", "--reps", "1"],
                           capture_output=True, text=True, check=True)
        torch.append(json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_second_median"])
    return swift, torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/mixed-trainers")
    p.add_argument("--model", default="Config/demo.toml")
    p.add_argument("--port", type=int, default=6950)
    p.add_argument("--tokens", type=int, default=614400, help="each trainer's token budget")
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2, help="runs of each federation (different seeds)")
    p.add_argument("--speed-reps", type=int, default=3, help="alternating speed measurements (0: none)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = []
    for s in range(a.seeds):
        for name, kinds in [("swift-swift", ["swift", "swift"]), ("swift-torch", ["swift", "torch"])]:
            r = run(f"{name}-{s}", kinds, a.model, a.port, a.out, a.local_steps, a.tokens, 1000 + 17 * s)
            results.append(r)
            print(f"{r['run']}: held-out loss {r['loss']:.4f} after {sum(r['tokens'].values()):,} tokens, {r['seconds']:.0f} s; "
                  + ", ".join(f"{n} {v:,.0f} tok/s" for n, v in r["rates"].items()), flush=True)
    both = {}
    if results:
        both = {k: statistics.median([r["loss"] for r in results if r["run"].startswith(k)]) for k in ("swift-swift", "swift-torch")}
        print("\n| federation | held-out loss (median of runs) | runs |")
        print("|---|---|---|")
        for k, v in both.items():
            print(f"| {k} | {v:.4f} | " + ", ".join(f"{r['loss']:.4f}" for r in results if r["run"].startswith(k)) + " |")
        print(f"\nswift-torch / swift-swift loss: {both['swift-torch'] / both['swift-swift']:.4f} "
              f"({100 * (both['swift-torch'] / both['swift-swift'] - 1):+.2f}%)")
    swift_rates, torch_rates = speed(a.model, a.speed_reps) if a.speed_reps > 0 else ([], [])
    if swift_rates:
        print(f"\nSpeed on this CPU, 2 threads, {a.model} (median of {a.speed_reps}, alternating): Swift trainer "
              f"{statistics.median(swift_rates):,.0f} tok/s, PyTorch trainer {statistics.median(torch_rates):,.0f} tok/s "
              f"(Swift / PyTorch {statistics.median(swift_rates) / statistics.median(torch_rates):.2f}x)")
    name = "report.json" if results and swift_rates else ("report-federations.json" if results else "report-speed.json")
    with open(os.path.join(a.out, name), "w") as f:
        json.dump({"runs": results, "median_loss": both, "speed": {"swift": swift_rates, "torch": torch_rates}}, f, indent=2)


if __name__ == "__main__":
    main()
