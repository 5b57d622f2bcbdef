"""FedLM's tokenizer against Hugging Face tokenizers: training time and encoding MB/s."""
import argparse
import os
import re
import statistics
import subprocess
import time


def fedlm(*args):
    return subprocess.run([".build/release/fedlm", *args], check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = "2"  # tokenizers' thread pool, read before import
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    size_mb = os.path.getsize(a.corpus) / 1e6
    text = open(a.corpus, encoding="utf-8", errors="replace").read()
    fedlm_tok = f"{a.work}/fedlm-tokenizer.json"

    train_fedlm, train_hf = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        fedlm("tokenizer", "train", "--vocab", "4096", "--out", fedlm_tok, a.corpus)
        train_fedlm.append(time.perf_counter() - t0)
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        t0 = time.perf_counter()
        hf.train([a.corpus], trainer)
        train_hf.append(time.perf_counter() - t0)

    # Encoding: both with FedLM's tokenizer.json (same vocabulary and merges), 2 threads.
    out = fedlm("tokenizer", "bench", "--tokenizer", fedlm_tok, "--reps", str(a.reps), "--threads", "2", a.corpus)
    fedlm_rate = float(re.search(r"([\d.]+) MB/s median", out).group(1))
    fedlm_tokens = int(re.search(r"into (\d+) tokens", out).group(1))
    hf = Tokenizer.from_file(fedlm_tok)
    lines = text.splitlines(keepends=True)
    docs, chunk = [], []
    size = 0
    for line in lines:  # ~64 KB documents for encode_batch's parallelism
        chunk.append(line)
        size += len(line)
        if size > 65536:
            docs.append("".join(chunk))
            chunk, size = [], 0
    docs.append("".join(chunk))
    rates, hf_tokens = [], 0
    for _ in range(a.reps):
        t0 = time.perf_counter()
        enc = hf.encode_batch(docs)
        rates.append(size_mb / (time.perf_counter() - t0))
        hf_tokens = sum(len(e.ids) for e in enc)
    hf_rate = statistics.median(rates)
    print(f"corpus: {size_mb:.1f} MB, vocabulary 4096, 2 threads")
    print("| | FedLM | HF tokenizers | FedLM / HF |")
    print("|---|---|---|---|")
    print(f"| training time (s, median of 3) | {statistics.median(train_fedlm):.2f} | {statistics.median(train_hf):.2f} | "
          f"{statistics.median(train_fedlm) / statistics.median(train_hf):.2f}x the time |")
    print(f"| encoding MB/s (median of {a.reps}) | {fedlm_rate:.1f} | {hf_rate:.1f} | {fedlm_rate / hf_rate:.2f}x |")
    print(f"(tokens: FedLM {fedlm_tokens}, HF {hf_tokens} with its ~64 KB line-aligned documents)")


if __name__ == "__main__":
    main()
