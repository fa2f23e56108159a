#!/usr/bin/env python3
"""Hugging Face `tokenizers` side of bench/tokenizer_bench: encodes the
strings of a corpus (JSON lines with "text") one at a time on one thread and
prints {"mb_per_s": ..., "seconds": ..., "bytes": ..., "tokens": ...} as JSON.

Run by tokenizer_bench with RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false.
"""
import argparse
import json
import time

from tokenizers import Tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--category", default="", help="only corpus entries of this category")
    args = parser.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)
    texts = []
    with open(args.corpus, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if "text" in entry and (not args.category or entry["category"] == args.category):
                texts.append(entry["text"])
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)  # Warm-up.
    rates = []
    for _ in range(args.repeats):
        passes, start = 0, time.perf_counter()
        while True:
            for t in texts:
                tok.encode(t, add_special_tokens=False)
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= args.min_seconds:
                break
        rates.append(passes * total_bytes / elapsed / 1e6)
    rates.sort()
    print(json.dumps({"mb_per_s": rates[len(rates) // 2], "bytes": total_bytes, "tokens": tokens,
                      "tokenizers_version": __import__("tokenizers").__version__}))


if __name__ == "__main__":
    main()
