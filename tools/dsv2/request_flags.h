// The flags that describe a generation request, shared by `dsv2 generate`
// (in process) and `dsv2 client` (over gRPC): both build the same public
// API request from them, so the same flags give the same output.
#pragma once

#include <ostream>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "dsv2/v1/generation.pb.h"
#include "tools/dsv2/args.h"

namespace dsv2::cli {

// --tokens / --prompt / --chat, and OutputFlags().
std::vector<FlagSpec> RequestFlags();
// What to generate and how: --max-tokens, --min-tokens, --temperature,
// --top-p, --top-k, --min-p, the penalties, --seed, --stop (repeatable),
// --stop-token-ids, --ignore-eos.
std::vector<FlagSpec> OutputFlags();

// The request these flags describe. The CLI's temperature defaults to 0
// (greedy); everything else defaults as in the API.
absl::StatusOr<v1::GenerateRequest> BuildRequest(const Args& args);
// Sets `request`'s stopping criteria and sampling from OutputFlags().
absl::Status SetOutputOptions(const Args& args, v1::GenerateRequest* request);

// Prints a request's output as it streams: text when the input was text or
// chat, otherwise the generated ids separated by spaces and a final newline.
class OutputPrinter {
 public:
  OutputPrinter(const v1::GenerateRequest& request, std::ostream& out)
      : print_ids_(request.has_token_ids()), out_(out) {}
  void Print(std::span<const int32_t> ids, const std::string& text);
  void Finish();

 private:
  bool print_ids_;
  std::ostream& out_;
  int64_t printed_ = 0;
};

}  // namespace dsv2::cli
