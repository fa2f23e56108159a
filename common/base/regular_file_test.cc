// Each attack is a path that is not a regular file; reading it must return
// an error naming the path and what it is, at once. A regression that
// blocks on the FIFO is caught by the ctest TIMEOUT of base_test.
#include "common/base/regular_file.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

std::string FreshDir(const std::string& name) {
  const std::string dir =
      testing::TempDir() + "/regular_file_test_" + std::to_string(getpid()) + "_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(RegularFileTest, ReadsARegularFileAndALinkToOne) {
  const std::string dir = FreshDir("regular");
  std::ofstream(dir + "/config.json") << "{\"a\": 1}";
  std::filesystem::create_symlink(dir + "/config.json", dir + "/link.json");
  for (const char* name : {"/config.json", "/link.json"}) {
    auto text = ReadRegularFile(dir + name, 1 << 20);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, "{\"a\": 1}");
  }
}

TEST(RegularFileTest, FifoIsRefusedWithoutBlocking) {
  const std::string dir = FreshDir("fifo");
  const std::string path = dir + "/model.safetensors";
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
  // No writer ever opens the FIFO: a plain open() for reading would block
  // here forever.
  auto text = ReadRegularFile(path, 1 << 20);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text.status().message(), path + " is a FIFO (named pipe), not a regular file");
  auto file = RegularFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("is a FIFO (named pipe)"));
}

TEST(RegularFileTest, DirectoryDeviceAndSocketAreRefusedNamingWhatTheyAre) {
  const std::string dir = FreshDir("others");
  std::filesystem::create_directories(dir + "/tokenizer.json");
  std::filesystem::create_symlink("/dev/null", dir + "/config.json");
  const std::string socket_path = dir + "/s";
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(socket_path.size(), sizeof(address.sun_path));
  std::strcpy(address.sun_path, socket_path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
      << std::strerror(errno);

  struct Case {
    std::string path;
    std::string what;
  };
  for (const Case& c :
       {Case{dir + "/tokenizer.json", "a directory"},
        Case{dir + "/config.json", "a character device"}, Case{socket_path, "a socket"}}) {
    auto text = ReadRegularFile(c.path, 1 << 20);
    ASSERT_FALSE(text.ok()) << c.path;
    EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(text.status().message(), c.path + " is " + c.what + ", not a regular file");
  }
  close(fd);
}

TEST(RegularFileTest, MissingFileIsNotFound) {
  auto text = ReadRegularFile(FreshDir("missing") + "/none.json", 1 << 20);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(text.status().message(), HasSubstr("none.json"));
}

TEST(RegularFileTest, SizeLimitBoundsWhatIsRead) {
  const std::string path = FreshDir("size") + "/big.json";
  std::ofstream(path) << std::string(1000, 'x');
  auto exact = ReadRegularFile(path, 1000);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(exact->size(), 1000u);
  auto over = ReadRegularFile(path, 999);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(over.status().message(),
            path + " is 1000 bytes, more than the limit of 999 bytes for this file");
}

TEST(RegularFileTest, AFileThatGrowsPastTheLimitAfterOpeningIsRefused) {
  const std::string path = FreshDir("grow") + "/grows.json";
  std::ofstream(path) << std::string(10, 'x');
  auto file = RegularFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 10);
  std::ofstream(path, std::ios::app) << std::string(100, 'y');
  auto text = file->ReadAll(50);
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("more than the limit of 50 bytes"));
  auto all = file->ReadAll(200);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 110u);
}

}  // namespace
}  // namespace dsv2
