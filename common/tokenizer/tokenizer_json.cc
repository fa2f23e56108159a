// Loading tokenizer.json: every component and field is checked, and
// anything this implementation does not reproduce exactly is rejected with
// its JSON path, e.g. "tokenizer.json: normalizer.type 'NFC' is not supported".
// Every value's type is checked before it is read ("... must be a string,
// got number"), so no nlohmann exception is thrown; GuardJsonReader is the
// backstop should one be missed.
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/json_reading.h"
#include "common/base/regular_file.h"
#include "common/base/status_macros.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/tokenizer_parts.h"
#include "common/tokenizer/unicode.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using nlohmann::json;
using tokenizer_internal::AddedToken;
using tokenizer_internal::ByteLevelStage;
using tokenizer_internal::DigitsStage;
using tokenizer_internal::Normalizer;
using tokenizer_internal::PreTokenizerStage;
using tokenizer_internal::Regex;
using tokenizer_internal::SplitBehavior;
using tokenizer_internal::SplitStage;
using tokenizer_internal::TokenizerParts;

// Token ids are indexes of the decoding tables, which are as long as the
// largest id: a bound on ids bounds what a file can make the loader
// allocate. Eight times the largest vocabulary published (Gemma's 256000).
constexpr int64_t kMaxTokenId = (int64_t{1} << 21) - 1;
// DeepSeek-V2's tokenizer.json is 4.6 MB.
constexpr int64_t kMaxTokenizerJsonBytes = int64_t{1} << 28;

bool IsTokenId(const json& id) {
  return id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= kMaxTokenId &&
         !(id.is_number_unsigned() && id.get<uint64_t>() > static_cast<uint64_t>(kMaxTokenId));
}

class Loader {
 public:
  explicit Loader(std::string source) : source_(std::move(source)) {}

  absl::StatusOr<std::unique_ptr<TokenizerParts>> Load(const json& root) {
    auto parts = std::make_unique<TokenizerParts>();
    RETURN_IF_ERROR(CheckObject(root, "",
                                {"version", "truncation", "padding", "added_tokens", "normalizer",
                                 "pre_tokenizer", "model", "post_processor", "decoder"}));
    for (const char* unsupported : {"truncation", "padding"}) {
      if (root.contains(unsupported) && !root[unsupported].is_null()) {
        return Error(unsupported,
                     "is set; truncation and padding are not supported (must be null)");
      }
    }
    if (!root.contains("model")) return Error("model", "is missing");
    RETURN_IF_ERROR(LoadModel(root["model"], parts.get()));
    if (root.contains("normalizer"))
      RETURN_IF_ERROR(LoadNormalizer(root["normalizer"], "normalizer", &steps_));
    parts->normalizer = Normalizer(std::move(steps_));
    std::vector<std::unique_ptr<PreTokenizerStage>> stages;
    if (root.contains("pre_tokenizer")) {
      RETURN_IF_ERROR(
          LoadPreTokenizer(root["pre_tokenizer"], "pre_tokenizer", &stages, &parts->byte_level));
    }
    parts->pre_tokenizer = tokenizer_internal::PreTokenizer(std::move(stages));
    if (root.contains("added_tokens"))
      RETURN_IF_ERROR(LoadAddedTokens(root["added_tokens"], parts.get()));
    if (root.contains("post_processor")) {
      RETURN_IF_ERROR(LoadPostProcessor(root["post_processor"], "post_processor", parts.get()));
    }
    if (root.contains("decoder"))
      RETURN_IF_ERROR(LoadDecoder(root["decoder"], parts.get()));
    else
      parts->join_with_space = true;
    BuildDecodingTables(parts.get());
    return parts;
  }

