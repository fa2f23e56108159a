#include "server/http/openai_protocol.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsv2 {
namespace {

using nlohmann::json;

constexpr char kParamPayload[] = "dsv2.openai.param";
// Nesting a request never needs; deeper bodies are refused before parsing.
constexpr int kMaxJsonDepth = 32;
// vLLM's stand-in for a log probability of -infinity.
constexpr double kMinLogprob = -9999.0;

absl::Status Invalid(const std::string& param, const std::string& message) {
  absl::Status status = absl::InvalidArgumentError(message);
  if (!param.empty()) status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

// The deepest nesting of arrays and objects in `body`, counted outside
// strings; stops counting past `limit`.
int JsonDepth(std::string_view body, int limit) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

const char* TypeName(const json& value) {
  switch (value.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "something else";
  }
}

// Field readers: absent or null is nullopt; a value of the wrong type is
// InvalidArgument naming the field.
class Fields {
 public:
  explicit Fields(const json& object, std::string prefix = "")
      : object_(object), prefix_(std::move(prefix)) {}

  const json* Find(const char* name) const {
    const auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::string Name(const char* name) const { return prefix_ + name; }

  absl::Status WrongType(const char* name, const json& value, const char* expected) const {
    return Invalid(Name(name), absl::StrCat("`", Name(name), "` must be ", expected, ", not ",
                                            TypeName(value)));
  }

  absl::StatusOr<std::optional<bool>> Bool(const char* name) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_boolean()) return WrongType(name, *value, "a boolean");
    return value->get<bool>();
  }
  absl::StatusOr<std::optional<std::string>> String(const char* name) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) return WrongType(name, *value, "a string");
    return value->get<std::string>();
  }
  // A finite number that fits a float.
  absl::StatusOr<std::optional<float>> Float(const char* name) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number()) return WrongType(name, *value, "a number");
    const double d = value->get<double>();
    if (!std::isfinite(d) || std::fabs(d) > FLT_MAX) {
      return Invalid(Name(name), absl::StrCat("`", Name(name), "` is out of range"));
    }
    return static_cast<float>(d);
  }
  // An integer (a number without a fraction) in [min, max].
  absl::StatusOr<std::optional<int64_t>> Integer(const char* name, int64_t min,
                                                  int64_t max) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    return IntegerValue(Name(name), *value, min, max);
  }

  static absl::StatusOr<int64_t> IntegerValue(const std::string& name, const json& value,
                                              int64_t min, int64_t max) {
    int64_t n = 0;
    if (value.is_number_unsigned()) {
      const uint64_t u = value.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(name, absl::StrCat("`", name, "` must be in [", min, ", ", max, "]"));
      }
      n = static_cast<int64_t>(u);
    } else if (value.is_number_integer()) {
      n = value.get<int64_t>();
    } else if (value.is_number_float()) {
      const double d = value.get<double>();
      if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e18) {
        return Invalid(name, absl::StrCat("`", name, "` must be an integer"));
      }
      n = static_cast<int64_t>(d);
    } else {
      return Invalid(name, absl::StrCat("`", name, "` must be an integer, not ", TypeName(value)));
    }
    if (n < min || n > max) {
      return Invalid(name, absl::StrCat("`", name, "` must be in [", min, ", ", max, "], not ", n));
    }
    return n;
  }

 private:
  const json& object_;
  const std::string prefix_;
};

#define DSV2_ASSIGN_FIELD(lhs, expr)          \
  auto lhs##_or = (expr);                     \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  const auto lhs = *lhs##_or

absl::Status Unsupported(const std::string& field, const std::string& why = "") {
  return Invalid(field, absl::StrCat("`", field, "` is not supported by this server",
                                     why.empty() ? "" : ": ", why));
}

