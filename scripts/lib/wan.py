#!/usr/bin/env python3
"""Federations across emulated wide-area links, with the figures side by side.

Each case builds two Linux network namespaces joined by a veth pair: `hub` (broker and
aggregator) and `region` (one trainer). Bandwidth is capped with tc's tbf on both ends of the
veth pair; latency, jitter and the cost of loss come from a delay relay (`wan_relay.py`) in the
region, through which the trainer reaches the broker. Traffic never leaves the namespaces this
command made; they are removed at the end, also after Ctrl-C or a failure (and any left by a
killed run are removed at the next start).

For every link (Mbit/s x round trip) and case (encoding of updates and releases, with and without
overlap) it prints: bytes per trained token against data-parallel training, the trainer's compute
utilisation (time in training steps / wall time), wall time, and the held-out loss of the final
model at the fixed token budget.

Data-parallel reference: two workers all-reducing F32 gradients every step with a ring all-reduce;
each worker sends and receives 4N bytes a step (N parameters), 8N bytes per step's tokens.
Must run as root (namespaces, tc).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

PREFIX = "fedlm-wan-"
HUB_IP, REGION_IP = "10.213.0.1", "10.213.0.2"

CASES = {
    # name: (updates, whole releases, release steps)
    "f32": ("f32", "f32", None),
    "int8": ("int8", "bf16", None),
    "topk": ("topk", "bf16", None),
    "topk-steps": ("topk", "f32", "topk"),
}


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def parameter_count(config_path):
    text = open(config_path).read()

    def value(key, default=None):
        m = re.search(rf"^\s*{key}\s*=\s*(\w+)", text, re.M)
        if not m:
            if default is None:
                raise SystemExit(f"{config_path}: no {key}")
            return default
        return m.group(1)

    layers, d, ctx, vocab = (int(value(k)) for k in ("n_layer", "n_embd", "n_positions", "vocab_size"))
    tied = value("tie_word_embeddings", "true") == "true"
    return vocab * d + ctx * d + layers * (12 * d * d + 13 * d) + 2 * d + (0 if tied else vocab * d)


def tokens_per_step(config_path):
    text = open(config_path).read()
    batch = int(re.search(r"^\s*batch_size\s*=\s*(\d+)", text, re.M).group(1))
    seq = re.search(r"^\s*sequence_length\s*=\s*(\d+)", text, re.M)
    ctx = int(re.search(r"^\s*n_positions\s*=\s*(\d+)", text, re.M).group(1))
    return batch * (int(seq.group(1)) if seq else ctx)


class Namespaces:
    """The two namespaces of one case and the link between them; `close` removes everything."""

    def __init__(self, tag, mbit, burst_bytes):
        self.hub, self.region = f"{PREFIX}{tag}-hub", f"{PREFIX}{tag}-reg"
        short = tag.replace("-", "")[-9:]
        self.vhub, self.vregion = f"fw{short}h", f"fw{short}r"
        self.created = []
        for ns in (self.hub, self.region):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
        sh("ip", "link", "add", self.vhub, "type", "veth", "peer", "name", self.vregion)
        sh("ip", "link", "set", self.vhub, "netns", self.hub)
        sh("ip", "link", "set", self.vregion, "netns", self.region)
        for ns, dev, ip in ((self.hub, self.vhub, HUB_IP), (self.region, self.vregion, REGION_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
               "burst", str(burst_bytes), "latency", "400ms")

    def exec(self, ns):
        return ["ip", "netns", "exec", ns]

    def close(self):
        for ns in self.created:
            sh("ip", "netns", "del", ns, check=False)
        self.created = []


def remove_leftovers():
    """Namespaces of earlier runs whose process is gone."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            sh("ip", "netns", "del", name, check=False)


