// `dsv2 client`: one generation from a running server over gRPC, streamed
// to standard output as it arrives.
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status_macros.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"
#include "tools/dsv2/connection.h"
#include "tools/dsv2/request_flags.h"

namespace dsv2::cli {

absl::Status Client(std::span<const std::string> argv, std::ostream& out) {
  std::vector<FlagSpec> flags = ConnectionFlags();
  flags.insert(flags.end(), {
      {"timeout", true, "call deadline in seconds (default 600)"},
      {"stats", false, "print the finish reason, usage and speed to standard error"},
  });
  for (FlagSpec& flag : RequestFlags()) flags.push_back(std::move(flag));
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(v1::GenerateRequest request, BuildRequest(args));
  ASSIGN_OR_RETURN(double timeout, args.GetDouble("timeout", 600));
  request.set_request_id(absl::StrFormat("dsv2-client-%d-%d", getpid(),
                                         std::chrono::system_clock::now().time_since_epoch().count()));

  ASSIGN_OR_RETURN(Connection connection, Connect(args));
  const std::string& addr = connection.address;
  auto stub = v1::Generation::NewStub(connection.channel);
  std::unique_ptr<grpc::ClientContext> context =
      connection.NewContext(std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
  const auto start = std::chrono::steady_clock::now();
  auto reader = stub->Generate(context.get(), request);
  OutputPrinter printer(request, out);
  v1::GenerateResponse response;
  v1::Complete complete;
  std::string error;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      const v1::Chunk& chunk = response.chunk();
      printer.Print({chunk.token_ids().data(), static_cast<size_t>(chunk.token_ids_size())},
                    chunk.text());
    } else if (response.has_complete()) {
      complete = response.complete();
      printer.Print({complete.token_ids().data(), static_cast<size_t>(complete.token_ids_size())},
                    complete.text());
    } else if (response.has_error()) {
      error = response.error().message();
    }
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat(addr, ": ", status.error_message()));
  }
  if (!error.empty()) return absl::InternalError(absl::StrCat(addr, ": ", error));
  printer.Finish();
  if (args.Has("stats")) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << absl::StrFormat("\n%s; prompt %d, completion %d, cached %d tokens; %.2f s\n",
                                 v1::FinishReason_Name(complete.finish_reason()),
                                 complete.usage().prompt_tokens(),
                                 complete.usage().completion_tokens(),
                                 complete.usage().cached_tokens(), seconds);
  }
  return absl::OkStatus();
}

}  // namespace dsv2::cli