// Fields of features the server does not have: refused unless they ask for
// the default.
absl::Status CheckUnsupported(const json& body, OpenAiEndpoint endpoint) {
  const auto present = [&](const char* name) -> const json* {
    const auto it = body.find(name);
    return it == body.end() || it->is_null() ? nullptr : &*it;
  };
  const auto is_false = [](const json& v) { return v.is_boolean() && !v.get<bool>(); };
  const auto is_true = [](const json& v) { return v.is_boolean() && v.get<bool>(); };
  const auto is_empty = [](const json& v) {
    return (v.is_object() || v.is_array() || v.is_string()) && v.empty();
  };
  if (const json* v = present("suffix"); v && !is_empty(*v)) return Unsupported("suffix");
  if (const json* v = present("tools"); v && !is_empty(*v)) return Unsupported("tools");
  if (const json* v = present("functions"); v && !is_empty(*v)) return Unsupported("functions");
  if (const json* v = present("tool_choice"); v && !(v->is_string() && *v == "none")) {
    return Unsupported("tool_choice");
  }
  if (const json* v = present("response_format")) {
    const bool text = v->is_object() && v->contains("type") && (*v)["type"] == "text";
    if (!text) return Unsupported("response_format", "only {\"type\": \"text\"}");
  }
  for (const char* guided : {"guided_json", "guided_regex", "guided_choice", "guided_grammar",
                             "structured_outputs", "prompt_logprobs", "truncate_prompt_tokens",
                             "chat_template", "logits_processors"}) {
    if (const json* v = present(guided); v && !is_empty(*v)) return Unsupported(guided);
  }
  if (const json* v = present("use_beam_search"); v && !is_false(*v)) {
    return Unsupported("use_beam_search");
  }
  if (endpoint == OpenAiEndpoint::kChat) {
    if (const json* v = present("echo"); v && !is_false(*v)) {
      return Unsupported("echo", "chat completions do not echo");
    }
    if (const json* v = present("add_generation_prompt"); v && !is_true(*v)) {
      return Unsupported("add_generation_prompt", "the chat template always ends with it");
    }
    if (const json* v = present("continue_final_message"); v && !is_false(*v)) {
      return Unsupported("continue_final_message");
    }
  }
  return absl::OkStatus();
}

