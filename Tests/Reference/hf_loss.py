#!/usr/bin/env python3
"""Loads a FedLM checkpoint with Hugging Face transformers and computes its loss.

    python hf_loss.py --checkpoint DIR --batch batch.safetensors --out result.safetensors

The batch file holds I32 "inputs" [B, T]; the loss is GPT2LMHeadModel's own (labels = inputs,
shifted inside the model). Writes "loss" [1] and "last_logits" [B, V] (logits of the last
position of each sequence).
"""
import argparse

import torch
from safetensors.numpy import load_file, save_file
from transformers import GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    model = GPT2LMHeadModel.from_pretrained(a.checkpoint, torch_dtype=torch.float32)
    model.eval()
    inputs = torch.from_numpy(load_file(a.batch)["inputs"]).long()
    with torch.no_grad():
        out = model(input_ids=inputs, labels=inputs)
    save_file({"loss": out.loss.reshape(1).numpy(), "last_logits": out.logits[:, -1, :].contiguous().numpy()}, a.out)
    print(f"transformers {__import__('transformers').__version__}: loss {out.loss.item():.6f}")


if __name__ == "__main__":
    main()
