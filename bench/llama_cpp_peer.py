#!/usr/bin/env python3
"""Helper of bench/llama_cpp_peer.sh: dsv2 against llama.cpp on one checkpoint.

Subcommands:
  hf-dir   make the directory llama.cpp's converter reads: the checkpoint's
           safetensors symlinked, config.json copied and patched, the
           tokenizer files copied (the checkpoint itself is never written)
  prompt   the benchmark's prompt ids (comma-separated), the same for both
  llama    one llama.cpp measurement (run with the llama venv's Python):
           prefill and batch-1 greedy decode, printed as one JSON object
  report   medians over the rounds, the table, and the JSON file

Only the standard library here, except `llama`, which imports llama_cpp and
numpy from the venv the shell script set up.
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

# The first id of DeepSeek-V2's special tokens: prompts stay below it.
FIRST_SPECIAL_ID = 100000


def prompt_ids(n, seed, vocab):
    rng = random.Random(seed)
    return [rng.randrange(min(vocab, FIRST_SPECIAL_ID)) for _ in range(n)]


# ----------------------------------------------------------------- hf-dir


def cmd_hf_dir(args):
    src = os.path.realpath(args.model)
    dst = args.out
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    patched = []
    # llama.cpp takes a missing q_lora_rank (DeepSeek-V2-Lite's null) as
    # "no query compression" only for the 26- and 27-layer Lite shapes; 0
    # says so explicitly for any depth.
    if config.get("q_lora_rank") is None and config.get("num_hidden_layers") not in (26, 27):
        config["q_lora_rank"] = 0
        patched.append("q_lora_rank: null -> 0")
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    linked = 0
    for name in sorted(os.listdir(src)):
        if name.endswith(".safetensors") or name == "model.safetensors.index.json":
            link = os.path.join(dst, name)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.join(src, name), link)
            linked += 1
    if linked == 0:
        sys.exit(f"llama_cpp_peer: no safetensors in {src}")
    # The checkpoint's own tokenizer when it has one, else DeepSeek-V2's.
    tok_src = src if os.path.exists(os.path.join(src, "tokenizer.json")) else args.tokenizer_dir
    if not os.path.exists(os.path.join(tok_src, "tokenizer.json")):
        sys.exit(f"llama_cpp_peer: no tokenizer.json in {src} nor {args.tokenizer_dir} "
                 "(scripts/install-deps.sh or tools/golden/fetch_deepseek_tokenizer.sh fills the latter)")
    with open(os.path.join(tok_src, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    tok_config = {}
    if os.path.exists(os.path.join(tok_src, "tokenizer_config.json")):
        with open(os.path.join(tok_src, "tokenizer_config.json"), encoding="utf-8") as f:
            tok_config = json.load(f)
    # The converter names the pre-tokenizer by hashing the ids the Hugging
    # Face tokenizer gives for a fixed text; DeepSeek's hash ("deepseek-llm")
    # was taken with BOS in front. transformers 4 adds it from
    # tokenizer_config's add_bos_token; transformers 5 builds the tokenizer
    # from tokenizer.json, whose post-processor here adds nothing. So the
    # copy gets a post-processor that puts BOS first (both versions then
    # agree), and add_bos_token stays true.
    bos = tok_config.get("bos_token")
    if isinstance(bos, dict):
        bos = bos.get("content")
    bos_id = None
    for added in tokenizer.get("added_tokens", []):
        if added.get("content") == bos:
            bos_id = added.get("id")
    if bos is not None and bos_id is not None:
        tokenizer["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
        tok_config["add_bos_token"] = True
        patched.append(f"tokenizer: BOS {bos_id} added by the post-processor")
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_config, f, ensure_ascii=False, indent=2)
    print(f"{dst}: {linked} safetensors linked from {src}; tokenizer from {tok_src}; "
          f"{', '.join(patched) or 'nothing patched'}", file=sys.stderr)


# ----------------------------------------------------------------- prompt


def cmd_prompt(args):
    print(",".join(map(str, prompt_ids(args.length, args.seed, args.vocab))))


# ----------------------------------------------------------------- llama


def cmd_llama(args):
    import numpy as np
    import llama_cpp

    ids = [int(t) for t in args.prompt.split(",")]
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.gguf, n_threads=args.threads,
                          n_threads_batch=args.threads,
                          n_ctx=max(args.prefill_len, len(ids) + args.decode_tokens) + 16,
                          n_batch=512, n_ubatch=512, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    rng = random.Random(args.seed + 1)

    def last_argmax():
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return int(row.argmax())

    def perf():
        data = llama_cpp.llama_perf_context(llm.ctx)
        return {"t_p_eval_ms": data.t_p_eval_ms, "n_p_eval": data.n_p_eval,
                "t_eval_ms": data.t_eval_ms, "n_eval": data.n_eval}

    # Warm-up: a full-length prompt pulls every expert's pages in and sizes
    # llama.cpp's compute buffers, then a few single-token steps.
    llm.reset()
    llm.eval([rng.randrange(FIRST_SPECIAL_ID) for _ in range(args.prefill_len)])
    for _ in range(4):
        llm.eval([last_argmax()])

    # Prefill: `reps` fresh prompts of prefill_len random ids (the speed does
    # not depend on the ids; dsv2's decode_bench draws its own).
    prefill = []
    for _ in range(args.reps):
        llm.reset()
        prompt = [rng.randrange(FIRST_SPECIAL_ID) for _ in range(args.prefill_len)]
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(time.perf_counter() - start)

    # Decode at batch 1: the shared prompt ids, then greedy steps one token
    # at a time (argmax of the last logits = temperature 0 / top-k 1).
    llm.reset()
    llm.eval(ids)
    llama_cpp.llama_perf_context_reset(llm.ctx)
    steps, tokens = [], []
    for _ in range(args.decode_tokens):
        token = last_argmax()
        tokens.append(token)
        start = time.perf_counter()
        llm.eval([token])
        steps.append(time.perf_counter() - start)
    decode_perf = perf()
    step = statistics.median(steps)
    result = {
        "gguf": args.gguf,
        "load_s": round(load_s, 3),
        "threads": args.threads,
        "prefill": {"tokens": args.prefill_len, "seconds": [round(t, 4) for t in prefill],
                    "tokens_per_s": args.prefill_len / statistics.median(prefill)},
        "decode": {"context": len(ids), "steps": args.decode_tokens,
                   "step_ms_median": step * 1e3, "tokens_per_s": 1.0 / step,
                   "tokens_per_s_mean": len(steps) / sum(steps),
                   "llama_perf": decode_perf,
                   "llama_perf_tokens_per_s": (1e3 * decode_perf["n_eval"] / decode_perf["t_eval_ms"]
                                               if decode_perf["t_eval_ms"] > 0 else None)},
        "greedy_tokens": tokens,
    }
    print(json.dumps(result))


# ----------------------------------------------------------------- report


def cpu_flags():
    flags = set()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8"]
    return model, {w: w in flags for w in wanted}


def median_of(runs, path):
    values = []
    for run in runs:
        v = run
        for key in path:
            if v is None:
                break
            if isinstance(key, int):
                v = next((d for d in v if d.get("batch") == key), None)
            else:
                v = v.get(key)
        if isinstance(v, (int, float)):
            values.append(float(v))
    return (statistics.median(values) if values else None), values


def load_runs(results_dir, kind):
    runs = []
    for name in sorted(os.listdir(results_dir)):
        if name.startswith(kind + ".") and name.endswith(".json"):
            with open(os.path.join(results_dir, name)) as f:
                text = f.read().strip()
            if text:
                runs.append(json.loads(text.splitlines()[-1]))
    return runs


def fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cmd_report(args):
    runs = {k: load_runs(args.results_dir, k)
            for k in ("dsv2_bf16", "dsv2_int8", "llama_f16", "llama_q8_0")}
    meta = json.load(open(os.path.join(args.results_dir, "meta.json")))
    fig = {}
    for k in ("dsv2_bf16", "dsv2_int8"):
        fig[k] = {"decode_b1": median_of(runs[k], ["decode", 1, "tokens_per_s"]),
                  "decode_b64": median_of(runs[k], ["decode", 64, "tokens_per_s"]),
                  "prefill": median_of(runs[k], ["prefill", "tokens_per_s"])}
    for k in ("llama_f16", "llama_q8_0"):
        fig[k] = {"decode_b1": median_of(runs[k], ["decode", "tokens_per_s"]),
                  "decode_b1_llama_perf": median_of(runs[k], ["decode", "llama_perf_tokens_per_s"]),
                  "prefill": median_of(runs[k], ["prefill", "tokens_per_s"])}
    g = lambda k, f: fig[k][f][0] if f in fig[k] else None  # noqa: E731
    rows = [
        ("decode batch 1, tokens/s", g("dsv2_bf16", "decode_b1"), g("dsv2_int8", "decode_b1"),
         g("llama_f16", "decode_b1"), g("llama_q8_0", "decode_b1")),
        (f"prefill {meta['prefill_len']} tokens, tokens/s", g("dsv2_bf16", "prefill"),
         g("dsv2_int8", "prefill"), g("llama_f16", "prefill"), g("llama_q8_0", "prefill")),
        ("dsv2 batch 64 vs llama.cpp batch 1, tokens/s", g("dsv2_bf16", "decode_b64"),
         g("dsv2_int8", "decode_b64"), g("llama_f16", "decode_b1"), g("llama_q8_0", "decode_b1")),
    ]
    model_name, isa = cpu_flags()
    lines = []
    lines.append(f"model {meta['model']}" + (f", int8 {meta['int8_model']}" if meta.get("int8_model") else ""))
    lines.append(f"machine: {model_name}; {meta['nproc']} cores; ISA: "
                 + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in isa.items()))
    lines.append(f"threads {meta['threads']} (both); DSV2_CPU_ISA={meta.get('dsv2_cpu_isa') or '(unset)'}; "
                 f"llama-cpp-python {meta.get('llama_cpp_version')}; rounds {meta['rounds']} "
                 f"(alternating), medians; decode: {meta['context']}-token context, "
                 f"{meta['decode_tokens']} steps; {meta['date']}")
    if meta.get("llama_system_info"):
        lines.append(f"llama.cpp system info: {meta['llama_system_info']}")
    header = ["figure", "dsv2 bf16", "dsv2 int8", "llama.cpp f16", "llama.cpp q8_0",
              "bf16 / f16", "int8 / q8_0"]
    table = [header, ["---"] + ["---:"] * 6]
    for name, d16, d8, l16, l8 in rows:
        table.append([name, fmt(d16, 2), fmt(d8, 2), fmt(l16, 2), fmt(l8, 2),
                      (fmt(ratio(d16, l16), 2) + "×") if ratio(d16, l16) else "—",
                      (fmt(ratio(d8, l8), 2) + "×") if ratio(d8, l8) else "—"])
    lines.append("")
    lines.extend("| " + " | ".join(r) + " |" for r in table)
    if not runs["dsv2_int8"]:
        lines.append("")
        lines.append(f"dsv2 int8: not available ({meta.get('int8_note') or 'no int8 run'})")
    lines.append("")
    for k in runs:
        per = {f: [round(x, 2) for x in fig[k][f][1]] for f in fig[k]}
        lines.append(f"per round {k}: {json.dumps(per)}")
    greedy = meta.get("greedy", {})
    if greedy:
        lines.append("")
        lines.append(f"first greedy tokens after the shared {meta['context']}-token prompt "
                     "(random weights: agreement is not expected to be exact):")
        for k, v in greedy.items():
            lines.append(f"  {k:12s} {v}")
    text = "\n".join(lines)
    print(text)
    out = {
        "date": meta["date"], "model": meta["model"], "int8_model": meta.get("int8_model"),
        "int8_note": meta.get("int8_note"),
        "machine": {"cpu": model_name, "nproc": meta["nproc"], "isa": isa,
                    "dsv2_cpu_isa": meta.get("dsv2_cpu_isa"), "platform": platform.platform(),
                    "llama_system_info": meta.get("llama_system_info")},
        "threads": meta["threads"], "rounds": meta["rounds"], "context": meta["context"],
        "decode_tokens": meta["decode_tokens"], "prefill_len": meta["prefill_len"],
        "llama_cpp_python": meta.get("llama_cpp_version"),
        "medians": {k: {f: fig[k][f][0] for f in fig[k]} for k in fig},
        "ratios": {
            "decode_b1_dsv2_bf16_over_llama_f16": ratio(rows[0][1], rows[0][3]),
            "decode_b1_dsv2_int8_over_llama_q8_0": ratio(rows[0][2], rows[0][4]),
            "prefill_dsv2_bf16_over_llama_f16": ratio(rows[1][1], rows[1][3]),
            "prefill_dsv2_int8_over_llama_q8_0": ratio(rows[1][2], rows[1][4]),
            "dsv2_bf16_b64_over_llama_f16_b1": ratio(rows[2][1], rows[2][3]),
            "dsv2_int8_b64_over_llama_q8_0_b1": ratio(rows[2][2], rows[2][4]),
        },
        "greedy_tokens": greedy,
        "runs": runs,
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nJSON: {args.json_out}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hf-dir")
    h.add_argument("--model", required=True)
    h.add_argument("--out", required=True)
    h.add_argument("--tokenizer-dir", required=True)
    pr = sub.add_parser("prompt")
    pr.add_argument("--length", type=int, required=True)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--vocab", type=int, required=True)
    ll = sub.add_parser("llama")
    ll.add_argument("--gguf", required=True)
    ll.add_argument("--threads", type=int, required=True)
    ll.add_argument("--prompt", required=True, help="comma-separated ids of the decode context")
    ll.add_argument("--decode-tokens", type=int, default=16)
    ll.add_argument("--prefill-len", type=int, default=512)
    ll.add_argument("--reps", type=int, default=3)
    ll.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--results-dir", required=True)
    r.add_argument("--json-out")
    args = p.parse_args()
    {"hf-dir": cmd_hf_dir, "prompt": cmd_prompt, "llama": cmd_llama, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