def topology(path, *, run_dir, config, data, trainers_endpoint, updates, releases, release_steps, density, bits,
             step_density, step_bits, overlap, steps, tokens):
    step_keys = f'release_steps = "{release_steps}"\nstep_density = {step_density}\nstep_bits = {step_bits}\n' if release_steps else ""
    with open(path, "w") as f:
        f.write(f'''name = "wan"
run_directory = "{run_dir}"
model = "{config}"
data = "{data}"

[broker]
trainers = "{trainers_endpoint}"
aggregator = "tcp://127.0.0.1:5556"
publish = "tcp://127.0.0.1:5557"
releases = "tcp://127.0.0.1:5558"

[aggregation]
mode = "fedbuff"
buffer_size = 1
staleness = "inverse_sqrt"
max_staleness = 8
server_optimizer = "sgd"
server_learning_rate = 1.0
checkpoint_every = 1000
evaluate_every = 1000000
durability = "process"

[wire]
updates = "{updates}"
releases = "{releases}"
density = {density}
bits = {bits}
{step_keys}overlap = {"true" if overlap else "false"}

[[trainer]]
name = "t1"
local_steps = {steps}
tokens = {tokens}
ack_timeout = 120.0
''')


class Processes:
    def __init__(self):
        self.running = []

    def start(self, name, argv, log):
        p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((name, p))
        return p

    def stop(self, p, timeout=30):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def close(self):
        for _, p in reversed(self.running):
            try:
                self.stop(p, timeout=10)
            except ProcessLookupError:
                pass
        self.running = []


