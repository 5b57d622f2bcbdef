"""`python -m fedlm_client.bench --config C --data D`: the PyTorch trainer's local steps per second
(the same steps it takes in a federation: batches from FedLM shards, AdamW, clipping), printed as
tokens per second, median of several timed windows."""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from .model import LocalModel, load_config
from .shards import TokenData


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fedlm_client.bench")
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rep-seconds", type=float, default=8.0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    config, training = load_config(a.config)
    torch.manual_seed(training.seed)
    model = LocalModel(config, training, a.device)
    data = TokenData(a.data)
    rng = np.random.default_rng(1)
    sequence = training.sequence_length or config.n_positions

    def step():
        x, y = data.batch(rng, training.batch_size, sequence)
        model.step(x, y)
        return x.size

    warm = time.monotonic()
    while time.monotonic() - warm < 2:
        step()
    rates = []
    for _ in range(a.reps):
        t0, tokens = time.monotonic(), 0
        while time.monotonic() - t0 < a.rep_seconds:
            tokens += step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(tokens / (time.monotonic() - t0))
    print(json.dumps({"tokens_per_second_median": statistics.median(rates), "tokens_per_second": rates,
                      "threads": torch.get_num_threads(), "device": a.device, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
