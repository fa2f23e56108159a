// The subcommands of the `dsv2` tool. Each takes its arguments (after the
// subcommand name) and writes its product to `out` — standard output in the
// tool, so results can be piped — while logs and statistics go to standard
// error. A returned error is printed by main as one line, exit status 1.
#pragma once

#include <ostream>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "common/model/config.h"

namespace dsv2::cli {

// dsv2 inspect --model DIR | --config FILE
absl::Status Inspect(std::span<const std::string> argv, std::ostream& out);
// The report `inspect` prints: architecture, parameters, KV cache per token.
std::string InspectReport(const ModelConfig& config);

// dsv2 logits --model DIR --tokens 1,2,3 --out FILE.npy [--weight-check off|cheap|full]
absl::Status Logits(std::span<const std::string> argv, std::ostream& out);

// dsv2 generate --model DIR (--tokens 1,2,3 | --prompt TEXT [--chat]) --max-tokens N
//               [sampling flags] [--stats] [--weight-check off|cheap|full]
// With --prompt, DIR/tokenizer.json (and tokenizer_config.json for BOS and
// the chat template) encodes the prompt and the text streams out as decoded.
absl::Status Generate(std::span<const std::string> argv, std::ostream& out);

// dsv2 tokenize --tokenizer FILE|DIR (--text TEXT | --file F): the ids as a JSON array.
absl::Status Tokenize(std::span<const std::string> argv, std::ostream& out);

// dsv2 detokenize --tokenizer FILE|DIR --ids 1,2,3 [--skip-special-tokens]: the text.
absl::Status Detokenize(std::span<const std::string> argv, std::ostream& out);

// dsv2 client --addr ADDR (--tokens 1,2,3 | --prompt TEXT [--chat]) [request flags]
// The same request flags as generate, served by a running dsv2 server.
absl::Status Client(std::span<const std::string> argv, std::ostream& out);

// `dsv2 health --addr A [--service S] [--wait SECONDS]`: prints the server's
// health; an error unless SERVING.
absl::Status Health(std::span<const std::string> argv, std::ostream& out);

// dsv2 make-model --preset lite|v2 --layers N --seed S --out DIR
absl::Status MakeModel(std::span<const std::string> argv, std::ostream& out);

// dsv2 quantize --model IN_DIR --out OUT_DIR [--shard-mb N]: a dsv2-int8
// copy of a float checkpoint (linear layers' weights int8 with per-block
// scales; tokenizer files copied).
absl::Status Quantize(std::span<const std::string> argv, std::ostream& out);

}  // namespace dsv2::cli
