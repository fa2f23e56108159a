#!/usr/bin/env python3
"""Train the tokenizers the C++ tokenizer tests use, with Hugging Face `tokenizers`.

1. The tiny models' tokenizer (tests/data/tiny-v2 and tests/data/tiny-lite,
   identical copies): a byte-level BPE of 3,200 tokens with DeepSeek-V2's
   structure — the same normalizer, pre-tokenizer (five regex Splits, Digits,
   ByteLevel), post-processor and decoder as DeepSeek's tokenizer.json, and
   <｜begin▁of▁sentence｜> / <｜end▁of▁sentence｜> at ids 0 and 1 (the tiny
   configs' bos/eos) — plus a tokenizer_config.json with DeepSeek-V2-Chat's
   chat template, bos/eos tokens and add_bos_token.
2. Variants under tests/data/tokenizer/variants/: small tokenizers that
   exercise what DeepSeek's file does not (GPT-2, Llama-3 and DeepSeek-V3
   pre-tokenizer regexes, every Split behaviour with and without invert,
   string patterns, contiguous Digits, added tokens with lstrip / rstrip /
   single_word / normalized, Replace and Prepend normalizers,
   TemplateProcessing, ignore_merges, byte_fallback, unk_token and fuse_unk,
   no decoder).

Training text is the agreement corpus (tokenizer_corpus.py), which is built
from offline sources. Run make_tokenizer_golden.py afterwards.

Usage:
    /root/venv-ref/bin/python tools/golden/make_tokenizer_fixtures.py
"""

import copy
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOS, EOS = tokenizer_corpus.BOS, tokenizer_corpus.EOS

# DeepSeek-V2's pre-tokenizer regexes (as in its tokenizer.json; described
# in shared/reference/deepseek-v2-model.md §5).
DEEPSEEK_V2_SPLITS = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_V3_PATTERN = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                       "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")

# DeepSeek-V2(-Lite)-Chat's chat template, as its tokenizer_config.json has it.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}")


def added_token_config(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def deepseek_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), "isolated") for p in DEEPSEEK_V2_SPLITS]
        + [pre_tokenizers.Digits(individual_digits=True),
           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def training_texts():
    return [e["text"] for e in tokenizer_corpus.build() if "text" in e]


def train_byte_level(vocab_size, pre_tokenizer, texts):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    for t in data["added_tokens"]:
        t["normalized"] = True  # As in DeepSeek's file.
    return data


def train_char_level(vocab_size, texts, unk, fuse_unk, byte_fallback):
    tok = Tokenizer(models.BPE(unk_token=unk, fuse_unk=fuse_unk, byte_fallback=byte_fallback))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, limit_alphabet=120,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    if byte_fallback:
        vocab = data["model"]["vocab"]
        for b in range(256):
            vocab.setdefault("<0x%02X>" % b, len(vocab))
    return data


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=None if "variants" in path else 1)
        f.write("\n")
    check = Tokenizer.from_file(path)  # Must load in tokenizers.
    assert check.get_vocab_size() > 0


def with_pre_tokenizer(base, pre_tokenizer):
    data = copy.deepcopy(base)
    data["pre_tokenizer"] = json.loads(Tokenizer(models.BPE()).to_str())["pre_tokenizer"]  # null
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    data["pre_tokenizer"] = json.loads(tok.to_str())["pre_tokenizer"]
    return data


