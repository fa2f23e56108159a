#include "common/tensor/npy.h"

#include <stdlib.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/base/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

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

// A .npy file with an arbitrary header text (padded to 64 like numpy) and data.
std::string MakeNpy(const std::string& dict, const std::string& data, int major = 1) {
  const size_t length_field = major == 1 ? 2 : 4;
  std::string header = dict;
  while ((6 + 2 + length_field + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  for (size_t i = 0; i < length_field; ++i) out += static_cast<char>(header.size() >> (8 * i));
  return out + header + data;
}

std::string FloatBytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

class NpyTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_ = testutil::NewTestDir("npy_test");
};

TEST_F(NpyTest, RoundTrip) {
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 1e-20f, 7.0f};
  ASSERT_TRUE(WriteNpy(Path("a.npy"), {2, 3}, values.data()).ok());
  auto array = ReadNpy(Path("a.npy"));
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(array->data, values);
}

TEST_F(NpyTest, RoundTripScalarAndEmpty) {
  const float scalar = 4.0f;
  ASSERT_TRUE(WriteNpy(Path("s.npy"), {}, &scalar).ok());
  auto array = ReadNpy(Path("s.npy"));
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_TRUE(array->shape.empty());
  EXPECT_EQ(array->data, std::vector<float>{4.0f});

  ASSERT_TRUE(WriteNpy(Path("e.npy"), {0, 7}, nullptr).ok());
  array = ReadNpy(Path("e.npy"));
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->shape, (std::vector<int64_t>{0, 7}));
  EXPECT_TRUE(array->data.empty());
}

// Byte-exact with numpy >= 1.24's np.save(np.zeros((2, 3), np.float32)).
TEST_F(NpyTest, HeaderMatchesNumpy2D) {
  const std::vector<float> values(6, 1.0f);
  ASSERT_TRUE(WriteNpy(Path("a.npy"), {2, 3}, values.data()).ok());
  const std::string bytes = ReadBytes(Path("a.npy"));
  ASSERT_EQ(bytes.size(), 128u + 24u);
  EXPECT_EQ(bytes.substr(0, 10), std::string("\x93NUMPY\x01\x00\x76\x00", 10));  // 118.
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  EXPECT_EQ(bytes.substr(10, dict.size()), dict);
  EXPECT_EQ(bytes.substr(10 + dict.size(), 127 - 10 - dict.size()),
            std::string(127 - 10 - dict.size(), ' '));
  EXPECT_EQ(bytes[127], '\n');
  EXPECT_EQ(bytes.substr(128), FloatBytes(values));
}

TEST_F(NpyTest, HeaderMatchesNumpy1D) {
  const std::vector<float> values = {1, 2, 3, 4, 5};
  ASSERT_TRUE(WriteNpy(Path("a.npy"), {5}, values.data()).ok());
  const std::string bytes = ReadBytes(Path("a.npy"));
  ASSERT_EQ(bytes.size(), 128u + 20u);
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }";
  EXPECT_EQ(bytes.substr(10, dict.size()), dict);
  EXPECT_EQ(bytes[127], '\n');
  EXPECT_EQ(bytes.find_first_not_of(' ', 10 + dict.size()), 127u);
}

TEST_F(NpyTest, DataAlwaysStartsAt64ByteBoundary) {
  std::vector<float> values(1000, 0.5f);
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {1000}, {10, 100}, {2, 5, 10, 10}, {1, 1, 1, 1, 1, 1, 1, 1, 1000}}) {
    ASSERT_TRUE(WriteNpy(Path("a.npy"), shape, values.data()).ok());
    const std::string bytes = ReadBytes(Path("a.npy"));
    const size_t header_len = static_cast<uint8_t>(bytes[8]) | static_cast<uint8_t>(bytes[9]) << 8;
    EXPECT_EQ((10 + header_len) % 64, 0u);
    EXPECT_EQ(bytes[10 + header_len - 1], '\n');
    EXPECT_EQ(bytes.size(), 10 + header_len + 4000);
  }
}

TEST_F(NpyTest, ReadsVersions2And3AndOtherKeyOrders) {
  const std::string data = FloatBytes({1, 2});
  WriteBytes(Path("v2.npy"),
             MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data, 2));
  WriteBytes(Path("v3.npy"),
             MakeNpy("{\"shape\": (1, 2), \"descr\": \"<f4\", \"fortran_order\": False}", data, 3));
  for (const char* name : {"v2.npy", "v3.npy"}) {
    auto array = ReadNpy(Path(name));
    ASSERT_TRUE(array.ok()) << name << ": " << array.status();
    EXPECT_EQ(array->data, (std::vector<float>{1, 2}));
  }
}

TEST_F(NpyTest, MissingFileIsNotFound) {
  auto array = ReadNpy(Path("absent.npy"));
  EXPECT_EQ(array.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(array.status().message(), HasSubstr("absent.npy"));
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* problem;
};

TEST_F(NpyTest, RejectsMalformedFiles) {
  const std::string good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const std::string data = FloatBytes({1, 2});
  const std::string good = MakeNpy(good_dict, data);
  const std::vector<BadCase> cases = {
      {"magic", "\x93NUMPX" + good.substr(6), "bad magic"},
      {"short", good.substr(0, 5), "bad magic"},
      {"version", MakeNpy(good_dict, data, 4), "version 4.0"},
      {"header_cut", good.substr(0, 40), "truncated header"},
      {"data_cut", good.substr(0, good.size() - 1), "needs 8 data bytes but the file has 7"},
      {"data_extra", good + "x", "needs 8 data bytes but the file has 9"},
      {"fortran", MakeNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", data),
       "fortran_order True"},
      {"f8", MakeNpy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", data),
       "dtype '<f8'"},
      {"big_endian", MakeNpy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data),
       "dtype '>f4'"},
      {"not_tuple", MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", data),
       "missing ','"},
      {"negative", MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", data),
       "non-negative"},
      {"missing_key", MakeNpy("{'descr': '<f4', 'shape': (2,), }", data), "lacks"},
      {"extra_key",
       MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", data),
       "unexpected header key 'x'"},
      {"trailing", MakeNpy(good_dict + " junk", data), "after the header dict"},
      {"overflow",
       MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
               data),
       "too many elements"},
  };
  for (const BadCase& c : cases) {
    const std::string path = Path(std::string(c.name) + ".npy");
    WriteBytes(path, c.bytes);
    auto array = ReadNpy(path);
    EXPECT_EQ(array.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(array.status().message(), HasSubstr(path)) << c.name;
    EXPECT_THAT(array.status().message(), HasSubstr(c.problem)) << c.name;
  }
}

TEST_F(NpyTest, NeverCrashesOnCorruptHeaders) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteNpy(Path("a.npy"), {2, 3}, values.data()).ok());
  const std::string good = ReadBytes(Path("a.npy"));
  for (size_t len = 0; len < good.size(); ++len) {
    WriteBytes(Path("t.npy"), good.substr(0, len));
    EXPECT_FALSE(ReadNpy(Path("t.npy")).ok()) << len;
  }
  for (size_t i = 0; i < 128; ++i) {
    for (char c : {'\xff', '\0', '(', ')', ',', '\'', '9'}) {
      std::string bytes = good;
      bytes[i] = c;
      WriteBytes(Path("c.npy"), bytes);
      (void)ReadNpy(Path("c.npy"));  // Either result; must not crash.
    }
  }
}

}  // namespace
}  // namespace dsv2
