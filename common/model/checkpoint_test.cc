#include "common/model/checkpoint.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/test_util.h"
#include "common/model/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CheckpointTest : public ::testing::Test {
 protected:
  // Writes a shard holding F32 tensors of shape [2] named `names`.
  void WriteShard(const std::string& file, const std::vector<std::string>& names) {
    std::vector<TensorToWrite> tensors;
    for (const std::string& name : names) tensors.push_back({name, "F32", {2}});
    ASSERT_TRUE(
        WriteSafetensors(dir_ + "/" + file, tensors, [](size_t index, char* out, int64_t n) {
          for (int64_t i = 0; i < n; ++i) out[i] = static_cast<char>(index);
        }).ok());
  }
  void WriteIndex(const std::string& text) {
    std::ofstream(dir_ + "/model.safetensors.index.json") << text;
  }
  // Expects Open to fail with `code` and a message holding each of `parts`.
  void ExpectError(absl::StatusCode code, const std::vector<std::string>& parts) {
    auto checkpoint = Checkpoint::Open(dir_);
    ASSERT_FALSE(checkpoint.ok());
    EXPECT_EQ(checkpoint.status().code(), code) << checkpoint.status();
    const std::string message(checkpoint.status().message());
    for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
  }

  std::string dir_ = testutil::NewTestDir("checkpoint_test");
};

constexpr char kTwoShardIndex[] = R"({
  "metadata": {"total_size": 24},
  "weight_map": {
    "layers.0.w": "model-00001-of-00002.safetensors",
    "layers.0.v": "model-00001-of-00002.safetensors",
    "layers.1.w": "model-00002-of-00002.safetensors"
  }
})";

TEST_F(CheckpointTest, SingleFile) {
  WriteShard("model.safetensors", {"b", "a"});
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->dir(), dir_);
  EXPECT_EQ(checkpoint->num_files(), 1u);
  EXPECT_THAT(checkpoint->TensorNames(), ElementsAre("a", "b"));
  EXPECT_EQ(checkpoint->total_bytes(), 16);
  const TensorInfo* b = checkpoint->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(static_cast<const char*>(b->data)[0], 0);  // Written first.
  EXPECT_EQ(b->file, dir_ + "/model.safetensors");
  EXPECT_EQ(checkpoint->Find("c"), nullptr);
}

TEST_F(CheckpointTest, ShardedIndexIsPreferredAndSurvivesMoves) {
  WriteShard("model-00001-of-00002.safetensors", {"layers.0.w", "layers.0.v"});
  WriteShard("model-00002-of-00002.safetensors", {"layers.1.w"});
  WriteShard("model.safetensors", {"ignored"});
  WriteIndex(kTwoShardIndex);
  auto opened = Checkpoint::Open(dir_);
  ASSERT_TRUE(opened.ok()) << opened.status();
  Checkpoint checkpoint = std::move(*opened);
  EXPECT_EQ(checkpoint.num_files(), 2u);
  EXPECT_THAT(checkpoint.TensorNames(), ElementsAre("layers.0.v", "layers.0.w", "layers.1.w"));
  EXPECT_EQ(checkpoint.total_bytes(), 24);
  EXPECT_EQ(checkpoint.Find("ignored"), nullptr);
  const TensorInfo* w1 = checkpoint.Find("layers.1.w");
  ASSERT_NE(w1, nullptr);
  EXPECT_EQ(w1->file, dir_ + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(w1->shape, std::vector<int64_t>{2});
  const TensorInfo* v0 = checkpoint.Find("layers.0.v");
  ASSERT_NE(v0, nullptr);
  EXPECT_EQ(static_cast<const char*>(v0->data)[7], 1);  // Second tensor of shard 1.
}

// dsv2-int8 shards: an I8 tensor and its F32 scales, split across shards as
// `dsv2 quantize` may split them; I8 is one byte per element.
TEST_F(CheckpointTest, Int8TensorsAndScalesAcrossShards) {
  std::vector<TensorToWrite> weights = {{"w", "I8", {3, 40}}};
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00001-of-00002.safetensors", weights,
                               [](size_t, char* out, int64_t n) { std::fill(out, out + n, -127); })
                  .ok());
  std::vector<TensorToWrite> scales = {{"w_scale", "F32", {3, 2}}};
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00002-of-00002.safetensors", scales,
                               [](size_t, char* out, int64_t n) { std::fill(out, out + n, 0); })
                  .ok());
  WriteIndex(R"({"weight_map": {"w": "model-00001-of-00002.safetensors",
                                "w_scale": "model-00002-of-00002.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const TensorInfo* w = checkpoint->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kI8);
  EXPECT_EQ(w->num_bytes, 120);
  EXPECT_EQ(static_cast<const int8_t*>(w->data)[119], -127);
  EXPECT_EQ(checkpoint->Find("w_scale")->dtype, DType::kF32);
  EXPECT_EQ(checkpoint->total_bytes(), 120 + 24);
}

TEST_F(CheckpointTest, MissingShardIsNotFound) {
  WriteShard("model-00001-of-00002.safetensors", {"layers.0.w", "layers.0.v"});
  WriteIndex(kTwoShardIndex);
  ExpectError(absl::StatusCode::kNotFound, {"model-00002-of-00002.safetensors"});
}

TEST_F(CheckpointTest, RejectsShardNamesOutsideTheDirectory) {
  for (const char* shard : {"../x", "sub/x.safetensors", "", "..", "/etc/passwd"}) {
    WriteIndex(absl::StrCat(R"({"weight_map": {"w": ")", shard, R"("}})"));
    ExpectError(absl::StatusCode::kInvalidArgument,
                {absl::StrCat("shard name '", shard, "'"), "'w'", "not a plain file name"});
  }
}

