// `dsv2 health`: the grpc.health.v1 status of a server, for scripts
// (deploy/local/cluster.sh) and people. Exit status 0 when SERVING.
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"
#include "tools/dsv2/connection.h"

namespace dsv2::cli {

absl::Status Health(std::span<const std::string> argv, std::ostream& out) {
  std::vector<FlagSpec> flags = ConnectionFlags();
  flags.insert(flags.end(), {
      {"service", true, "service name (default \"\": the whole server)"},
      {"wait", true, "seconds to wait for SERVING before giving up (default 0: ask once)"},
  });
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(double wait, args.GetDouble("wait", 0));
  ASSIGN_OR_RETURN(Connection connection, Connect(args));
  const std::string& addr = connection.address;
  auto stub = grpc::health::v1::Health::NewStub(connection.channel);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(args.Get("service").value_or(""));
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(wait * 1000));
  std::string state;
  while (true) {
    std::unique_ptr<grpc::ClientContext> context = connection.NewContext(std::chrono::seconds(2));
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = stub->Check(context.get(), request, &response);
    state = status.ok() ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())
                        : absl::StrCat("unreachable (", status.error_message(), ")");
    if ((status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) ||
        std::chrono::steady_clock::now() >= until) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  out << state << "\n";
  if (state != "SERVING") return absl::UnavailableError(absl::StrCat(addr, " is ", state));
  return absl::OkStatus();
}

}  // namespace dsv2::cli
