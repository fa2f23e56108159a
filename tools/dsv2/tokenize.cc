// `dsv2 tokenize` and `dsv2 detokenize`: a tokenizer.json from the command
// line, for comparing with other implementations and for scripts.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/model/config.h"
#include "common/tokenizer/tokenizer.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"

namespace dsv2::cli {
namespace {

// --tokenizer names a tokenizer.json or a model directory holding one.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const Args& args) {
  ASSIGN_OR_RETURN(std::string path, args.Require("tokenizer"));
  std::error_code error;  // Not the throwing is_directory(): FromFile names any problem.
  if (std::filesystem::is_directory(path, error)) path += "/tokenizer.json";
  return Tokenizer::FromFile(path);
}

}  // namespace

absl::Status Tokenize(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"tokenizer", true, "tokenizer.json, or a model directory with one"},
      {"text", true, "the text to tokenize"},
      {"file", true, "a file whose whole content is tokenized"},
      {"no-special-tokens", false, "do not add the post-processor's special tokens (such as BOS)"},
      {"replace-invalid-utf8", false, "replace ill-formed UTF-8 with U+FFFD instead of failing"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  if (args.Has("text") == args.Has("file")) {
    return absl::InvalidArgumentError("give exactly one of --text and --file");
  }
  std::string text;
  if (args.Has("text")) {
    text = *args.Get("text");
  } else {
    const std::string path = *args.Get("file");
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
    std::stringstream content;
    content << in.rdbuf();
    text = content.str();
  }
  ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizer(args));
  EncodeOptions options;
  options.add_special_tokens = !args.Has("no-special-tokens");
  if (args.Has("replace-invalid-utf8")) options.invalid_utf8 = InvalidUtf8::kReplace;
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text, options));
  out << "[" << absl::StrJoin(ids, ",") << "]\n";
  return absl::OkStatus();
}

absl::Status Detokenize(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"tokenizer", true, "tokenizer.json, or a model directory with one"},
      {"ids", true, "comma-separated token ids"},
      {"skip-special-tokens", false, "leave special tokens (such as BOS/EOS) out of the text"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, args.GetTokenIds("ids"));
  ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizer(args));
  // With a model directory, ids below its vocab_size that the tokenizer
  // lacks are the model's padding rows: they decode to nothing, as every
  // text path of the servers treats them.
  int64_t vocab_size = tokenizer->VocabSize();
  const std::string config_path = *args.Get("tokenizer") + "/config.json";
  std::error_code error;
  if (std::filesystem::exists(config_path, error)) {
    ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(config_path));
    vocab_size = std::max(vocab_size, config.vocab_size);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at index ", i,
                                                     " is not below the vocabulary size ",
                                                     vocab_size));
    }
  }
  out << tokenizer->Decode(ids, args.Has("skip-special-tokens"));
  return absl::OkStatus();
}

}  // namespace dsv2::cli