TEST_F(CheckpointTest, RejectsTensorMappedToWrongShard) {
  WriteShard("s1.safetensors", {"a", "b"});
  WriteShard("s2.safetensors", {"c"});
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors",
                                "c": "s2.safetensors"}})");
  ExpectError(absl::StatusCode::kInvalidArgument, {"tensor 'b' is stored in shard 's1.safetensors'",
                                                   "maps it to shard 's2.safetensors'"});
}

TEST_F(CheckpointTest, RejectsTensorInTwoShards) {
  WriteShard("s1.safetensors", {"a", "b"});
  WriteShard("s2.safetensors", {"b", "c"});
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors",
                                "c": "s2.safetensors"}})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {"tensor 'b' appears in both shards 's1.safetensors' and 's2.safetensors'"});
}

TEST_F(CheckpointTest, RejectsTensorMissingFromItsShard) {
  WriteShard("s1.safetensors", {"a"});
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "ghost": "s1.safetensors"}})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {"tensor 'ghost' is mapped to shard 's1.safetensors'", "does not contain it"});
}

TEST_F(CheckpointTest, RejectsUnmappedTensor) {
  WriteShard("s1.safetensors", {"a", "extra"});
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors"}})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {"tensor 'extra' in shard 's1.safetensors' is not in the weight_map"});
}

TEST_F(CheckpointTest, RejectsBadIndex) {
  const std::string index = dir_ + "/model.safetensors.index.json";
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors",)");
  ExpectError(absl::StatusCode::kInvalidArgument, {index, "not valid JSON"});
  WriteIndex(R"([1, 2])");
  ExpectError(absl::StatusCode::kInvalidArgument, {index, "not a JSON object"});
  WriteIndex(R"({"metadata": {}})");
  ExpectError(absl::StatusCode::kInvalidArgument, {index, "no \"weight_map\" object"});
  WriteIndex(R"({"weight_map": ["a"]})");
  ExpectError(absl::StatusCode::kInvalidArgument, {index, "no \"weight_map\" object"});
  WriteIndex(R"({"weight_map": {"a": 3}})");
  ExpectError(absl::StatusCode::kInvalidArgument, {index, "entry for 'a' is not a string"});
  WriteIndex(R"({"weight_map": {}})");
  ExpectError(absl::StatusCode::kInvalidArgument, {index, "lists no tensors"});
}

TEST_F(CheckpointTest, CorruptShardErrorPassesThrough) {
  std::ofstream(dir_ + "/s1.safetensors") << "garbage";
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors"}})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {dir_ + "/s1.safetensors", "shorter than the 8-byte"});
}

TEST_F(CheckpointTest, NoWeightsAtAll) {
  ExpectError(absl::StatusCode::kNotFound,
              {dir_, "model.safetensors.index.json", "model.safetensors"});
}

TEST_F(CheckpointTest, MissingDirectory) {
  auto checkpoint = Checkpoint::Open(dir_ + "/absent");
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(checkpoint.status().message(), HasSubstr(dir_ + "/absent"));
}

// Model files that are not regular files. Each was a hang (a FIFO: open()
// for reading waits for a writer, and none comes) or an unhelpful read
// error; each must now fail at once naming the file and what it is.
// checkpoint_test's ctest TIMEOUT turns a regression into a failure.
TEST_F(CheckpointTest, FifoAsTheSingleFileIsRefusedAtOnce) {
  const std::string fifo = dir_ + "/model.safetensors";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  ExpectError(absl::StatusCode::kInvalidArgument,
              {fifo + " is a FIFO (named pipe), not a regular file"});
}

TEST_F(CheckpointTest, FifoAsTheIndexIsRefusedAtOnce) {
  WriteShard("s1.safetensors", {"a"});
  const std::string fifo = dir_ + "/model.safetensors.index.json";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  ExpectError(absl::StatusCode::kInvalidArgument,
              {fifo + " is a FIFO (named pipe), not a regular file"});
}

TEST_F(CheckpointTest, FifoDirectoryOrDeviceAsAShardIsRefused) {
  ASSERT_EQ(mkfifo((dir_ + "/fifo.safetensors").c_str(), 0600), 0);
  std::filesystem::create_directories(dir_ + "/dir.safetensors");
  std::filesystem::create_symlink("/dev/zero", dir_ + "/dev.safetensors");
  for (const auto& [shard, what] : std::vector<std::pair<std::string, std::string>>{
           {"fifo.safetensors", "a FIFO (named pipe)"},
           {"dir.safetensors", "a directory"},
           {"dev.safetensors", "a character device"}}) {
    WriteIndex(absl::StrCat(R"({"weight_map": {"a": ")", shard, R"("}})"));
    ExpectError(absl::StatusCode::kInvalidArgument,
                {dir_ + "/" + shard + " is " + what + ", not a regular file"});
  }
}

// Wrong JSON types anywhere in the index are named, with the type found.
TEST_F(CheckpointTest, IndexWithWrongTypesNamesTheField) {
  const std::string index = dir_ + "/model.safetensors.index.json";
  WriteIndex(R"({"weight_map": "s1.safetensors"})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {index + ": has no \"weight_map\" object (got string)"});
  WriteIndex(R"({"weight_map": {"a": ["s1.safetensors"]}})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {index + ": weight_map entry for 'a' is not a string (got array)"});
  WriteIndex(R"({"weight_map": {"a": null}})");
  ExpectError(absl::StatusCode::kInvalidArgument,
              {index + ": weight_map entry for 'a' is not a string (got null)"});
}

}  // namespace
}  // namespace dsv2
