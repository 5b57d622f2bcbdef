"""Alternates FedLM's `bench train` and the PyTorch reference benchmark; prints medians and ratios."""
import argparse
import json
import re
import statistics
import subprocess
import sys

CASES = [("tiny", "eager"), ("small", "sdpa")]  # the targets: tiny against eager, small against sdpa


def fedlm(config):
    out = subprocess.run([".build/release/fedlm", "bench", "train", "--config", config, "--reps", "3",
                          "--rep-seconds", "6", "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch(reference, config, mode):
    out = subprocess.run([sys.executable, reference, "--configs", config, "--modes", mode, "--reps", "3",
                          "--rep-seconds", "6"], check=True, capture_output=True, text=True).stdout
    rates = [float(m) for m in re.findall(r"-> +(\d+) tok/s", out)]
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reference", required=True)
    a = ap.parse_args()
    ours = {c: [] for c, _ in CASES}
    theirs = {c: [] for c, _ in CASES}
    extra = {}
    for r in range(a.rounds):
        for config, mode in CASES:
            f = fedlm(config)
            ours[config].append(f["tokens_per_second_median"])
            extra[config] = f
            theirs[config].append(torch(a.reference, config, mode))
            print(f"round {r}: {config}: fedlm {ours[config][-1]:.0f} tok/s, pytorch {mode} {theirs[config][-1]:.0f} tok/s",
                  flush=True)
    print("\n| config (batch 16) | FedLM tok/s | PyTorch tok/s (mode) | ratio | FedLM GFLOP/s | of sgemm peak | BLAS core |")
    print("|---|---|---|---|---|---|---|")
    for config, mode in CASES:
        o, t = statistics.median(ours[config]), statistics.median(theirs[config])
        e = extra[config]
        print(f"| {config} | {o:,.0f} | {t:,.0f} ({mode}) | {o / t:.2f}x | {e['gflops']:.0f} | "
              f"{100 * e['fraction_of_peak']:.0f}% of {e['sgemm_peak_gflops']:.0f} | {e['blas_core']} |")
    print(f"\nmedians over {a.rounds} alternating rounds, each round the median of 3 timed windows")


if __name__ == "__main__":
    main()
