"""Loads a FedLM release (a checkpoint directory written by `fedlm subscribe --out`) with Hugging
Face transformers, counts its parameters and computes its loss on held-out tokens of the prepared
data (the first 4 windows of the model's context of each cluster's validation tokens, as
`fedlm eval --batch 4 --max-batches 1` takes them): the check that a federated model is an
ordinary GPT-2 anyone can use.

    load_release.py --release DIR --data SHARDS
"""
import argparse
import json
import math
import os

import numpy as np
import torch
from transformers import GPT2LMHeadModel

HEADER = 64


def tokens(path):
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:8] == b"FEDLMTOK", f"{path}: not a FedLM token shard"
    width = int.from_bytes(raw[12:16], "little")
    return np.frombuffer(raw[HEADER:], dtype=np.uint16 if width == 2 else np.uint32).astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    model = GPT2LMHeadModel.from_pretrained(a.release, torch_dtype=torch.float32)
    model.eval()
    count = sum(p.numel() for p in model.parameters())
    manifest = json.load(open(os.path.join(a.data, "manifest.json")))
    losses = {}
    for cluster in manifest["clusters"]:
        held_out = np.concatenate([tokens(os.path.join(a.data, s["file"])) for src in cluster["sources"] for s in src["validation"]])
        n = model.config.n_positions
        ids = torch.from_numpy(held_out[: 4 * n].copy()).reshape(4, n)
        with torch.no_grad():
            losses[cluster["name"]] = model(input_ids=ids, labels=ids).loss.item()
    mean = sum(losses.values()) / len(losses)
    assert math.isfinite(mean), losses
    print(f"transformers loaded {a.release}: GPT2LMHeadModel, {count:,} parameters; loss on held-out text "
          + ", ".join(f"{c} {l:.4f}" for c, l in losses.items()) + f" (mean {mean:.4f}; a uniform guess is {math.log(model.config.vocab_size):.4f})")


if __name__ == "__main__":
    main()
