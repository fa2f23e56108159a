#include "server/api/text_frontend.h"

#include <filesystem>

#include "common/base/logging.h"
#include "common/base/status_macros.h"
#include "common/tokenizer/streaming_detokenizer.h"
#include "common/tokenizer/unicode.h"

namespace dsv2 {
namespace {

class Detokenizer final : public IncrementalTextDecoder {
 public:
  Detokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
      : stream_(tokenizer, skip_special_tokens) {}
  std::string Append(int32_t token) override { return stream_.Append(token); }
  std::string Finish() override { return stream_.Finish(); }

 private:
  StreamingDetokenizer stream_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TextFrontend>> TextFrontend::LoadIfPresent(const std::string& dir) {
  std::error_code error;  // Not the throwing exists(): ModelTokenizer::Load names the problem.
  if (!std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json", error) && !error) {
    DSV2_LOG(WARNING) << dir << " has no tokenizer.json: only token-id input is served";
    return nullptr;
  }
  ASSIGN_OR_RETURN(ModelTokenizer tokenizer, ModelTokenizer::Load(dir));
  DSV2_LOG(INFO) << "tokenizer: " << tokenizer.tokenizer().VocabSize() << " tokens from " << dir
                 << "/tokenizer.json";
  return std::make_unique<TextFrontend>(std::move(tokenizer));
}

TextFrontend::TokenPiece TextFrontend::Token(int32_t id) const {
  const std::string* bytes = tokenizer_.tokenizer().TokenBytes(id);
  if (bytes == nullptr) return {};
  return {tokenizer_internal::ReplaceInvalidUtf8(*bytes), *bytes};
}

std::unique_ptr<IncrementalTextDecoder> TextFrontend::NewDecoder(bool skip_special_tokens) const {
  return std::make_unique<Detokenizer>(tokenizer_.tokenizer(), skip_special_tokens);
}

}  // namespace dsv2