// `prompt`: one prompt (a string or token ids), or a list of them.
absl::Status ReadPrompts(const json& body, std::vector<v1::GenerateRequest>* out) {
  const auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return Invalid("prompt", "`prompt` is required");
  const json& prompt = *it;
  const auto ids = [&](const json& list, const std::string& name) -> absl::Status {
    if (list.empty()) return Invalid(name, absl::StrCat("`", name, "` is empty"));
    v1::GenerateRequest& request = out->emplace_back();
    for (size_t i = 0; i < list.size(); ++i) {
      absl::StatusOr<int64_t> id = Fields::IntegerValue(
          absl::StrCat(name, "[", i, "]"), list[i], 0, std::numeric_limits<int32_t>::max());
      if (!id.ok()) return id.status();
      request.mutable_token_ids()->add_ids(static_cast<int32_t>(*id));
    }
    return absl::OkStatus();
  };
  if (prompt.is_string()) {
    out->emplace_back().set_text(prompt.get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt.is_array()) {
    return Invalid("prompt", absl::StrCat("`prompt` must be a string, an array of token ids or an "
                                          "array of them, not ",
                                          TypeName(prompt)));
  }
  if (prompt.empty()) return Invalid("prompt", "`prompt` is empty");
  if (prompt[0].is_number()) return ids(prompt, "prompt");
  if (prompt.size() > static_cast<size_t>(kMaxChoices)) {
    return Invalid("prompt", absl::StrCat("`prompt` holds ", prompt.size(),
                                          " prompts; at most ", kMaxChoices));
  }
  for (size_t i = 0; i < prompt.size(); ++i) {
    const std::string name = absl::StrCat("prompt[", i, "]");
    if (prompt[i].is_string()) {
      out->emplace_back().set_text(prompt[i].get<std::string>());
    } else if (prompt[i].is_array()) {
      if (absl::Status s = ids(prompt[i], name); !s.ok()) return s;
    } else {
      return Invalid(name, absl::StrCat("`", name, "` must be a string or an array of token ids, "
                                        "not ",
                                        TypeName(prompt[i])));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadMessages(const json& body, v1::GenerateRequest* out) {
  const auto it = body.find("messages");
  if (it == body.end() || it->is_null()) return Invalid("messages", "`messages` is required");
  if (!it->is_array()) {
    return Invalid("messages",
                   absl::StrCat("`messages` must be an array, not ", TypeName(*it)));
  }
  if (it->empty()) return Invalid("messages", "`messages` is empty");
  v1::ChatInput* chat = out->mutable_chat();
  for (size_t i = 0; i < it->size(); ++i) {
    const json& message = (*it)[i];
    const std::string name = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) {
      return Invalid(name, absl::StrCat("`", name, "` must be an object, not ", TypeName(message)));
    }
    Fields fields(message, name + ".");
    DSV2_ASSIGN_FIELD(role, fields.String("role"));
    if (!role) return Invalid(name + ".role", absl::StrCat("`", name, ".role` is required"));
    if (const json* calls = fields.Find("tool_calls"); calls && !calls->empty()) {
      return Unsupported(name + ".tool_calls");
    }
    v1::ChatMessage* turn = chat->add_messages();
    turn->set_role(*role);
    const json* content = fields.Find("content");
    if (content == nullptr) continue;  // An empty turn.
    if (content->is_string()) {
      turn->set_content(content->get<std::string>());
      continue;
    }
    if (!content->is_array()) {
      return fields.WrongType("content", *content, "a string or an array of text parts");
    }
    std::vector<std::string> texts;
    for (size_t j = 0; j < content->size(); ++j) {
      const json& part = (*content)[j];
      const std::string part_name = absl::StrCat(name, ".content[", j, "]");
      const auto type = part.is_object() ? part.find("type") : part.end();
      const auto text = part.is_object() ? part.find("text") : part.end();
      if (!part.is_object() || type == part.end() || *type != "text" || text == part.end() ||
          !text->is_string()) {
        return Invalid(part_name, absl::StrCat("`", part_name,
                                               "` must be {\"type\": \"text\", \"text\": ...}: "
                                               "this server takes text only"));
      }
      texts.push_back(text->get<std::string>());
    }
    turn->set_content(absl::StrJoin(texts, "\n"));
  }
  return absl::OkStatus();
}

// logit_bias: {"token id": bias, ...}, ids in decimal digits, biases in
// [-100, 100]. (The vocabulary and the entry count are the service's to
// check.)
absl::Status ReadLogitBias(const Fields& fields, v1::SamplingParams* sampling) {
  const json* biases = fields.Find("logit_bias");
  if (biases == nullptr) return absl::OkStatus();
  if (!biases->is_object()) {
    return fields.WrongType("logit_bias", *biases, "an object of token ids to biases");
  }
  auto& out = *sampling->mutable_logit_bias();
  for (const auto& [key, value] : biases->items()) {
    int64_t id = 0;
    const bool digits = !key.empty() && key.size() <= 10 &&
                        std::all_of(key.begin(), key.end(),
                                    [](char c) { return c >= '0' && c <= '9'; });
    if (digits) id = std::stoll(key);
    if (!digits || id > std::numeric_limits<int32_t>::max()) {
      return Invalid("logit_bias",
                     absl::StrCat("`logit_bias` keys must be token ids in decimal digits, not \"",
                                  absl::CHexEscape(key.substr(0, 32)),
                                  key.size() > 32 ? "...\"" : "\""));
    }
    const std::string name = absl::StrCat("logit_bias[\"", key, "\"]");
    if (!value.is_number()) {
      return Invalid("logit_bias",
                     absl::StrCat("`", name, "` must be a number, not ", TypeName(value)));
    }
    const double bias = value.get<double>();
    if (!(bias >= -100.0 && bias <= 100.0)) {
      return Invalid("logit_bias", absl::StrCat("`", name, "` must be in [-100, 100]"));
    }
    // "7" and "07" name the same token.
    if (!out.insert({static_cast<int32_t>(id), static_cast<float>(bias)}).second) {
      return Invalid("logit_bias", absl::StrCat("`logit_bias` names token id ", id, " twice"));
    }
  }
  return absl::OkStatus();
}

// The string list of `stop`: a string or an array of strings.
absl::Status ReadStop(const Fields& fields, v1::StoppingCriteria* stopping) {
  const json* stop = fields.Find("stop");
  if (stop == nullptr) return absl::OkStatus();
  if (stop->is_string()) {
    stopping->add_stop(stop->get<std::string>());
    return absl::OkStatus();
  }
  if (!stop->is_array()) return fields.WrongType("stop", *stop, "a string or an array of strings");
  for (size_t i = 0; i < stop->size(); ++i) {
    if (!(*stop)[i].is_string()) {
      return Invalid("stop", absl::StrCat("`stop[", i, "]` must be a string, not ",
                                          TypeName((*stop)[i])));
    }
    stopping->add_stop((*stop)[i].get<std::string>());
  }
  return absl::OkStatus();
}

absl::Status ReadFields(const json& body, OpenAiEndpoint endpoint, OpenAiRequest* out) {
  const Fields fields(body);
  if (absl::Status s = CheckUnsupported(body, endpoint); !s.ok()) return s;
  DSV2_ASSIGN_FIELD(model, fields.String("model"));
  out->model = model.value_or("");
  DSV2_ASSIGN_FIELD(stream, fields.Bool("stream"));
  out->stream = stream.value_or(false);
  DSV2_ASSIGN_FIELD(n, fields.Integer("n", 1, kMaxChoices));
  out->n = static_cast<int>(n.value_or(1));
  // vLLM's best_of > n ranks extra samples and returns the best n; this
  // server has no ranking, so best_of may only be n.
  DSV2_ASSIGN_FIELD(best_of, fields.Integer("best_of", 1, kMaxChoices));
  if (best_of && *best_of != out->n) {
    return Invalid("best_of", absl::StrCat("`best_of` must equal `n` (", out->n,
                                           "): this server does not rank extra samples"));
  }
  if (const json* options = fields.Find("stream_options")) {
    if (!out->stream) {
      return Invalid("stream_options", "`stream_options` is only for `stream: true`");
    }
    if (!options->is_object()) return fields.WrongType("stream_options", *options, "an object");
    Fields option_fields(*options, "stream_options.");
    DSV2_ASSIGN_FIELD(include_usage, option_fields.Bool("include_usage"));
    DSV2_ASSIGN_FIELD(continuous, option_fields.Bool("continuous_usage_stats"));
    out->include_usage = include_usage.value_or(false);
    out->continuous_usage = continuous.value_or(false);
  }

  if (endpoint == OpenAiEndpoint::kChat) {
    if (absl::Status s = ReadMessages(body, &out->prompts.emplace_back()); !s.ok()) return s;
  } else {
    if (absl::Status s = ReadPrompts(body, &out->prompts); !s.ok()) return s;
  }
  if (out->choices() > kMaxChoices) {
    return Invalid("n", absl::StrCat("`n` is ", out->n, " for each of ", out->prompts.size(),
                                     " prompts: at most ", kMaxChoices, " choices in all"));
  }
  // Each choice is a request of its own, with its own copy of its prompt.
  int64_t input_bytes = 0;
  for (const v1::GenerateRequest& prompt : out->prompts) {
    input_bytes += static_cast<int64_t>(prompt.ByteSizeLong()) * out->n;
  }
  if (input_bytes > kMaxChoiceInputBytes) {
    return Invalid("n", absl::StrCat("the prompts of the ", out->choices(), " choices come to ",
                                     input_bytes, " bytes; at most ", kMaxChoiceInputBytes,
                                     " in all"));
  }
  v1::GenerateRequest& request = out->generate;
  request.MergeFrom(out->prompts[0]);

  constexpr int64_t kMaxCount = std::numeric_limits<int32_t>::max();
  v1::StoppingCriteria& stopping = *request.mutable_stopping();
  DSV2_ASSIGN_FIELD(max_tokens, fields.Integer("max_tokens", 1, kMaxCount));
  std::optional<int64_t> limit = max_tokens;
  if (endpoint == OpenAiEndpoint::kChat) {
    DSV2_ASSIGN_FIELD(max_completion, fields.Integer("max_completion_tokens", 1, kMaxCount));
    if (max_completion) limit = max_completion;
    out->fill_context = !limit.has_value();
  }
  if (limit) stopping.set_max_tokens(static_cast<uint32_t>(*limit));
  DSV2_ASSIGN_FIELD(min_tokens, fields.Integer("min_tokens", 0, kMaxCount));
  if (min_tokens) stopping.set_min_tokens(static_cast<uint32_t>(*min_tokens));
  DSV2_ASSIGN_FIELD(ignore_eos, fields.Bool("ignore_eos"));
  stopping.set_ignore_eos(ignore_eos.value_or(false));
  DSV2_ASSIGN_FIELD(include_stop, fields.Bool("include_stop_str_in_output"));
  stopping.set_include_stop_str_in_output(include_stop.value_or(false));
  if (absl::Status s = ReadStop(fields, &stopping); !s.ok()) return s;
  if (const json* ids = fields.Find("stop_token_ids")) {
    if (!ids->is_array()) return fields.WrongType("stop_token_ids", *ids, "an array of token ids");
    for (size_t i = 0; i < ids->size(); ++i) {
      absl::StatusOr<int64_t> id = Fields::IntegerValue(absl::StrCat("stop_token_ids[", i, "]"),
                                                        (*ids)[i], 0, kMaxCount);
      if (!id.ok()) return id.status();
      stopping.add_stop_token_ids(static_cast<int32_t>(*id));
    }
  }

  v1::SamplingParams& sampling = *request.mutable_sampling();
  DSV2_ASSIGN_FIELD(temperature, fields.Float("temperature"));
  if (temperature) sampling.set_temperature(*temperature);
  DSV2_ASSIGN_FIELD(top_p, fields.Float("top_p"));
  if (top_p) sampling.set_top_p(*top_p);
  DSV2_ASSIGN_FIELD(top_k, fields.Integer("top_k", -1, kMaxCount));
  if (top_k) sampling.set_top_k(*top_k == -1 ? 0 : static_cast<int32_t>(*top_k));  // vLLM's -1: all.
  DSV2_ASSIGN_FIELD(min_p, fields.Float("min_p"));
  if (min_p) sampling.set_min_p(*min_p);
  DSV2_ASSIGN_FIELD(repetition, fields.Float("repetition_penalty"));
  if (repetition) sampling.set_repetition_penalty(*repetition);
  DSV2_ASSIGN_FIELD(presence, fields.Float("presence_penalty"));
  if (presence) sampling.set_presence_penalty(*presence);
  DSV2_ASSIGN_FIELD(frequency, fields.Float("frequency_penalty"));
  if (frequency) sampling.set_frequency_penalty(*frequency);
  if (const json* seed = fields.Find("seed")) {
    // Any 64-bit integer; a negative one is taken modulo 2^64.
    if (seed->is_number_unsigned()) {
      sampling.set_seed(seed->get<uint64_t>());
    } else {
      DSV2_ASSIGN_FIELD(value, fields.Integer("seed", std::numeric_limits<int64_t>::min(),
                                              std::numeric_limits<int64_t>::max()));
      sampling.set_seed(static_cast<uint64_t>(*value));
    }
  }
  if (absl::Status s = ReadLogitBias(fields, &sampling); !s.ok()) return s;
  DSV2_ASSIGN_FIELD(skip_special, fields.Bool("skip_special_tokens"));
  if (skip_special) request.set_skip_special_tokens(*skip_special);
  DSV2_ASSIGN_FIELD(as_ids, fields.Bool("return_tokens_as_token_ids"));
  out->tokens_as_ids = as_ids.value_or(false);

  // Log probabilities: completions take a count; chat a switch and a count.
  constexpr int64_t kMaxLogprobs = 20;  // As api_limits.h; the service checks it again.
  if (endpoint == OpenAiEndpoint::kCompletions) {
    DSV2_ASSIGN_FIELD(logprobs, fields.Integer("logprobs", 0, kMaxLogprobs));
    if (logprobs) out->logprobs = static_cast<int>(*logprobs);
    DSV2_ASSIGN_FIELD(echo, fields.Bool("echo"));
    out->echo = echo.value_or(false);
    if (out->echo) {
      // Token-id prompts are the caller's to decode.
      for (const v1::GenerateRequest& prompt : out->prompts) {
        out->echo_texts.push_back(prompt.text());
      }
      if (logprobs) request.set_prompt_logprobs(static_cast<int32_t>(*logprobs));
    }
  } else {
    DSV2_ASSIGN_FIELD(logprobs, fields.Bool("logprobs"));
    DSV2_ASSIGN_FIELD(top, fields.Integer("top_logprobs", 0, kMaxLogprobs));
    if (top && !logprobs.value_or(false)) {
      return Invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`");
    }
    if (logprobs.value_or(false)) out->logprobs = static_cast<int>(top.value_or(0));
  }
  if (out->logprobs >= 0) request.set_logprobs(out->logprobs);
  return absl::OkStatus();
}

#undef DSV2_ASSIGN_FIELD

double FiniteLogprob(float logprob) {
  return std::isfinite(logprob) ? static_cast<double>(logprob) : kMinLogprob;
}

json ByteList(const std::string& bytes) {
  json list = json::array();
  for (unsigned char b : bytes) list.push_back(static_cast<int>(b));
  return list;
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, std::string_view body) {
  if (JsonDepth(body, kMaxJsonDepth) > kMaxJsonDepth) {
    return Invalid("", absl::StrCat("the body nests deeper than ", kMaxJsonDepth, " levels"));
  }
  json parsed;
  try {
    parsed = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    return Invalid("", absl::StrCat("the body is not valid JSON: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("the body is too large to parse");
  }
  if (!parsed.is_object()) {
    return Invalid("", absl::StrCat("the body must be a JSON object, not ", TypeName(parsed)));
  }
  OpenAiRequest request;
  request.endpoint = endpoint;
  try {
    if (absl::Status s = ReadFields(parsed, endpoint, &request); !s.ok()) return s;
  } catch (const json::exception& e) {
    // Every accessor above checks types first; this is a bug, not input.
    return absl::InternalError(absl::StrCat("unexpected JSON structure: ", e.what()));
  }
  return request;
}

std::string OpenAiParam(const absl::Status& status) {
  absl::optional<absl::Cord> param = status.GetPayload(kParamPayload);
  if (param) return std::string(*param);
  // The service's messages start with the request field they are about.
  static const std::pair<const char*, const char*> kPrefixes[] = {
      {"temperature", "temperature"},       {"top_p", "top_p"},
      {"top_k", "top_k"},                   {"min_p", "min_p"},
      {"repetition_penalty", "repetition_penalty"},
      {"presence_penalty", "presence_penalty"},
      {"logit_bias", "logit_bias"},         {"sampling.logit_bias", "logit_bias"},
      {"prompt_logprobs", "logprobs"},      {"echo", "echo"},
      {"frequency_penalty", "frequency_penalty"},
      {"max_tokens", "max_tokens"},         {"min_tokens", "min_tokens"},
      {"logprobs", "logprobs"},             {"stopping.stop_token_ids", "stop_token_ids"},
      {"stop token id", "stop_token_ids"},  {"stopping.stop", "stop"},
      {"stop strings", "stop"},             {"prompt (", "max_tokens"},
      {"prompt", "prompt"},
      {"text", "prompt"},                   {"token_ids", "prompt"},
      {"the prompt", "prompt"},             {"chat.messages", "messages"},
  };
  for (const auto& [prefix, name] : kPrefixes) {
    if (absl::StartsWith(status.message(), prefix)) return name;
  }
  return "";
}

OpenAiError OpenAiErrorFromStatus(const absl::Status& status) {
  OpenAiError error;
  error.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      error.http_status = 400;
      error.type = "invalid_request_error";
      error.param = OpenAiParam(status);
      break;
    case absl::StatusCode::kUnauthenticated:
      error.http_status = 401;
      error.type = "authentication_error";
      error.code = "invalid_api_key";
      break;
    case absl::StatusCode::kPermissionDenied:
      error.http_status = 403;
      error.type = "permission_error";
      break;
    case absl::StatusCode::kNotFound:
      error.http_status = 404;
      error.type = "not_found_error";
      break;
    case absl::StatusCode::kResourceExhausted:
      error.http_status = 429;
      error.type = "overloaded_error";
      error.code = "server_overloaded";
      break;
    case absl::StatusCode::kUnavailable:
      error.http_status = 503;
      error.type = "service_unavailable_error";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      error.http_status = 504;
      error.type = "timeout_error";
      break;
    case absl::StatusCode::kCancelled:
      error.http_status = 499;
      error.type = "cancelled_error";
      break;
    default:
      error.http_status = 500;
      error.type = "server_error";
      break;
  }
  return error;
}

OpenAiError OpenAiErrorForHttpStatus(int http_status, std::string message) {
  OpenAiError error;
  error.http_status = http_status;
  error.message = std::move(message);
  switch (http_status) {
    case 401:
      error.type = "authentication_error";
      error.code = "invalid_api_key";
      break;
    case 403: error.type = "permission_error"; break;
    case 404:
      error.type = "not_found_error";
      error.code = "unknown_url";
      break;
    case 413:
      error.type = "invalid_request_error";
      error.code = "request_too_large";
      break;
    case 429: error.type = "overloaded_error"; break;
    case 503: error.type = "service_unavailable_error"; break;
    case 504: error.type = "timeout_error"; break;
    default: error.type = http_status < 500 ? "invalid_request_error" : "server_error"; break;
  }
  return error;
}

nlohmann::json OpenAiErrorBody(const OpenAiError& error) {
  const auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return json{{"error",
               {{"message", error.message},
                {"type", error.type},
                {"param", or_null(error.param)},
                {"code", or_null(error.code)}}}};
}

const char* OpenAiFinishReason(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_ABORT: return "abort";
    case v1::FINISH_REASON_TIME_LIMIT: return "time_limit";
    default: break;
  }
  return "stop";
}

// ---------------------------------------------------------------------------

v1::GenerateRequest ChoiceRequest(const OpenAiRequest& request, const std::string& id,
                                  int index) {
  v1::GenerateRequest choice = request.generate;
  choice.clear_input();
  choice.MergeFrom(request.prompts[index / request.n]);
  // One choice is the request `id` itself, which the service's Abort takes.
  choice.set_request_id(request.choices() == 1 ? id : absl::StrCat(id, "-", index));
  v1::SamplingParams& sampling = *choice.mutable_sampling();
  if (sampling.has_seed()) {
    sampling.set_seed(sampling.seed() + static_cast<uint64_t>(index % request.n));
  }
  return choice;
}

OpenAiResponder::OpenAiResponder(const OpenAiRequest& request, std::string id, std::string model,
                                 int64_t created, const TextFrontend* text)
    : request_(request),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created),
      text_(text),
      choices_(request.choices()) {}

std::string OpenAiResponder::TokenString(int32_t id, std::string* bytes) const {
  if (text_ == nullptr || request_.tokens_as_ids) {
    std::string name = absl::StrCat("token_id:", id);
    if (bytes != nullptr) *bytes = name;
    return name;
  }
  TextFrontend::TokenPiece piece = text_->Token(id);
  if (bytes != nullptr) *bytes = std::move(piece.bytes);
  return piece.text;
}

nlohmann::json OpenAiResponder::Logprobs(
    const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& tokens, Choice& choice,
    bool first_unscored) {
  if (request_.logprobs < 0) return nullptr;
  if (request_.endpoint == OpenAiEndpoint::kChat) {
    json content = json::array();
    for (const v1::TokenLogprob& token : tokens) {
      std::string bytes;
      const std::string name = TokenString(token.token_id(), &bytes);
      json top = json::array();
      for (const v1::TopLogprob& alternative : token.top()) {
        std::string alt_bytes;
        const std::string alt = TokenString(alternative.token_id(), &alt_bytes);
        top.push_back({{"token", alt},
                       {"logprob", FiniteLogprob(alternative.logprob())},
                       {"bytes", ByteList(alt_bytes)}});
      }
      content.push_back({{"token", name},
                         {"logprob", FiniteLogprob(token.logprob())},
                         {"bytes", ByteList(bytes)},
                         {"top_logprobs", std::move(top)}});
    }
    return json{{"content", std::move(content)}};
  }
  // Completions: parallel lists; the chosen token is among its top ones.
  json out{{"tokens", json::array()},
           {"token_logprobs", json::array()},
           {"top_logprobs", json::array()},
           {"text_offset", json::array()}};
  for (const v1::TokenLogprob& token : tokens) {
    const std::string name = TokenString(token.token_id(), nullptr);
    out["tokens"].push_back(name);
    out["text_offset"].push_back(choice.text_offset);
    choice.text_offset += name.size();
    if (first_unscored && &token == &tokens[0]) {
      out["token_logprobs"].push_back(nullptr);
      out["top_logprobs"].push_back(nullptr);
      continue;
    }
    out["token_logprobs"].push_back(FiniteLogprob(token.logprob()));
    json top = json::object();
    for (const v1::TopLogprob& alternative : token.top()) {
      const std::string alt = TokenString(alternative.token_id(), nullptr);
      if (!top.contains(alt)) top[alt] = FiniteLogprob(alternative.logprob());
    }
    if (!top.contains(name)) top[name] = FiniteLogprob(token.logprob());
    out["top_logprobs"].push_back(std::move(top));
  }
  return out;
}

namespace {

// Whether a logprobs object (or null) holds any token.
bool HasTokens(const json& logprobs) {
  if (logprobs.is_null()) return false;
  return !logprobs[logprobs.contains("content") ? "content" : "tokens"].empty();
}

// Appends each list of `part` to `into`'s (null: nothing yet).
void AppendLogprobs(json part, json* into) {
  if (part.is_null()) return;
  if (into->is_null()) {
    *into = std::move(part);
    return;
  }
  for (auto& [key, value] : part.items()) {
    for (json& element : value) (*into)[key].push_back(std::move(element));
  }
}

}  // namespace

bool OpenAiResponder::Output(int index, const v1::GenerateResponse& message, std::string* text,
                             nlohmann::json* logprobs) {
  Choice& state = choices_[index];
  const google::protobuf::RepeatedPtrField<v1::TokenLogprob>* tokens = nullptr;
  if (message.has_chunk()) {
    const v1::Chunk& chunk = message.chunk();
    state.usage = chunk.usage();
    if (request_.echo && !state.echoed) {
      state.prompt.MergeFrom(chunk.prompt_logprobs());
      if (chunk.prompt_logprobs_size() > 0 && chunk.token_ids_size() == 0) return false;
    }
    *text = chunk.text();
    tokens = &chunk.logprobs();
  } else if (message.has_complete()) {
    state.usage = message.complete().usage();
    state.finish = message.complete().finish_reason();
    *text = message.complete().text();
    tokens = &message.complete().logprobs();
  } else {
    return false;
  }
  *logprobs = nullptr;
  if (request_.echo && !state.echoed) {
    state.echoed = true;
    const int p = index / request_.n;  // The choice's prompt.
    const v1::GenerateRequest& prompt = request_.prompts[p];
    *text = request_.echo_texts[p] + *text;
    if (request_.logprobs >= 0) {
      // The prompt's first token (given as ids), then those the service scored.
      google::protobuf::RepeatedPtrField<v1::TokenLogprob> echoed;
      const bool first = prompt.token_ids().ids_size() > 0;
      if (first) echoed.Add()->set_token_id(prompt.token_ids().ids(0));
      echoed.MergeFrom(state.prompt);
      state.prompt.Clear();
      *logprobs = Logprobs(echoed, state, /*first_unscored=*/first);
    }
  }
  AppendLogprobs(Logprobs(*tokens, state), logprobs);
  return true;
}

nlohmann::json OpenAiResponder::UsageObject(const v1::Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens()},
              {"completion_tokens", usage.completion_tokens()},
              {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens()}}}};
}

nlohmann::json OpenAiResponder::TotalUsage() const {
  v1::Usage total;
  for (size_t i = 0; i < choices_.size(); ++i) {
    const v1::Usage& usage = choices_[i].usage;
    if (i % request_.n == 0) {  // The first choice of its prompt.
      total.set_prompt_tokens(total.prompt_tokens() + usage.prompt_tokens());
      total.set_cached_tokens(total.cached_tokens() + usage.cached_tokens());
    }
    total.set_completion_tokens(total.completion_tokens() + usage.completion_tokens());
  }
  return UsageObject(total);
}

nlohmann::json OpenAiResponder::ChunkObject() const {
  const bool chat = request_.endpoint == OpenAiEndpoint::kChat;
  json chunk{{"id", id_},
             {"object", chat ? "chat.completion.chunk" : "text_completion"},
             {"created", created_},
             {"model", model_},
             {"choices", json::array()}};
  if (request_.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

std::string OpenAiResponder::Event(const nlohmann::json& object) {
  return absl::StrCat("data: ", object.dump(-1, ' ', false, json::error_handler_t::replace),
                      "\n\n");
}

std::string OpenAiResponder::StreamStart() {
  if (request_.endpoint != OpenAiEndpoint::kChat) return "";
  std::string out;
  for (int i = 0; i < request_.choices(); ++i) {
    json chunk = ChunkObject();
    chunk["choices"].push_back({{"index", i},
                                {"delta", {{"role", "assistant"}, {"content", ""}}},
                                {"logprobs", nullptr},
                                {"finish_reason", nullptr}});
    out += Event(chunk);
  }
  return out;
}

std::string OpenAiResponder::StreamMessage(int index, const v1::GenerateResponse& message) {
  const bool chat = request_.endpoint == OpenAiEndpoint::kChat;
  std::string text;
  json logprobs;
  if (!Output(index, message, &text, &logprobs)) return "";
  std::optional<v1::FinishReason> finish;
  if (message.has_complete()) finish = message.complete().finish_reason();
  // A chunk whose text is held back (a possible stop string) and that
  // carries no logprobs says nothing yet.
  if (text.empty() && !finish && !HasTokens(logprobs)) return "";
  json choice{{"index", index}, {"logprobs", std::move(logprobs)}};
  if (chat) {
    choice["delta"] = text.empty() && finish ? json::object() : json{{"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["finish_reason"] = finish ? json(OpenAiFinishReason(*finish)) : json(nullptr);
  json chunk = ChunkObject();
  chunk["choices"].push_back(std::move(choice));
  if (request_.continuous_usage) chunk["usage"] = UsageObject(choices_[index].usage);
  return Event(chunk);
}

std::string OpenAiResponder::StreamEnd() {
  std::string out;
  if (request_.include_usage) {
    json chunk = ChunkObject();
    chunk["usage"] = TotalUsage();
    out = Event(chunk);
  }
  return out + "data: [DONE]\n\n";
}

std::string OpenAiResponder::StreamError(const OpenAiError& error) {
  return Event(OpenAiErrorBody(error)) + "data: [DONE]\n\n";
}

void OpenAiResponder::Add(int index, const v1::GenerateResponse& message) {
  std::string text;
  json logprobs;
  if (!Output(index, message, &text, &logprobs)) return;
  Choice& state = choices_[index];
  state.text += text;
  AppendLogprobs(std::move(logprobs), &state.logprobs);
}

nlohmann::json OpenAiResponder::Body() const {
  const bool chat = request_.endpoint == OpenAiEndpoint::kChat;
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& state = choices_[i];
    json choice{{"index", i},
                {"logprobs", state.logprobs},
                {"finish_reason", OpenAiFinishReason(state.finish)}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", state.text}};
    } else {
      choice["text"] = state.text;
    }
    choices.push_back(std::move(choice));
  }
  return json{{"id", id_},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", created_},
              {"model", model_},
              {"choices", std::move(choices)},
              {"usage", TotalUsage()}};
}

}  // namespace dsv2