def variants(texts):
    base = train_byte_level(800, deepseek_pre_tokenizer(), texts)
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    out = {}
    gpt2 = with_pre_tokenizer(base, pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True))
    gpt2["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                                                   {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {BOS: {"id": BOS, "ids": [0], "tokens": [BOS]}}}]}
    out["gpt2"] = gpt2
    out["llama3"] = with_pre_tokenizer(base, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"), bl]))
    out["deepseek-v3-style"] = with_pre_tokenizer(base, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), "isolated"),
        pre_tokenizers.Split(Regex("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"), "isolated"),
        pre_tokenizers.Split(Regex(DEEPSEEK_V3_PATTERN), "isolated"), bl]))
    for behavior in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]:
        for invert in [False, True]:
            name = "split-%s%s" % (behavior.replace("_", "-"), "-invert" if invert else "")
            out[name] = with_pre_tokenizer(base, pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(r"\s+|[.,!?]|\d"), behavior, invert=invert), bl]))
    out["split-string"] = with_pre_tokenizer(base, pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", "merged_with_next"), pre_tokenizers.Split("the", "removed", invert=True), bl]))
    out["split-anchors"] = with_pre_tokenizer(base, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"^\s*\w|x*|\h+|$"), "isolated"), bl]))
    out["digits-runs"] = with_pre_tokenizer(base, pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)]))

    added = copy.deepcopy(base)
    added["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": "qq"}, "content": "QQ"},
        {"type": "Replace", "pattern": {"Regex": "\\s{3,}"}, "content": "  "}]}
    next_id = max(added["model"]["vocab"].values()) + 1
    flags = [("<|lstrip|>", True, dict(lstrip=True, normalized=False)),
             ("<|rstrip|>", True, dict(rstrip=True, normalized=False)),
             ("<|both|>", True, dict(lstrip=True, rstrip=True, normalized=False)),
             ("hello", False, dict(single_word=True, normalized=True)),
             ("ÜBER", False, dict(single_word=True, normalized=False)),
             ("world", False, dict(normalized=False)),
             ("ab", False, dict(lstrip=True, normalized=True)),
             ("foo bar", False, dict(normalized=True)),
             (" sp", False, dict(normalized=False, rstrip=True)),
             ("QQ", False, dict(normalized=True)),
             ("Ġhello", False, dict(normalized=False))]
    for content, special, opts in flags:
        added["added_tokens"].append({"id": next_id, "content": content, "single_word": opts.get("single_word", False),
                                      "lstrip": opts.get("lstrip", False), "rstrip": opts.get("rstrip", False),
                                      "normalized": opts["normalized"], "special": special})
        next_id += 1
    added["post_processor"] = {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}},
                                          {"SpecialToken": {"id": EOS, "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                        {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {BOS: {"id": BOS, "ids": [0], "tokens": [BOS]},
                                                  EOS: {"id": EOS, "ids": [1], "tokens": [EOS]}}}
    out["added-tokens"] = added
    ignore = copy.deepcopy(base)
    ignore["model"]["ignore_merges"] = True
    out["ignore-merges"] = ignore
    # Array-form merges.
    arrays = copy.deepcopy(base)
    arrays["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in arrays["model"]["merges"]]
    out["merges-arrays"] = arrays

    small = texts[::3]
    for name, unk, fuse, fallback in [("byte-fallback", None, False, True), ("unk-fused", "<unk>", True, False),
                                      ("unk-unfused", "<unk>", False, False),
                                      ("byte-fallback-unk", "<unk>", True, True)]:
        data = train_char_level(500, small, unk, fuse, fallback)
        data["decoder"] = None
        out[name] = data
    return out


def main():
    texts = training_texts()
    tiny = train_byte_level(3200, deepseek_pre_tokenizer(), texts)
    assert tiny["added_tokens"][0]["content"] == BOS and tiny["added_tokens"][0]["id"] == 0
    assert tiny["added_tokens"][1]["content"] == EOS and tiny["added_tokens"][1]["id"] == 1
    assert len(tiny["model"]["vocab"]) <= 3200
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added_token_config(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": added_token_config(EOS),
        "legacy": True,
        "model_max_length": 128,
        "pad_token": added_token_config(EOS),
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }
    for model in ["tiny-v2", "tiny-lite"]:
        write_json(os.path.join(ROOT, "tests/data", model, "tokenizer.json"), tiny)
        with open(os.path.join(ROOT, "tests/data", model, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
            f.write("\n")
    print(f"tiny tokenizer: {len(tiny['model']['vocab'])} tokens, {len(tiny['model']['merges'])} merges",
          file=sys.stderr)
    for name, data in variants(texts).items():
        write_json(os.path.join(ROOT, "tests/data/tokenizer/variants", name + ".json"), data)
        print(f"variant {name}: {len(data['model']['vocab'])} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
