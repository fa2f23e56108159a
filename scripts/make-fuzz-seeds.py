#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (docs/fuzzing.md).

Every seed is written out here by hand, from the formats' documentation and
this repository's own test fixtures' structure: no third-party data. Each is
a small valid input (or a near miss) that leads the fuzzer into the parser's
interesting paths. Run from anywhere; rewrites the seeds/ folders of the
targets below (the tokenizer target's seeds are hand-written files of their
own, common/tokenizer/fuzz/tokenizer/seeds).

    scripts/make-fuzz-seeds.py
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(target_dir, name, data):
    path = os.path.join(ROOT, target_dir, "seeds", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)


# --- safetensors (first byte: even = a safetensors file, odd = an index) ---

def safetensors(tensors, metadata=None, pad=True):
    """A safetensors file: tensors is a list of (name, dtype, shape, bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def bf16(values):
    return b"".join(struct.pack("<f", v)[2:] for v in values)


SAFETENSORS = "common/model/fuzz/safetensors"
write(SAFETENSORS, "single-f32", b"\0" + safetensors(
    [("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))], {"format": "pt"}))
write(SAFETENSORS, "mixed-dtypes", b"\0" + safetensors([
    ("model.norm.weight", "BF16", [4], bf16([1, 1, 1, 1])),
    ("model.layers.0.mlp.gate.weight", "F16", [2, 2], struct.pack("<4e", 0.5, -0.5, 1, 2)),
    ("ids", "I64", [2], struct.pack("<2q", 7, 9)),
    ("empty", "F32", [0, 3], b""),
    ("scalar", "F64", [], struct.pack("<d", 3.5)),
]))
write(SAFETENSORS, "non-finite", b"\0" + safetensors(
    [("w", "BF16", [3], bf16([1.0, float("nan"), float("-inf")]))]))
write(SAFETENSORS, "unpadded-unaligned", b"\0" + safetensors(
    [("b", "U8", [3], b"xyz"), ("a", "F32", [1], struct.pack("<f", 1))], pad=False))
overlapping = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                         separators=(",", ":")).encode()
write(SAFETENSORS, "overlap",
      b"\0" + struct.pack("<Q", len(overlapping)) + overlapping + b"\0" * 12)
write(SAFETENSORS, "index", b"\1" + json.dumps({
    "metadata": {"total_size": 14},
    "weight_map": {"a": "s.safetensors", "b": "s.safetensors"}}).encode())
write(SAFETENSORS, "index-wrong-shard", b"\1" + json.dumps({
    "weight_map": {"a": "s.safetensors", "b": "../s.safetensors"}}).encode())

# --- config.json ---

MODEL_CONFIG = "common/model/fuzz/model_config"
LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "vocab_size": 3200, "hidden_size": 64, "intermediate_size": 160,
    "moe_intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 4, "n_shared_experts": 2, "n_routed_experts": 12,
    "num_experts_per_tok": 3, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "topk_method": "greedy", "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0,
    "norm_topk_prob": False, "q_lora_rank": None, "kv_lora_rank": 32,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16,
    "rope_theta": 10000, "max_position_embeddings": 128, "rms_norm_eps": 1e-06,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu", "attention_bias": False,
    "scoring_func": "softmax", "tie_word_embeddings": False,
}
write(MODEL_CONFIG, "tiny-lite", json.dumps(LITE, indent=1))
V2 = dict(LITE, q_lora_rank=48, topk_method="group_limited_greedy", n_group=4, topk_group=2,
          n_routed_experts=16, routed_scaling_factor=16.0, eos_token_id=[1, 2])
write(MODEL_CONFIG, "tiny-v2-grouped", json.dumps(V2))
write(MODEL_CONFIG, "dense-no-rope-scaling", json.dumps(
    dict(LITE, n_routed_experts=None, rope_scaling=None, tie_word_embeddings=True,
         model_type="deepseek")))
write(MODEL_CONFIG, "near-bounds", json.dumps(
    dict(LITE, num_hidden_layers=512, max_position_embeddings=16777216, vocab_size=1048576,
         n_routed_experts=8, num_experts_per_tok=8, rope_theta=1e9)))
write(MODEL_CONFIG, "wrong-types", json.dumps(
    dict(LITE, hidden_size="64", rope_scaling=[1], eos_token_id=[], norm_topk_prob=1)))

# --- the data plane's frames: flags, expert count, 64-byte header, payload ---

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(frame_type, wire_dtype, tokens, hidden, top_k, payload, flags=0, experts=8):
    header = struct.pack("<IHBBQQIIIIIIQI", 0x32565344, 1, frame_type, wire_dtype, 42, 7, 3, 0,
                         tokens, hidden, top_k, 5, len(payload), 0)
    header += struct.pack("<I", crc32c(header))
    return bytes([flags, experts]) + header + payload


def align16(n):
    return (n + 15) // 16 * 16


def dispatch(tokens, hidden, top_k, ids, weights):
    activations = bf16([0.25 * (i % 7) for i in range(tokens * hidden)])
    payload = activations.ljust(align16(len(activations)), b"\0")
    id_bytes = struct.pack("<%di" % len(ids), *ids)
    payload += id_bytes.ljust(align16(len(id_bytes)), b"\0")
    payload += struct.pack("<%df" % len(weights), *weights)
    return frame(1, 1, tokens, hidden, top_k, payload)


FRAME = "common/transport/fuzz/frame"
write(FRAME, "dispatch-bf16", dispatch(2, 8, 2, [0, 3, 5, -1], [0.5, 0.25, 1.0, 0.0]))
write(FRAME, "dispatch-bad-routing", dispatch(1, 4, 3, [1, 9, -2], [float("nan"), 1.0, 2.0]))
write(FRAME, "combine-f32", frame(2, 3, 2, 4, 0, struct.pack("<8f", *range(8))))
write(FRAME, "combine-f16", frame(2, 2, 1, 4, 0, struct.pack("<4e", 1, 2, 3, 4)))
message = b"experts [0, 4) are unavailable"
write(FRAME, "error", frame(3, 0, 0, 0, 0, struct.pack("<II", 14, len(message)) + message))
# Near misses: a wrong checksum (flag bit 0 repairs it) and a truncated payload.
bad_crc = bytearray(frame(2, 3, 1, 2, 0, struct.pack("<2f", 1, 2), flags=1))
bad_crc[2 + 60] ^= 0xFF
write(FRAME, "combine-bad-crc", bytes(bad_crc))
write(FRAME, "dispatch-truncated-unaligned",
      bytes([2]) + dispatch(1, 8, 1, [2], [1.0])[1:-4])

# --- tokenizer.json (the whole input is the file) ---

TOKENIZER_JSON = "common/tokenizer/fuzz/tokenizer_json"
BYTE_LEVEL = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [
        {"id": 0, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 1, "content": "</s>", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": False, "special": True}],
    "normalizer": {"type": "Sequence", "normalizers": []},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated",
         "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [0],
                                                              "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None,
              "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"<s>": 0, "</s>": 1, "H": 2, "e": 3, "l": 4, "o": 5, "\u0120": 6,
                        "He": 7, "ll": 8, "Hell": 9, "Hello": 10, "1": 11, "2": 12},
              "merges": ["H e", ["l", "l"], "He ll", "Hell o"]},
}
write(TOKENIZER_JSON, "byte-level", json.dumps(BYTE_LEVEL, ensure_ascii=False))
CHAR_LEVEL = {
    "added_tokens": [{"id": 0, "content": "<unk>", "special": True}],
    "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        {"type": "Prepend", "prepend": "\u2581"}]},
    "pre_tokenizer": None, "post_processor": None, "decoder": None,
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
              "vocab": {"<unk>": 0, "\u2581": 1, "h": 2, "i": 3, "hi": 4, "<0xC3>": 5,
                        "<0xA9>": 6}, "merges": ["h i"]},
}
write(TOKENIZER_JSON, "char-level-byte-fallback", json.dumps(CHAR_LEVEL, ensure_ascii=False))
write(TOKENIZER_JSON, "sequence-post-processor", json.dumps(dict(
    BYTE_LEVEL, post_processor={"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": True}, BYTE_LEVEL["post_processor"]]}), ensure_ascii=False))
# An id of a billion: the decoding tables used to be allocated that long.
huge_id = json.loads(json.dumps(CHAR_LEVEL))
huge_id["model"]["vocab"]["hi"] = 1000000000
write(TOKENIZER_JSON, "huge-token-id", json.dumps(huge_id, ensure_ascii=False))
write(TOKENIZER_JSON, "wrong-types", json.dumps(dict(
    BYTE_LEVEL, post_processor={"type": "TemplateProcessing",
                                "single": [{"Sequence": {"id": 5, "type_id": 0}}],
                                "special_tokens": {}}), ensure_ascii=False))

# --- tokenizer_config.json, then NUL-separated messages (role byte + content) ---

CHAT_TEMPLATE = "common/tokenizer/fuzz/chat_template"
DEEPSEEK_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% "
    "endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}")
CONFIG = {
    "add_bos_token": True, "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", "content": "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                  "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "eos_token": "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "chat_template": DEEPSEEK_TEMPLATE,
}
SYSTEM, USER, ASSISTANT, UNKNOWN = b"\0", b"\1", b"\2", b"\3"


def chat(config, *messages):
    return json.dumps(config, ensure_ascii=False).encode() + b"".join(b"\0" + m for m in messages)


write(CHAT_TEMPLATE, "conversation", chat(
    CONFIG, SYSTEM + b"Be brief.", USER + b"Hello", ASSISTANT + "Hi \u4e2d\u6587".encode(),
    USER + b"What is 2+2?"))
write(CHAT_TEMPLATE, "one-user-message", chat(CONFIG, USER + b"The capital of France is") + b"!")
write(CHAT_TEMPLATE, "unknown-role", chat(CONFIG, USER + b"hi", UNKNOWN + b"tool output"))
write(CHAT_TEMPLATE, "no-template-invalid-utf8", chat(
    {"bos_token": "<s>", "eos_token": "</s>"}, USER + b"caf\xe9"))
write(CHAT_TEMPLATE, "wrong-types", chat({"bos_token": 5, "add_bos_token": "yes"}, USER + b"x"))

# --- OpenAI request bodies (first byte: even = /v1/completions, odd = chat) ---

OPENAI = "server/http/fuzz/openai_request"
COMPLETIONS, CHAT = b"\0", b"\1"
write(OPENAI, "completion", COMPLETIONS + json.dumps({
    "model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9,
    "seed": 3, "stop": ["\n", "."], "logprobs": 2, "ignore_eos": True}).encode())
write(OPENAI, "prompts-and-choices", COMPLETIONS + json.dumps({
    "prompt": ["a", [1, 2, 3]], "n": 3, "best_of": 3, "seed": -1, "stream": True,
    "stream_options": {"include_usage": True, "continuous_usage_stats": True}}).encode())
write(OPENAI, "token-ids", COMPLETIONS + json.dumps({
    "prompt": [5, 6, 7], "max_tokens": 2, "return_tokens_as_token_ids": True, "top_k": -1,
    "min_p": 0.1, "repetition_penalty": 1.1, "stop_token_ids": [2]}).encode())
write(OPENAI, "chat", CHAT + json.dumps({
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    "n": 2, "max_completion_tokens": 5, "logprobs": True, "top_logprobs": 1}).encode())
write(OPENAI, "unsupported-and-wrong-types", COMPLETIONS + json.dumps({
    "prompt": {"a": 1}, "n": "2", "echo": True, "logit_bias": {"5": 1},
    "best_of": 4}).encode())