 private:
  absl::Status Error(std::string_view path, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": ", std::string(path), " ", std::string(what)));
  }

  static std::string Join(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : absl::StrCat(std::string(path), ".", std::string(key));
  }

  absl::Status CheckObject(const json& node, std::string_view path,
                           std::initializer_list<const char*> allowed) const {
    if (!node.is_object()) {
      return Error(path.empty() ? "(top level)" : path, Expected("an object", node));
    }
    for (const auto& [key, value] : node.items()) {
      bool known = false;
      for (const char* a : allowed) known = known || key == a;
      if (!known) return Error(Join(path, key), "is not a supported field");
    }
    return absl::OkStatus();
  }

  // "must be a string, got number".
  static std::string Expected(const char* what, const json& value) {
    return absl::StrCat("must be ", what, ", got ", JsonTypeName(value));
  }

  absl::StatusOr<bool> Bool(const json& node, std::string_view path, const char* key,
                            bool fallback) const {
    if (!node.contains(key) || node[key].is_null()) return fallback;
    if (!node[key].is_boolean()) {
      return Error(Join(path, key), Expected("true or false", node[key]));
    }
    return node[key].get<bool>();
  }

  absl::StatusOr<std::string> String(const json& node, std::string_view path,
                                     const char* key) const {
    if (!node.contains(key)) return Error(Join(path, key), "is missing (must be a string)");
    if (!node[key].is_string()) return Error(Join(path, key), Expected("a string", node[key]));
    std::string value = node[key].get<std::string>();
    if (!tokenizer_internal::IsValidUtf8(value))
      return Error(Join(path, key), "is not valid UTF-8");
    return value;
  }

  absl::StatusOr<std::string> Type(const json& node, std::string_view path) const {
    if (!node.is_object()) return Error(path, Expected("an object or null", node));
    return String(node, path, "type");
  }

  // Nested Sequences are loaded recursively; a limit keeps a hostile file
  // from exhausting the stack.
  struct DepthGuard {
    explicit DepthGuard(int* depth) : depth_(depth) { ++*depth_; }
    ~DepthGuard() { --*depth_; }
    int* depth_;
  };
  static constexpr int kMaxDepth = 32;
  absl::Status CheckDepth(std::string_view path) const {
    if (depth_ > kMaxDepth) return Error(path, "nests Sequences too deeply");
    return absl::OkStatus();
  }

  absl::Status LoadModel(const json& node, TokenizerParts* parts) {
    ASSIGN_OR_RETURN(std::string type, Type(node, "model"));
    if (type != "BPE")
      return Error("model.type", absl::StrCat("'", type, "' is not supported (only BPE)"));
    RETURN_IF_ERROR(CheckObject(
        node, "model",
        {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
         "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"}));
    if (node.contains("dropout") && !node["dropout"].is_null() &&
        !(node["dropout"].is_number() && node["dropout"].get<double>() == 0.0)) {
      return Error("model.dropout", "is set; BPE dropout is not supported (must be null)");
    }
    for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (node.contains(affix) && !node[affix].is_null() &&
          !(node[affix].is_string() && node[affix].get<std::string>().empty())) {
        return Error(Join("model", affix), "is set; it is not supported (must be null)");
      }
    }
    tokenizer_internal::BpeOptions options;
    if (node.contains("unk_token") && !node["unk_token"].is_null()) {
      ASSIGN_OR_RETURN(options.unk_token, String(node, "model", "unk_token"));
    }
    ASSIGN_OR_RETURN(options.fuse_unk, Bool(node, "model", "fuse_unk", false));
    ASSIGN_OR_RETURN(options.byte_fallback, Bool(node, "model", "byte_fallback", false));
    ASSIGN_OR_RETURN(options.ignore_merges, Bool(node, "model", "ignore_merges", false));

    if (!node.contains("vocab") || !node["vocab"].is_object()) {
      return Error("model.vocab", node.contains("vocab") ? Expected("an object", node["vocab"])
                                                         : "is missing (must be an object)");
    }
    std::vector<std::pair<std::string, int32_t>> vocab;
    vocab.reserve(node["vocab"].size());
    for (const auto& [token, id] : node["vocab"].items()) {
      if (!IsTokenId(id)) {
        return Error(absl::StrCat("model.vocab['", token, "']"),
                     absl::StrCat("must be a non-negative integer id up to ", kMaxTokenId, ", got ",
                                  JsonValueForMessage(id)));
      }
      if (!tokenizer_internal::IsValidUtf8(token))
        return Error("model.vocab", "has a token that is not UTF-8");
      vocab.emplace_back(token, id.get<int32_t>());
    }
    if (!node.contains("merges") || !node["merges"].is_array()) {
      return Error("model.merges", node.contains("merges") ? Expected("an array", node["merges"])
                                                           : "is missing (must be an array)");
    }
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(node["merges"].size());
    for (size_t i = 0; i < node["merges"].size(); ++i) {
      const json& m = node["merges"][i];
      const std::string path = absl::StrCat("model.merges[", i, "]");
      if (m.is_string()) {
        // The legacy "a b" form: exactly one space.
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return Error(path, "must be two tokens separated by one space");
        }
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return Error(path, "must be \"a b\" or [\"a\", \"b\"]");
      }
    }
    auto model = tokenizer_internal::BpeModel::Create(std::move(vocab), merges, std::move(options));
    if (!model.ok())
      return absl::InvalidArgumentError(absl::StrCat(source_, ": ", model.status().message()));
    parts->model = *std::move(model);
    return absl::OkStatus();
  }

  // A `pattern` object: {"String": "..."} or {"Regex": "..."}.
  absl::Status LoadPattern(const json& node, std::string_view path, std::unique_ptr<Regex>* regex,
                           std::string* literal) {
    const std::string p = Join(path, "pattern");
    if (!node.contains("pattern") || !node["pattern"].is_object() || node["pattern"].size() != 1) {
      return Error(p, "must be {\"String\": ...} or {\"Regex\": ...}");
    }
    const json& pattern = node["pattern"];
    if (pattern.contains("String")) {
      ASSIGN_OR_RETURN(*literal, String(pattern, p, "String"));
      return absl::OkStatus();
    }
    if (pattern.contains("Regex")) {
      ASSIGN_OR_RETURN(std::string source, String(pattern, p, "Regex"));
      auto compiled = Regex::Compile(source);
      if (!compiled.ok()) return Error(Join(p, "Regex"), std::string(compiled.status().message()));
      *regex = *std::move(compiled);
      return absl::OkStatus();
    }
    return Error(p, "must be {\"String\": ...} or {\"Regex\": ...}");
  }

  absl::Status LoadNormalizer(const json& node, std::string_view path,
                              std::vector<Normalizer::Step>* steps) {
    DepthGuard guard(&depth_);
    RETURN_IF_ERROR(CheckDepth(path));
    if (node.is_null()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::string type, Type(node, path));
    if (type == "Sequence") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "normalizers"}));
      if (!node.contains("normalizers") || !node["normalizers"].is_array()) {
        return Error(Join(path, "normalizers"), "must be an array");
      }
      for (size_t i = 0; i < node["normalizers"].size(); ++i) {
        RETURN_IF_ERROR(LoadNormalizer(node["normalizers"][i],
                                       absl::StrCat(std::string(path), ".normalizers[", i, "]"),
                                       steps));
      }
      return absl::OkStatus();
    }
    Normalizer::Step step;
    if (type == "Replace") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "pattern", "content"}));
      step.kind = Normalizer::Step::Kind::kReplace;
      RETURN_IF_ERROR(LoadPattern(node, path, &step.regex, &step.literal));
      ASSIGN_OR_RETURN(step.content, String(node, path, "content"));
    } else if (type == "Prepend") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "prepend"}));
      step.kind = Normalizer::Step::Kind::kPrepend;
      ASSIGN_OR_RETURN(step.content, String(node, path, "prepend"));
    } else {
      return Error(
          Join(path, "type"),
          absl::StrCat("'", type,
                       "' is not supported (supported normalizers: Sequence, Replace, Prepend)"));
    }
    steps->push_back(std::move(step));
    return absl::OkStatus();
  }

  absl::Status LoadPreTokenizer(const json& node, std::string_view path,
                                std::vector<std::unique_ptr<PreTokenizerStage>>* stages,
                                bool* byte_level) {
    DepthGuard guard(&depth_);
    RETURN_IF_ERROR(CheckDepth(path));
    if (node.is_null()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::string type, Type(node, path));
    if (*byte_level) {
      return Error(path, "follows a ByteLevel pre-tokenizer; ByteLevel must come last");
    }
    if (type == "Sequence") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "pretokenizers"}));
      if (!node.contains("pretokenizers") || !node["pretokenizers"].is_array()) {
        return Error(Join(path, "pretokenizers"), "must be an array");
      }
      for (size_t i = 0; i < node["pretokenizers"].size(); ++i) {
        RETURN_IF_ERROR(LoadPreTokenizer(node["pretokenizers"][i],
                                         absl::StrCat(std::string(path), ".pretokenizers[", i, "]"),
                                         stages, byte_level));
      }
      return absl::OkStatus();
    }
    if (type == "Split") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "pattern", "behavior", "invert"}));
      std::unique_ptr<Regex> regex;
      std::string literal;
      RETURN_IF_ERROR(LoadPattern(node, path, &regex, &literal));
      ASSIGN_OR_RETURN(std::string behavior_name, String(node, path, "behavior"));
      static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
          {"Removed", SplitBehavior::kRemoved},
          {"Isolated", SplitBehavior::kIsolated},
          {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
          {"MergedWithNext", SplitBehavior::kMergedWithNext},
          {"Contiguous", SplitBehavior::kContiguous},
      };
      const SplitBehavior* behavior = nullptr;
      for (const auto& [name, value] : kBehaviors) {
        if (behavior_name == name) behavior = &value;
      }
      if (behavior == nullptr)
        return Error(Join(path, "behavior"), absl::StrCat("'", behavior_name, "' is unknown"));
      ASSIGN_OR_RETURN(bool invert, Bool(node, path, "invert", false));
      stages->push_back(
          std::make_unique<SplitStage>(std::move(regex), std::move(literal), *behavior, invert));
      return absl::OkStatus();
    }
    if (type == "Digits") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "individual_digits"}));
      ASSIGN_OR_RETURN(bool individual, Bool(node, path, "individual_digits", false));
      stages->push_back(std::make_unique<DigitsStage>(individual));
      return absl::OkStatus();
    }
    if (type == "ByteLevel") {
      RETURN_IF_ERROR(
          CheckObject(node, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"}));
      ASSIGN_OR_RETURN(bool add_prefix_space, Bool(node, path, "add_prefix_space", true));
      ASSIGN_OR_RETURN(bool use_regex, Bool(node, path, "use_regex", true));
      ASSIGN_OR_RETURN(bool trim_offsets, Bool(node, path, "trim_offsets", true));
      (void)trim_offsets;  // Offsets only; ids are unaffected.
      ASSIGN_OR_RETURN(auto stage, ByteLevelStage::Create(add_prefix_space, use_regex));
      if (add_prefix_space || use_regex) stages->push_back(std::move(stage));
      *byte_level = true;
      return absl::OkStatus();
    }
    return Error(Join(path, "type"),
                 absl::StrCat("'", type,
                              "' is not supported (supported pre-tokenizers: Sequence, "
                              "Split, Digits, ByteLevel)"));
  }

  absl::Status LoadAddedTokens(const json& node, TokenizerParts* parts) {
    if (!node.is_array()) return Error("added_tokens", Expected("an array", node));
    std::vector<AddedToken> tokens;
    std::map<std::string, int32_t> new_ids;
    for (size_t i = 0; i < node.size(); ++i) {
      const std::string path = absl::StrCat("added_tokens[", i, "]");
      const json& t = node[i];
      RETURN_IF_ERROR(CheckObject(
          t, path, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}));
      AddedToken token;
      if (!t.contains("id") || !IsTokenId(t["id"])) {
        return Error(Join(path, "id"),
                     absl::StrCat("must be a non-negative integer up to ", kMaxTokenId,
                                  t.contains("id") ? ", got " + JsonValueForMessage(t["id"]) : ""));
      }
      ASSIGN_OR_RETURN(token.content, String(t, path, "content"));
      ASSIGN_OR_RETURN(token.single_word, Bool(t, path, "single_word", false));
      ASSIGN_OR_RETURN(token.lstrip, Bool(t, path, "lstrip", false));
      ASSIGN_OR_RETURN(token.rstrip, Bool(t, path, "rstrip", false));
      ASSIGN_OR_RETURN(token.special, Bool(t, path, "special", false));
      ASSIGN_OR_RETURN(token.normalized, Bool(t, path, "normalized", !token.special));
      // Hugging Face ignores the stored id: a token already in the model's
      // vocabulary keeps that id, a new one gets the next id after the
      // vocabulary (its size plus the new tokens so far). Consistent files
      // store those same ids.
      if (token.content.empty()) continue;
      if (auto id = parts->model->TokenToId(token.content)) {
        token.id = *id;
      } else if (auto it = new_ids.find(token.content); it != new_ids.end()) {
        token.id = it->second;
      } else {
        token.id = static_cast<int32_t>(parts->model->VocabularySize() + new_ids.size());
        new_ids[token.content] = token.id;
      }
      bool replaced = false;
      for (AddedToken& existing : tokens) {
        if (existing.content == token.content) {
          existing = token;  // A repeated token updates the earlier entry.
          replaced = true;
        }
      }
      if (!replaced) tokens.push_back(std::move(token));
    }
    const Normalizer& normalizer = parts->normalizer;
    parts->added.emplace(std::move(tokens), [&normalizer](const std::string& content) {
      std::string out;
      if (!normalizer.Normalize(content, &out).ok()) out = content;
      return out;
    });
    return absl::OkStatus();
  }

  absl::Status LoadPostProcessor(const json& node, std::string_view path, TokenizerParts* parts) {
    DepthGuard guard(&depth_);
    RETURN_IF_ERROR(CheckDepth(path));
    if (node.is_null()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::string type, Type(node, path));
    if (type == "Sequence") {
      RETURN_IF_ERROR(CheckObject(node, path, {"type", "processors"}));
      if (!node.contains("processors") || !node["processors"].is_array()) {
        return Error(Join(path, "processors"), "must be an array");
      }
      for (size_t i = 0; i < node["processors"].size(); ++i) {
        RETURN_IF_ERROR(LoadPostProcessor(
            node["processors"][i], absl::StrCat(std::string(path), ".processors[", i, "]"), parts));
      }
      return absl::OkStatus();
    }
    if (type == "ByteLevel") {
      return CheckObject(node, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
    }
    if (type != "TemplateProcessing") {
      return Error(Join(path, "type"),
                   absl::StrCat("'", type,
                                "' is not supported (supported post-processors: "
                                "TemplateProcessing, ByteLevel, Sequence)"));
    }
    RETURN_IF_ERROR(CheckObject(node, path, {"type", "single", "pair", "special_tokens"}));
    const json& specials =
        node.contains("special_tokens") ? node["special_tokens"] : json::object();
    if (!specials.is_object()) {
      return Error(Join(path, "special_tokens"), Expected("an object", specials));
    }
    if (!node.contains("single") || !node["single"].is_array())
      return Error(Join(path, "single"), "must be an array");
    tokenizer_internal::PostProcessStep step;
    bool seen_sequence = false;
    for (size_t i = 0; i < node["single"].size(); ++i) {
      const json& item = node["single"][i];
      const std::string item_path = absl::StrCat(std::string(path), ".single[", i, "]");
      if (item.is_object() && item.contains("Sequence") && item["Sequence"].is_object()) {
        const json& sequence = item["Sequence"];
        if (sequence.contains("id") && !sequence["id"].is_string()) {
          return Error(absl::StrCat(item_path, ".Sequence.id"),
                       Expected("a string", sequence["id"]));
        }
        if (seen_sequence || !sequence.contains("id") || sequence["id"] != "A") {
          return Error(item_path, "must be the one sequence $A");
        }
        seen_sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken") &&
                 item["SpecialToken"].is_object() && item["SpecialToken"].contains("id") &&
                 item["SpecialToken"]["id"].is_string()) {
        const std::string name = item["SpecialToken"]["id"].get<std::string>();
        if (!specials.contains(name) || !specials[name].is_object() ||
            !specials[name].contains("ids") || !specials[name]["ids"].is_array()) {
          return Error(item_path, absl::StrCat("names special token '", name,
                                               "' without ids in special_tokens"));
        }
        for (const json& id : specials[name]["ids"]) {
          if (!IsTokenId(id)) {
            return Error(Join(path, "special_tokens"),
                         absl::StrCat("'", name, "' has an invalid id ", JsonValueForMessage(id),
                                      " (ids are integers in [0, ", kMaxTokenId, "])"));
          }
          (seen_sequence ? step.suffix : step.prefix).push_back(id.get<int32_t>());
        }
      } else {
        return Error(item_path, "must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
    if (!seen_sequence) return Error(Join(path, "single"), "has no $A");
    parts->post_process.push_back(std::move(step));
    return absl::OkStatus();
  }

  absl::Status LoadDecoder(const json& node, TokenizerParts* parts) {
    if (node.is_null()) {
      parts->join_with_space = true;
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(std::string type, Type(node, "decoder"));
    if (type != "ByteLevel") {
      return Error("decoder.type", absl::StrCat("'", type, "' is not supported (only ByteLevel)"));
    }
    RETURN_IF_ERROR(
        CheckObject(node, "decoder", {"type", "add_prefix_space", "trim_offsets", "use_regex"}));
    parts->byte_level_decoder = true;
    return absl::OkStatus();
  }

  // The bytes each id decodes to. The ByteLevel decoder maps each character
  // back to its byte; a token with any other character (such as DeepSeek's
  // special tokens) is kept as its UTF-8 text, as in Hugging Face.
  static void BuildDecodingTables(TokenizerParts* parts) {
    int32_t limit = parts->model->IdLimit();
    if (parts->added) {
      for (const AddedToken& t : parts->added->tokens()) limit = std::max(limit, t.id + 1);
    }
    parts->token_bytes.assign(limit, std::nullopt);
    parts->special.assign(limit, false);
    auto set = [parts](int32_t id, const std::string& token) {
      if (!parts->byte_level_decoder) {
        parts->token_bytes[id] = token;
        return;
      }
      std::string bytes;
      for (size_t pos = 0; pos < token.size();) {
        char32_t c;
        pos += tokenizer_internal::DecodeUtf8(token, pos, &c);
        const int b = tokenizer_internal::ByteLevelByte(c);
        if (b < 0) {
          bytes = token;
          break;
        }
        bytes += static_cast<char>(b);
      }
      parts->token_bytes[id] = std::move(bytes);
    };
    for (int32_t id = 0; id < parts->model->IdLimit(); ++id) {
      if (const std::string* token = parts->model->IdToToken(id)) set(id, *token);
    }
    if (parts->added) {
      for (const AddedToken& t : parts->added->tokens()) {
        set(t.id, t.content);
        parts->special[t.id] = t.special;
      }
    }
  }

  std::string source_;
  std::vector<Normalizer::Step> steps_;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  auto text = ReadRegularFile(path, kMaxTokenizerJsonBytes);
  if (absl::IsNotFound(text.status())) {
    return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  }
  if (!text.ok()) return text.status();
  return FromJson(*text, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text,
                                                               const std::string& source) {
  return GuardJsonReader(source, [&]() -> absl::StatusOr<std::unique_ptr<Tokenizer>> {
    const json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
    }
    Loader loader(source);
    ASSIGN_OR_RETURN(std::unique_ptr<tokenizer_internal::TokenizerParts> parts, loader.Load(root));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(parts)));
  });
}

}  // namespace dsv2
