#!/usr/bin/env python3
"""Train the bundled demo model (models/demo-v2) on the King James Bible.

A small DeepSeek-V2-architecture model — MLA with a latent KV cache (q_lora_rank
set, so q_a_proj -> q_a_layernorm -> q_b_proj), a dense first layer then
group-limited MoE layers with shared experts, YaRN rope scaling — built with
transformers' native DeepseekV2ForCausalLM and trained on the CPU. Steps:

  1. corpus: the King James Version from Debian's bible-kjv-text package,
     printed one verse per line by the bible-kjv package's `bible` program
     (`bible -f Gen1:1-Rev22:21`), parsed and checked (66 books, 1,189
     chapters, 31,102 verses). A chapter is one document: its verses, one a
     line. Every HOLDOUT_EVERY-th chapter is held out.
  2. tokenizer: a byte-level BPE trained with Hugging Face `tokenizers` on the
     training chapters, with DeepSeek-V2's normalizer, pre-tokenizer,
     post-processor and decoder and <｜begin▁of▁sentence｜> / <｜end▁of▁sentence｜>
     at ids 0 and 1 (the same structure as the tiny test models' tokenizer,
     tools/golden/make_tokenizer_fixtures.py).
  3. training: next-token cross-entropy on random windows of the token stream
     ([BOS] chapter [EOS] ...), AdamW with warmup and cosine decay, plus a
     small load-balancing loss on the routers, in float32, for a wall-clock
     budget (the number of steps is fixed after timing the first steps,
     unless --steps gives it).
  4. output: the weights rounded to bf16 and written in the published
     DeepSeek-V2 layout (config.json, model.safetensors with per-expert
     tensors), tokenizer.json, tokenizer_config.json (DeepSeek-V2-Chat's chat
     template), and training.json with the settings, losses and times.

The golden fixtures (reference logits) are written afterwards by
tools/golden/make_golden.py --only demo-v2.

Usage (from the repository root):
    /root/venv-ref/bin/python tools/demo_model/train_demo.py [--threads 2] [--budget-minutes 50]
See tools/demo_model/README.md.
"""

import argparse
import copy
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
import make_golden  # noqa: E402  (model building and the published checkpoint layout)
import make_tokenizer_fixtures as tokfix  # noqa: E402  (DeepSeek-V2's tokenizer structure)

from tokenizers import Tokenizer  # noqa: E402
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as hf_dsv2  # noqa: E402

BOS, EOS = tokfix.BOS, tokfix.EOS
BOS_ID, EOS_ID = 0, 1

HOLDOUT_EVERY = 20        # chapters 19, 39, 59, ... (0-based, Bible order) are held out
TOKENIZER_SIZE = 4000     # BPE vocabulary incl. the two special tokens
EXPECTED = {"books": 66, "chapters": 1189, "verses": 31102}

# The model, in the published config.json format (the keys DeepSeek-V2's file has).
DEMO_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "torch_dtype": "bfloat16",
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "ep_size": 1,
    "initializer_range": 0.02,
    "use_cache": True,
    "pretraining_tp": 1,
    "vocab_size": 4096,           # the 4,000-token tokenizer, padded like DeepSeek's 102400
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "intermediate_size": 768,
    "moe_intermediate_size": 96,
    "n_routed_experts": 16,
    "n_shared_experts": 2,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "topk_method": "group_limited_greedy",
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 32,
    "v_head_dim": 32,
    "rope_theta": 10000,
    "rope_scaling": {
        "type": "yarn",
        "factor": 4,
        "original_max_position_embeddings": 256,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
    },
    "max_position_embeddings": 1024,
}


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

VERSE_LINE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.+)$")


