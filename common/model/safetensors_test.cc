#include "common/model/safetensors.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/huge_pages.h"
#include "common/base/test_util.h"
#include "common/model/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A file with the given header text (length prefixed, unpadded) and data.
std::string Raw(const std::string& header, const std::string& data = "", uint64_t length = 0) {
  if (length == 0) length = header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(length >> (8 * i));
  return out + header + data;
}

// Deterministic contents for tensor `index`.
char PatternByte(size_t index, int64_t i) { return static_cast<char>(index * 31 + i * 7 + 1); }
void FillPattern(size_t index, char* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = PatternByte(index, i);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` to a fresh file and opens it.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const std::string& bytes) {
    const std::string path = Path("f" + std::to_string(counter_++) + ".safetensors");
    WriteBytes(path, bytes);
    return SafetensorsFile::Open(path);
  }

  // Expects Open of `bytes` to fail with InvalidArgument mentioning the file
  // and each of `parts`.
  void ExpectInvalid(const std::string& bytes, const std::vector<std::string>& parts) {
    const std::string path = Path("f" + std::to_string(counter_) + ".safetensors");
    auto file = OpenBytes(bytes);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    const std::string message(file.status().message());
    EXPECT_THAT(message, HasSubstr(path));
    for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
  }

  std::string dir_ = testutil::NewTestDir("safetensors_test");
  int counter_ = 0;
};

TEST_F(SafetensorsTest, WriterReaderRoundTrip) {
  const std::vector<TensorToWrite> tensors = {
      {"w.f32", "F32", {2, 3}}, {"w.bf16", "BF16", {4, 1, 3}}, {"w.f16", "F16", {5}},
      {"empty", "F32", {0, 7}}, {"ids", "I64", {3}},           {"scalar", "BF16", {}},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "x y"}};
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, FillPattern, metadata).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata(), metadata);
  EXPECT_EQ((*file)->file_size(), static_cast<int64_t>(ReadBytes(path).size()));
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  for (size_t i = 1; i < (*file)->tensors().size(); ++i) {
    EXPECT_LT((*file)->tensors()[i - 1].name, (*file)->tensors()[i].name);
  }
  for (size_t index = 0; index < tensors.size(); ++index) {
    const TensorInfo* info = (*file)->Find(tensors[index].name);
    ASSERT_NE(info, nullptr) << tensors[index].name;
    EXPECT_EQ(info->name, tensors[index].name);
    EXPECT_EQ(info->dtype_name, tensors[index].dtype_name);
    EXPECT_EQ(info->shape, tensors[index].shape);
    EXPECT_EQ(info->file, path);
    EXPECT_EQ(info->num_bytes, info->numel() * *SafetensorsElementSize(info->dtype_name));
    const char* bytes = static_cast<const char*>(info->data);
    for (int64_t i = 0; i < info->num_bytes; ++i) {
      ASSERT_EQ(bytes[i], PatternByte(index, i)) << info->name << " byte " << i;
    }
  }
  EXPECT_EQ((*file)->Find("w.f32")->dtype, DType::kF32);
  EXPECT_EQ((*file)->Find("w.bf16")->dtype, DType::kBF16);
  EXPECT_EQ((*file)->Find("w.f16")->dtype, DType::kF16);
  EXPECT_EQ((*file)->Find("ids")->dtype, std::nullopt);
  EXPECT_EQ((*file)->Find("empty")->numel(), 0);
  EXPECT_EQ((*file)->Find("scalar")->numel(), 1);
  EXPECT_EQ((*file)->Find("absent"), nullptr);
  EXPECT_EQ((*file)->Find("w"), nullptr);
}

// The bytes of safetensors' save_file for {"a": float32 [2], "b": bf16 [1]}
// with no metadata, but for the header's padding: to 64 bytes, not 8.
TEST_F(SafetensorsTest, WriterLayoutMatchesReferenceLibraryButAlignsData) {
  const std::string path = Path("a.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", "F32", {2}}, {"b", "BF16", {1}}},
                               [](size_t, char* out, int64_t n) { std::memset(out, 0, n); })
                  .ok());
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}})";
  const std::string padded = header + std::string((64 - (8 + header.size()) % 64) % 64, ' ');
  EXPECT_EQ(ReadBytes(path), Raw(padded, std::string(10, '\0')));
}

// Whatever the header's length, the data starts on a cache line, and so does
// each tensor after tensors of whole cache lines.
TEST_F(SafetensorsTest, WriterAlignsTheData) {
  for (int name_length = 1; name_length <= 70; ++name_length) {
    const std::string path = Path("aligned.safetensors");
    const std::string name(name_length, 'w');
    ASSERT_TRUE(WriteSafetensors(path, {{name, "BF16", {2, 32}}, {"b", "F32", {3}}},
                                 [](size_t, char* out, int64_t n) { std::memset(out, 1, n); })
                    .ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    for (const char* tensor : {name.c_str(), "b"}) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>((*file)->Find(tensor)->data) % kDataAlignment, 0u)
          << tensor << " after a header with a " << name_length << "-byte name";
    }
  }
}

// The mapping asks for huge pages (VmFlags "hg" in /proc/self/smaps).
TEST_F(SafetensorsTest, MappingAsksForHugePages) {
  struct stat thp;
  if (stat("/sys/kernel/mm/transparent_hugepage", &thp) != 0) {
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  }
  const std::string path = Path("huge.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", "BF16", {1024, 2048}}}, FillPattern).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto data = reinterpret_cast<uintptr_t>((*file)->Find("w")->data);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2) inside = begin <= data && data < end;
    if (inside && line.starts_with("VmFlags:")) {
      EXPECT_THAT(line + " ", HasSubstr(" hg ")) << line;
      // Whether the pages are huge depends on the file system and kernel.
      const int64_t huge = FilePmdMappedBytes(
          ReadSelfSmaps(), reinterpret_cast<uintptr_t>((*file)->mapping()), (*file)->file_size());
      EXPECT_GE(huge, 0);
      EXPECT_LE(huge, (*file)->file_size());
      return;
    }
  }
  FAIL() << "no mapping in /proc/self/smaps holds the tensor";
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  auto fill = [](size_t, char*, int64_t) {};
  const std::string path = Path("bad.safetensors");
  absl::Status status = WriteSafetensors(path, {{"a", "F12", {1}}}, fill);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("'F12'"), HasSubstr("'a'")));

  status = WriteSafetensors(path, {{"a", "F32", {1}}, {"a", "F16", {1}}}, fill);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("duplicate tensor name 'a'"));

  status = WriteSafetensors(path, {{"a", "F32", {2, -1}}}, fill);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("negative dimension -1"));

  status = WriteSafetensors(path, {{"__metadata__", "F32", {1}}}, fill);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);

  status = WriteSafetensors(path, {{"bad\xff", "F32", {1}}}, fill);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("UTF-8"));

  status = WriteSafetensors(Path("no/such/dir/x.safetensors"), {{"a", "F32", {1}}}, fill);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("No such file or directory"));
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open(Path("absent.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("absent.safetensors"));
}

TEST_F(SafetensorsTest, EmptyHeaderAndZeroSizeTensorsAreAllowed) {
  auto file = OpenBytes(Raw("{}"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  // A zero-size tensor may sit anywhere, even inside another tensor's bytes.
  file = OpenBytes(Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                       std::string(8, 'x')));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("z")->num_bytes, 0);
}

TEST_F(SafetensorsTest, RejectsTruncatedData) {
  const std::string path = Path("full.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", "F32", {4}}}, FillPattern).ok());
  const std::string bytes = ReadBytes(path);
  const std::string cut = bytes.substr(0, bytes.size() - 3);
  ExpectInvalid(cut, {"file truncated", "'w'", absl::StrCat("at least ", bytes.size(), " bytes"),
                      absl::StrCat("it is ", cut.size(), " bytes")});
}

TEST_F(SafetensorsTest, RejectsFileShorterThanLengthField) {
  ExpectInvalid(std::string("\x05\0\0\0", 4), {"4 bytes", "shorter than the 8-byte header length"});
  ExpectInvalid("", {"0 bytes"});
}

TEST_F(SafetensorsTest, RejectsBadHeaderLength) {
  ExpectInvalid(Raw("{}", "", 1000), {"header length 1000 is larger than the 2 bytes"});
  ExpectInvalid(std::string(8, '\0') + "{}", {"header length is 0"});
  ExpectInvalid(Raw("{}", "", 200'000'000), {"exceeds the limit"});
  ExpectInvalid(Raw("{}", "", ~uint64_t{0}), {"exceeds the limit"});
}

TEST_F(SafetensorsTest, RejectsBadJson) {
  ExpectInvalid(Raw(R"({"a": {"dtype": "F32",)"), {"not valid UTF-8 JSON"});
  ExpectInvalid(Raw("{\"a\xff\": {}}"), {"not valid UTF-8 JSON"});  // Ill-formed UTF-8.
  ExpectInvalid(Raw("{} trailing"), {"not valid UTF-8 JSON"});
}

TEST_F(SafetensorsTest, RejectsHeaderThatIsNotAnObject) {
  ExpectInvalid(Raw("[1, 2]"), {"does not start with '{'"});
  ExpectInvalid(Raw(" {}"), {"does not start with '{'"});
  ExpectInvalid(Raw(R"({"w": [1, 2]})"), {"header entry for tensor 'w' is not an object"});
}

TEST_F(SafetensorsTest, RejectsMissingFieldsAndWrongTypes) {
  ExpectInvalid(Raw(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "0000"), {"'w'", "\"dtype\""});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "0000"), {"'w'", "\"shape\""});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[1]}})", "0000"), {"'w'", "\"data_offsets\""});
  ExpectInvalid(Raw(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", "0000"),
                {"'w'", "\"dtype\" is not a string"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", "0000"),
                {"'w'", "\"shape\" is not an array"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", "0000"),
                {"'w'", "shape entry 1.0 is not an int64"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "0000"),
                {"'w'", "not an array of two integers"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})", "0000"),
                {"'w'", "not two non-negative int64"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "0000"),
                {"'w'", "not two non-negative int64"});
}

TEST_F(SafetensorsTest, RejectsUnknownDType) {
  ExpectInvalid(Raw(R"({"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", "0000"),
                {"tensor 'w' has unknown dtype 'F12'"});
}

TEST_F(SafetensorsTest, RejectsByteSizeMismatch) {
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "00000000"),
                {"tensor 'w' of dtype F32 and shape [3] needs 12 bytes", "span 8"});
}

TEST_F(SafetensorsTest, RejectsNegativeShape) {
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,0]}})"),
                {"tensor 'w' has negative dimension -2"});
}

TEST_F(SafetensorsTest, RejectsElementCountOverflow) {
  ExpectInvalid(
      Raw(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}})"),
      {"'w'", "overflows int64"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]}})"),
                {"'w'", "not an int64"});
}

TEST_F(SafetensorsTest, RejectsOffsetsOutOfRange) {
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", "00000000"),
                {"file truncated", "'w'", "ends at data offset 12"});
}

TEST_F(SafetensorsTest, RejectsOverlappingOffsets) {
  ExpectInvalid(Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                    std::string(12, '0')),
                {"'a' [0, 8)", "'b' [4, 12)", "overlap"});
  // A tensor inside a large one that an unrelated tensor follows.
  ExpectInvalid(Raw(R"({"big":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},)"
                    R"("mid":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                    R"("end":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}})",
                    std::string(12, '0')),
                {"'big'", "'mid'", "overlap"});
}

TEST_F(SafetensorsTest, RejectsBeginAfterEnd) {
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "00000000"),
                {"'w'", "begin 8 is after end 0"});
}

TEST_F(SafetensorsTest, RejectsBadMetadata) {
  ExpectInvalid(Raw(R"({"__metadata__":{"format":1}})"),
                {"\"__metadata__\" value for key 'format' is not a string"});
  ExpectInvalid(Raw(R"({"__metadata__":["pt"]})"), {"\"__metadata__\" is not an object"});
}

// Every corruption of the header region and every truncation must end in a
// status, never a crash or an out-of-bounds access (run under ASan/valgrind).
TEST_F(SafetensorsTest, NeverCrashesOnCorruptedOrTruncatedFiles) {
  const std::string path = Path("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", "F32", {2, 2}}, {"b", "BF16", {3}}, {"c", "I8", {0}}},
                               FillPattern, {{"format", "pt"}})
                  .ok());
  const std::string good = ReadBytes(path);
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  auto touch_all = [](const SafetensorsFile& file) {
    int64_t sum = 0;
    for (const TensorInfo& t : file.tensors()) {
      EXPECT_EQ(t.num_bytes, t.numel() * *SafetensorsElementSize(t.dtype_name));
      for (int64_t i = 0; i < t.num_bytes; ++i) sum += static_cast<const char*>(t.data)[i];
    }
    return sum;
  };

  for (size_t len = 0; len < good.size(); ++len) {
    auto file = OpenBytes(good.substr(0, len));
    EXPECT_FALSE(file.ok()) << "truncated to " << len;
  }
  int opened = 0;
  for (size_t pos = 0; pos < 8 + header_len; ++pos) {
    for (char value : {'\xff', '\x80', '\0', '0', '9', '-', '"', '{', '}', '[', ']', ',', ':'}) {
      if (good[pos] == value) continue;
      std::string bytes = good;
      bytes[pos] = value;
      counter_ = 0;  // Reuse one file name; the fuzz would otherwise make thousands.
      auto file = OpenBytes(bytes);
      if (file.ok()) {
        ++opened;
        touch_all(**file);
      } else {
        EXPECT_FALSE(file.status().message().empty());
      }
    }
  }
  // Changes inside names and metadata strings stay valid; the rest must not.
  EXPECT_GT(opened, 0);
}

// A FIFO in place of a checkpoint file: open() for reading used to wait for
// a writer forever. checkpoint_test's ctest TIMEOUT catches a regression.
TEST_F(SafetensorsTest, FifoIsRefusedWithoutBlocking) {
  const std::string fifo = Path("model.safetensors");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto file = SafetensorsFile::Open(fifo);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.status().message(), fifo + " is a FIFO (named pipe), not a regular file");
}

// Wrong JSON types in the header name the tensor, the field and the type.
TEST_F(SafetensorsTest, WrongTypesNameTheTypeFound) {
  ExpectInvalid(Raw(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", "0000"),
                {"tensor 'w': \"dtype\" is not a string (got number)"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":{"a":1},"data_offsets":[0,4]}})", "0000"),
                {"tensor 'w': \"shape\" is not an array (got object)"});
  ExpectInvalid(Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})", "0000"),
                {"tensor 'w': \"data_offsets\" [0, \"4\"] are not two non-negative int64 values"});
  ExpectInvalid(Raw(R"({"w": true})"),
                {"header entry for tensor 'w' is not an object (got boolean)"});
  ExpectInvalid(Raw(R"({"__metadata__":{"format":null}})"),
                {"\"__metadata__\" value for key 'format' is not a string (got null)"});
}

// A shape entry nested 100000 arrays deep: the message used to print it
// with a recursive dump, one stack frame per level.
TEST_F(SafetensorsTest, DeeplyNestedShapeEntryIsDescribedNotDumped) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ExpectInvalid(
      Raw(R"({"w":{"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,4]}})", "0000"),
      {"tensor 'w': shape entry an array of 1 elements is not an int64"});
  ExpectInvalid(
      Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[)" + deep + R"(,4]}})", "0000"),
      {"\"data_offsets\" [an array of 1 elements, 4]"});
}

}  // namespace
}  // namespace dsv2
