// Hostile model directories for tests, made from the golden tiny models: a
// copy whose config.json says something else, or whose weights hold a NaN.
// Header-only (nlohmann::json and the standard library), so unit tests and
// process tests alike can use it.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2::testutil {

// A fresh copy of model directory `from` (e.g. "tests/data/tiny-lite") under
// the test temp directory, named after `name` and this process.
inline std::string CopyModel(const std::string& from, const std::string& name) {
  const std::string dir = testing::TempDir() + "/" + name + "_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (const auto& entry : std::filesystem::directory_iterator(from)) {
    std::filesystem::copy_file(entry.path(), dir + "/" + entry.path().filename().string());
  }
  return dir;
}

inline nlohmann::json ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

// Sets config.json's `key` in `dir` to `value`.
inline void SetConfigField(const std::string& dir, const std::string& key,
                           const nlohmann::json& value) {
  nlohmann::json config = ReadJsonFile(dir + "/config.json");
  config[key] = value;
  std::ofstream(dir + "/config.json") << config.dump(2);
}

// Cuts `dir`'s tokenizer.json down to its first `size` ids (and the merges
// among them), so the model's vocab_size has rows the tokenizer lacks, as
// DeepSeek-V2's 102,400 rows against 100,015 tokens.
inline void TruncateTokenizer(const std::string& dir, int32_t size) {
  nlohmann::json tokenizer = ReadJsonFile(dir + "/tokenizer.json");
  nlohmann::json& vocab = tokenizer["model"]["vocab"];
  nlohmann::json kept = nlohmann::json::object();
  for (const auto& [token, id] : vocab.items()) {
    if (id.get<int32_t>() < size) kept[token] = id;
  }
  vocab = kept;
  nlohmann::json merges = nlohmann::json::array();
  for (const nlohmann::json& merge : tokenizer["model"]["merges"]) {
    const std::string a = merge[0], b = merge[1];
    if (kept.contains(a) && kept.contains(b) && kept.contains(a + b)) merges.push_back(merge);
  }
  tokenizer["model"]["merges"] = merges;
  nlohmann::json added = nlohmann::json::array();
  for (const nlohmann::json& token : tokenizer["added_tokens"]) {
    if (token["id"].get<int32_t>() < size) added.push_back(token);
  }
  tokenizer["added_tokens"] = added;
  std::ofstream(dir + "/tokenizer.json") << tokenizer.dump();
}

// Overwrites element `index` of the BF16 tensor `tensor` in
// dir/model.safetensors with `bits` (default a quiet NaN; 0x7F80 is +inf).
inline void PoisonBf16(const std::string& dir, const std::string& tensor, int64_t index,
                       uint16_t bits = 0x7FC0) {
  const std::string path = dir + "/model.safetensors";
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(file) << path;
  uint64_t header_len = 0;
  file.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  file.read(header.data(), static_cast<std::streamsize>(header_len));
  const nlohmann::json entry = nlohmann::json::parse(header).at(tensor);
  ASSERT_EQ(entry.at("dtype"), "BF16") << tensor;
  const int64_t begin = entry.at("data_offsets")[0].get<int64_t>();
  file.seekp(static_cast<std::streamoff>(8 + header_len + begin + 2 * index));
  file.write(reinterpret_cast<const char*>(&bits), 2);
  ASSERT_TRUE(file) << path;
}

}  // namespace dsv2::testutil