def read_kjv(bible="bible"):
    """The whole KJV as [(book, chapter, [verse text, ...]), ...] in Bible order.

    `bible -f` turns pretty-printing off: one verse a line, "Ge1:1 In the
    beginning ...". The program reads /usr/lib/bible.data (bible-kjv-text).
    """
    try:
        out = subprocess.run([bible, "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True).stdout
    except FileNotFoundError:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv bible-kjv-text")
    text = out.decode("ascii")  # the KJV data is plain ASCII; anything else is a surprise
    chapters = []
    books = []
    last = None
    for n, line in enumerate(text.splitlines(), 1):
        m = VERSE_LINE.match(line)
        if not m:
            raise ValueError(f"bible output line {n} is not a verse: {line[:80]!r}")
        book, chapter, verse, body = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()
        if (book, chapter) != last:
            if not books or books[-1] != book:
                books.append(book)
            chapters.append((book, chapter, []))
            last = (book, chapter)
        if verse != len(chapters[-1][2]) + 1:
            raise ValueError(f"{book}{chapter}:{verse} out of order")
        chapters[-1][2].append(body)
    counts = {"books": len(books), "chapters": len(chapters), "verses": sum(len(c[2]) for c in chapters)}
    if counts != EXPECTED:
        raise ValueError(f"unexpected KJV shape {counts}, want {EXPECTED}")
    return chapters


def split_chapters(chapters):
    """Documents (one chapter each: its verses, one a line) for training and held out."""
    train, held = [], []
    for i, (_, _, verses) in enumerate(chapters):
        (held if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append("\n".join(verses))
    return train, held


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def train_tokenizer(texts):
    data = tokfix.train_byte_level(TOKENIZER_SIZE, tokfix.deepseek_pre_tokenizer(), texts)
    assert data["added_tokens"][0]["content"] == BOS and data["added_tokens"][0]["id"] == BOS_ID
    assert data["added_tokens"][1]["content"] == EOS and data["added_tokens"][1]["id"] == EOS_ID
    assert len(data["model"]["vocab"]) <= TOKENIZER_SIZE <= DEMO_CONFIG["vocab_size"]
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": tokfix.added_token_config(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": tokfix.added_token_config(EOS),
        "legacy": True,
        "model_max_length": DEMO_CONFIG["max_position_embeddings"],
        "pad_token": tokfix.added_token_config(EOS),
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": tokfix.CHAT_TEMPLATE,
    }
    return data, config


def encode_documents(tok, docs):
    """[BOS] doc [EOS] for every document, concatenated (int32)."""
    ids = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.append(BOS_ID)
        ids.extend(enc.ids)
        ids.append(EOS_ID)
    return np.asarray(ids, dtype=np.int32)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

class BalanceLoss:
    """Switch-style load balance over a batch, summed over the MoE layers:
    n_routed * sum_e (fraction of routed slots on e) * (mean router probability of e).
    Forward hooks on transformers' DeepseekV2TopkRouter collect what it needs."""

    def __init__(self, model):
        self.terms = []
        self.load = []  # per layer, routed slot counts per expert (for training.json)
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, hf_dsv2.DeepseekV2TopkRouter)]

    def _hook(self, module, inputs, outputs):
        if not torch.is_grad_enabled():
            return
        router_logits, _, indices = outputs
        n = router_logits.shape[-1]
        probs = router_logits.float().softmax(dim=-1).mean(dim=0)
        counts = torch.bincount(indices.reshape(-1), minlength=n).float()
        self.load.append(counts)
        self.terms.append(n * (counts / counts.sum() * probs).sum())

    def take(self):
        loss = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        load = self.load
        self.terms, self.load = [], []
        return loss, load


