// dsv2: the command-line tool of dsv2-serve. See README.md.
#include <iostream>
#include <string>
#include <vector>

#include "tools/dsv2/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: dsv2 COMMAND [flags]\n"
    "\n"
    "commands:\n"
    "  inspect     architecture, parameter counts and KV cache size of a model\n"
    "  logits      float32 logits of every prompt position, as a .npy file\n"
    "  generate    generate from token ids or a text prompt, printed as produced\n"
    "  tokenize    the token ids of a text, as a JSON array\n"
    "  detokenize  the text of token ids\n"
    "  client      generate through a running server (dsv2-standalone, dsv2-router), streamed\n"
    "  health      a server's grpc.health.v1 status (exit 0 when SERVING)\n"
    "  make-model  write a random-weight checkpoint at the published dimensions\n"
    "  quantize    write a copy of a checkpoint with 8-bit weights (dsv2-int8)\n"
    "\n"
    "Run 'dsv2 COMMAND --help' for a command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    std::cerr << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  absl::Status status;
  if (command == "inspect") {
    status = dsv2::cli::Inspect(args, std::cout);
  } else if (command == "logits") {
    status = dsv2::cli::Logits(args, std::cout);
  } else if (command == "generate") {
    status = dsv2::cli::Generate(args, std::cout);
  } else if (command == "health") {
    status = dsv2::cli::Health(args, std::cout);
  } else if (command == "tokenize") {
    status = dsv2::cli::Tokenize(args, std::cout);
  } else if (command == "detokenize") {
    status = dsv2::cli::Detokenize(args, std::cout);
  } else if (command == "client") {
    status = dsv2::cli::Client(args, std::cout);
  } else if (command == "make-model") {
    status = dsv2::cli::MakeModel(args, std::cout);
  } else if (command == "quantize") {
    status = dsv2::cli::Quantize(args, std::cout);
  } else {
    std::cerr << "dsv2: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "dsv2 " << command << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}