def run_case(a, out, tag, mbit, rtt, case, overlap):
    updates, releases, release_steps = CASES[case]
    name = f"{mbit}mbit-{rtt:g}ms-{case}{'-overlap' if overlap else ''}"
    directory = os.path.join(out, name)
    sh("rm", "-rf", directory)
    os.makedirs(directory)
    run_dir = os.path.join(directory, "run")
    tokens = a.rounds * a.local_steps * tokens_per_step(a.config)
    common = dict(run_dir=run_dir, config=a.config, data=a.data, updates=updates, releases=releases, release_steps=release_steps,
                  density=a.density, bits=a.bits, step_density=a.step_density, step_bits=a.step_bits, overlap=overlap,
                  steps=a.local_steps, tokens=tokens)
    hub_toml, region_toml = os.path.join(directory, "hub.toml"), os.path.join(directory, "region.toml")
    topology(hub_toml, trainers_endpoint=f"tcp://{HUB_IP}:5555", **common)
    topology(region_toml, trainers_endpoint="tcp://127.0.0.1:15555", **common)
    burst = max(16_000, int(mbit * 1e6 / 8 / 100))
    net = Namespaces(tag, mbit, burst)
    procs = Processes()
    try:
        hub, region = net.exec(net.hub), net.exec(net.region)
        broker = procs.start("broker", hub + [a.fedlm, "broker", "--topology", hub_toml], os.path.join(directory, "broker.log"))
        aggregator = procs.start("aggregator", hub + [a.fedlm, "aggregator", "--topology", hub_toml, "--threads", "1"],
                                 os.path.join(directory, "aggregator.log"))
        relay = procs.start("relay", region + [sys.executable, os.path.join(os.path.dirname(__file__), "wan_relay.py"),
                                               "127.0.0.1:15555", f"{HUB_IP}:5555", "--rtt-ms", str(rtt), "--rate-mbit", str(mbit),
                                               "--jitter-ms", str(a.jitter_ms), "--loss", str(a.loss)],
                            os.path.join(directory, "relay.log"))
        time.sleep(1)
        trainer = procs.start("trainer", region + [a.fedlm, "trainer", "--topology", region_toml, "--name", "t1",
                                                   "--threads", str(a.threads)], os.path.join(directory, "trainer.log"))
        deadline = time.time() + a.timeout
        while trainer.poll() is None:
            for n, p in ((n, p) for n, p in procs.running if n != "trainer"):
                if p.poll() is not None:
                    raise RuntimeError(f"{name}: the {n} exited ({p.returncode}); see {directory}/{n}.log")
            if time.time() > deadline:
                raise RuntimeError(f"{name}: the trainer did not finish within {a.timeout} s; see {directory}/trainer.log")
            time.sleep(0.5)
        if trainer.returncode != 0:
            raise RuntimeError(f"{name}: the trainer exited {trainer.returncode}; see {directory}/trainer.log")
        procs.stop(aggregator)
        procs.stop(broker)
        procs.stop(relay)
    finally:
        procs.close()
        net.close()
    stats = json.load(open(os.path.join(run_dir, "trainers", "t1", "stats.json")))
    checkpoints = sorted((int(d[1:]), d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("v"))
    final = os.path.join(run_dir, "checkpoints", checkpoints[-1][1])
    ev = sh(a.fedlm, "eval", "--checkpoint", final, "--data", a.data, "--json", "--max-batches", str(a.eval_batches))
    loss = json.loads(ev.stdout.strip().splitlines()[-1])["mean_loss"]
    return dict(name=name, mbit=mbit, rtt=rtt, case=case, overlap=overlap, loss=loss, **stats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fedlm", default=".build/release/fedlm")
    parser.add_argument("--config", default="Config/small.toml")
    parser.add_argument("--data", default="runs/demo-data/shards")
    parser.add_argument("--links", default="100", help="Mbit/s, comma-separated (e.g. 10,100,1000)")
    parser.add_argument("--rtts", default="100", help="round trips in ms, comma-separated (e.g. 20,100,250)")
    parser.add_argument("--cases", default="f32,int8,topk,topk-steps", help=f"of {', '.join(CASES)}")
    parser.add_argument("--overlap", default="off,on", help="off, on, or both")
    parser.add_argument("--rounds", type=int, default=3, help="token budget: this many rounds of H steps")
    parser.add_argument("--local-steps", type=int, default=20, help="H")
    parser.add_argument("--density", type=float, default=0.07, help="topk updates: share of each block sent")
    parser.add_argument("--bits", type=int, default=3, help="topk updates: bits per value")
    parser.add_argument("--step-density", type=float, default=0.05, help="release steps: share of each block sent")
    parser.add_argument("--step-bits", type=int, default=4, help="release steps: bits per value")
    parser.add_argument("--jitter-ms", type=float, default=0)
    parser.add_argument("--loss", type=float, default=0, help="per-segment loss probability (emulated as its TCP cost)")
    parser.add_argument("--threads", type=int, default=2, help="the trainer's compute threads")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    parser.add_argument("--out", default="runs/wan")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    a = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scripts/wan needs root (network namespaces and tc)")
    for case in a.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"--cases: {case} is not one of {', '.join(CASES)}")
    overlaps = {"off": [False], "on": [True], "off,on": [False, True], "both": [False, True]}.get(a.overlap)
    if overlaps is None:
        raise SystemExit("--overlap is off, on, or both")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    remove_leftovers()
    os.makedirs(a.out, exist_ok=True)
    n = parameter_count(a.config)
    dp_bytes_per_token = 8 * n / tokens_per_step(a.config)
    print(f"model {a.config}: {n:,} parameters; data-parallel reference {dp_bytes_per_token:,.0f} bytes per token", flush=True)
    rows = []
    k = 0
    try:
        for mbit in [int(x) for x in a.links.split(",")]:
            for rtt in [float(x) for x in a.rtts.split(",")]:
                for case in a.cases.split(","):
                    for overlap in overlaps:
                        k += 1
                        row = run_case(a, a.out, f"{os.getpid()}-{k}", mbit, rtt, case, overlap)
                        rows.append(row)
                        print_row(row, dp_bytes_per_token, header=len(rows) == 1)
    except KeyboardInterrupt:
        print("interrupted: namespaces and processes removed", file=sys.stderr)
        sys.exit(130)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    if a.json:
        print(json.dumps(rows))


def print_row(r, dp, header):
    per_token = (r["bytesSent"] + r["bytesReceived"]) / max(1, r["tokens"])
    r["bytes_per_token"] = per_token
    r["less_than_data_parallel"] = dp / per_token
    if header:
        print("| link | round trip | updates / releases | overlap | bytes per token | after joining | vs data-parallel (after joining) | compute | wall time | held-out loss |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    updates, releases, release_steps = CASES[r["case"]]
    if release_steps:
        releases = f"{release_steps} steps"
    util = r["trainingSeconds"] / r["wallSeconds"] if r["wallSeconds"] else 0
    after = (r["bytesSent"] + r["bytesReceived"] - r["joiningBytes"]) / max(1, r["tokens"])
    r["bytes_per_token_after_joining"] = after
    print(f"| {r['mbit']} Mbit/s | {r['rtt']:.0f} ms | {updates} / {releases} | {'yes' if r['overlap'] else 'no'} | "
          f"{per_token:,.1f} | {after:,.1f} | {dp / per_token:,.0f}x ({dp / after:,.0f}x) | {100 * util:.0f}% | {r['wallSeconds']:.1f} s | "
          f"{r['loss']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