def lm_loss(model, batch):
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model, stream, seq_len, max_windows=None):
    """Mean next-token loss over consecutive non-overlapping windows of `stream`."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    total, count = 0.0, 0
    for start in range(0, n, 8):
        rows = range(start, min(n, start + 8))
        batch = torch.stack([torch.from_numpy(stream[r * seq_len: r * seq_len + seq_len + 1].astype(np.int64))
                             for r in rows])
        loss = lm_loss(model, batch)
        total += float(loss) * len(rows) * seq_len
        count += len(rows) * seq_len
    model.train()
    return total / count, count


def lr_at(step, total, peak, warmup, floor):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def round_to_bf16_(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "demo-v2"))
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--budget-minutes", type=float, default=50.0,
                    help="wall-clock budget for the training steps (default 50; the whole run adds a few minutes)")
    ap.add_argument("--steps", type=int, default=None, help="train exactly this many steps (ignores the budget)")
    ap.add_argument("--seed", type=int, default=1611)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--balance-alpha", type=float, default=0.01)
    ap.add_argument("--eval-every-minutes", type=float, default=5.0)
    args = ap.parse_args()

    t_start = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    chapters = read_kjv()
    train_docs, held_docs = split_chapters(chapters)
    tok_data, tok_config = train_tokenizer(train_docs)
    tok = Tokenizer.from_str(json.dumps(tok_data))
    train_ids = encode_documents(tok, train_docs)
    held_ids = encode_documents(tok, held_docs)
    print(f"corpus: {len(train_docs)} train / {len(held_docs)} held-out chapters, "
          f"{len(train_ids):,} / {len(held_ids):,} tokens, tokenizer {tok.get_vocab_size()} tokens "
          f"({time.time() - t_start:.0f} s)", flush=True)

    pub = copy.deepcopy(DEMO_CONFIG)
    model = make_golden.build_model(pub)  # HF's own init (normal, std initializer_range)
    model.train()
    balance = BalanceLoss(model)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    L = args.seq_len
    budget_s = args.budget_minutes * 60
    total_steps = args.steps if args.steps is not None else 10**9
    calibrate_after = 10
    history, evals = [], []
    tokens_seen = 0
    t_train = time.time()
    last_eval = t_train
    load_sum = None
    step = 0
    while step < total_steps:
        starts = rng.integers(0, len(train_ids) - L - 1, size=args.batch)
        batch = torch.from_numpy(np.stack([train_ids[s: s + L + 1] for s in starts]).astype(np.int64))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, max(total_steps, args.warmup + 1), args.lr, args.warmup, args.lr * 0.1)
        loss = lm_loss(model, batch)
        bal, load = balance.take()
        (loss + args.balance_alpha * bal).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_seen += args.batch * L
        step += 1
        loads = torch.stack(load)
        load_sum = loads if load_sum is None else load_sum + loads
        history.append(loss.item())
        if args.steps is None and (step == calibrate_after or (step > calibrate_after and step % 50 == 0)):
            # Fix the schedule's length from the time per step so far; re-estimated every 50 steps
            # in case the machine's load changes, never below the steps already taken.
            per_step = (time.time() - t_train) / step
            new_total = max(step + 1, int(budget_s / per_step))
            if new_total != total_steps:
                print(f"{per_step:.2f} s/step -> {new_total} steps in {args.budget_minutes:g} min", flush=True)
            total_steps = new_total
        if step % 25 == 0 or step == total_steps:
            print(f"step {step}/{total_steps} loss {np.mean(history[-25:]):.3f} balance {bal.item():.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} {time.time() - t_train:.0f} s", flush=True)
        if time.time() - last_eval > args.eval_every_minutes * 60:
            held, _ = evaluate(model, held_ids, L, max_windows=32)
            evals.append({"step": step, "tokens_seen": tokens_seen, "seconds": round(time.time() - t_train, 1),
                          "train_loss_last_50": float(np.mean(history[-50:])), "held_out_loss_sample": held})
            print(f"  held-out (sample of 32 windows): {held:.3f}", flush=True)
            last_eval = time.time()
    train_seconds = time.time() - t_train

    for h in balance.handles:
        h.remove()
    held_fp32, held_tokens = evaluate(model, held_ids, L)
    round_to_bf16_(model)
    held_bf16, _ = evaluate(model, held_ids, L)
    train_bf16, train_eval_tokens = evaluate(model, train_ids, L, max_windows=len(held_ids) // L)
    print(f"held-out loss {held_bf16:.4f} (bf16 weights; {held_fp32:.4f} before rounding), "
          f"train loss {train_bf16:.4f}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    for fn in ("model.safetensors", "prefill_logits.npy", "decode_logits.npy", "golden.json"):
        if os.path.exists(os.path.join(args.out, fn)):
            os.remove(os.path.join(args.out, fn))  # stale goldens must not outlive their weights
    make_golden.write_checkpoint(pub, model, args.out)
    tokfix.write_json(os.path.join(args.out, "tokenizer.json"), tok_data)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_config, f, ensure_ascii=False, indent=2)
        f.write("\n")

    import safetensors
    import tokenizers
    import transformers
    load = load_sum / load_sum.sum(dim=1, keepdim=True)
    record = {
        "corpus": {
            "source": "King James Version, Debian package bible-kjv-text (printed by bible-kjv's `bible -f`)",
            "documents": "one chapter each, verses one a line, [BOS] chapter [EOS]",
            "holdout": f"every {HOLDOUT_EVERY}th chapter in Bible order (index % {HOLDOUT_EVERY} == "
                       f"{HOLDOUT_EVERY - 1})",
            "train_chapters": len(train_docs),
            "held_out_chapters": len(held_docs),
            "train_tokens": int(len(train_ids)),
            "held_out_tokens": int(len(held_ids)),
        },
        "tokenizer": {"type": "byte-level BPE, DeepSeek-V2 pre-tokenizer", "size": tok.get_vocab_size(),
                      "padded_vocab_size": pub["vocab_size"]},
        "parameters": n_params,
        "settings": {k: getattr(args, k) for k in ("seed", "threads", "budget_minutes", "steps", "seq_len", "batch",
                                                   "lr", "warmup", "weight_decay", "balance_alpha")},
        "optimizer": "AdamW betas (0.9, 0.95), grad clip 1.0, linear warmup then cosine to lr/10, float32",
        "steps": step,
        "tokens_seen": tokens_seen,
        "epochs": round(tokens_seen / len(train_ids), 3),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "train_loss_last_50_steps": float(np.mean(history[-50:])),
        "train_loss_bf16": train_bf16,
        "train_loss_eval_tokens": train_eval_tokens,
        "held_out_loss_bf16": held_bf16,
        "held_out_loss_fp32": held_fp32,
        "held_out_perplexity_bf16": math.exp(held_bf16),
        "held_out_eval_tokens": held_tokens,
        "evals": evals,
        "expert_load_per_moe_layer": [[round(float(x), 4) for x in row] for row in load],
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "cpu": platform_cpu(),
        "note": "losses are mean next-token cross-entropy (nats) over windows of seq_len tokens; "
                "*_bf16 are measured on the saved (bf16-rounded) weights",
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} in {time.time() - t_start:.0f} s", flush=True)


def platform_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
