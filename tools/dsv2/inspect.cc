#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status_macros.h"
#include "common/model/weights.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"

namespace dsv2::cli {
namespace {

// 1234567 → "1,234,567".
std::string Grouped(int64_t value) {
  std::string digits = std::to_string(value);
  std::string out;
  const int lead = static_cast<int>(digits.size()) % 3;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (static_cast<int>(i) - lead) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// 235741434880 → "235.74B"; 884608 → "0.88M".
std::string Count(int64_t value) {
  return value >= 1e9 ? absl::StrFormat("%.2fB", value / 1e9) : absl::StrFormat("%.2fM", value / 1e6);
}

std::string Bytes(int64_t value) {
  return value >= 1e9 ? absl::StrFormat("%.2f GB", value / 1e9) : absl::StrFormat("%.2f MB", value / 1e6);
}

}  // namespace

std::string InspectReport(const ModelConfig& c) {
  std::string report;
  auto line = [&](std::string_view key, const std::string& value) {
    absl::StrAppendFormat(&report, "%-18s %s\n", key, value);
  };
  int64_t moe_layers = 0;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) moe_layers += c.IsMoeLayer(layer);
  line("architecture", absl::StrCat("DeepSeek-V2 (model_type \"", c.model_type, "\")"));
  line("layers", absl::StrCat(c.num_hidden_layers, " (", c.num_hidden_layers - moe_layers,
                              " dense, ", moe_layers, " MoE)"));
  line("hidden / vocab", absl::StrCat(c.hidden_size, " / ", c.vocab_size));
  line("attention",
       absl::StrCat("MLA, ", c.num_attention_heads, " heads; ",
                    c.has_q_lora() ? absl::StrCat("q_lora_rank ", c.q_lora_rank) : "plain q_proj",
                    ", kv_lora_rank ", c.kv_lora_rank, ", qk_nope ", c.qk_nope_head_dim,
                    ", qk_rope ", c.qk_rope_head_dim, ", v ", c.v_head_dim));
  line("softmax scale", absl::StrFormat("%.7f", c.SoftmaxScale()));
  if (c.rope_scaling) {
    line("rope", absl::StrFormat("theta %g, YaRN factor %g over %d positions, mscale %g / %g",
                                 c.rope_theta, c.rope_scaling->factor,
                                 c.rope_scaling->original_max_position_embeddings,
                                 c.rope_scaling->mscale, c.rope_scaling->mscale_all_dim));
  } else {
    line("rope", absl::StrFormat("theta %g, no scaling", c.rope_theta));
  }
  line("context", absl::StrCat(c.max_position_embeddings, " positions"));
  if (c.num_hidden_layers > moe_layers) line("dense ffn", absl::StrCat("width ", c.intermediate_size));
  if (moe_layers > 0) {
    line("moe", absl::StrCat(c.n_routed_experts, " routed experts (", c.num_experts_per_tok,
                             " per token) + ", c.n_shared_experts, " shared, width ",
                             c.moe_intermediate_size));
    line("routing",
         c.topk_method == TopkMethod::kGroupLimitedGreedy
             ? absl::StrCat("group_limited_greedy: ", c.n_group, " groups of ",
                            c.experts_per_group(), ", top ", c.topk_group, " groups")
             : std::string("greedy"));
    line("expert weights",
         c.norm_topk_prob && c.num_experts_per_tok > 1
             ? std::string("renormalized top-k probabilities")
             : absl::StrFormat("softmax probability x %g", c.routed_scaling_factor));
  }
  const ParameterCounts params = CountParameters(c);
  line("parameters", absl::StrCat(Count(params.total), " total (", Grouped(params.total), ")"));
  line("activated", absl::StrCat(Count(params.activated), " per token (",
                                 Grouped(params.activated), ", embedding table excluded)"));
  line("weights (bf16)", Bytes(params.total * 2));
  const int64_t kv_elements = c.latent_dim() * c.num_hidden_layers;
  const int64_t mha_elements = 2 * c.num_attention_heads * c.v_head_dim * c.num_hidden_layers;
  line("kv cache / token",
       absl::StrCat(Grouped(kv_elements), " elements (", c.latent_dim(), " per layer), ",
                    Grouped(kv_elements * 2), " bytes in bf16"));
  line("mha equivalent",
       absl::StrFormat("%s elements (2 x %d heads x %d x %d layers), %s bytes; MLA stores %.2f%%",
                       Grouped(mha_elements), c.num_attention_heads, c.v_head_dim,
                       c.num_hidden_layers, Grouped(mha_elements * 2),
                       100.0 * kv_elements / mha_elements));
  return report;
}

absl::Status Inspect(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"model", true, "model directory (reads its config.json)"},
      {"config", true, "a config.json file alone"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  std::string path;
  if (auto config = args.Get("config")) {
    path = *config;
  } else if (auto model = args.Get("model")) {
    path = (std::filesystem::path(*model) / "config.json").string();
  } else {
    return absl::InvalidArgumentError("inspect needs --model DIR or --config FILE\n" + FlagHelp(flags));
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(path));
  out << "config             " << path << "\n" << InspectReport(config);
  return absl::OkStatus();
}

}  // namespace dsv2::cli
