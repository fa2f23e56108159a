#include "common/base/json_reading.h"

#include <string>

#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

TEST(JsonReadingTest, TypeNames) {
  EXPECT_STREQ(JsonTypeName(Json(5)), "number");
  EXPECT_STREQ(JsonTypeName(Json(5u)), "number");
  EXPECT_STREQ(JsonTypeName(Json(0.5)), "number");
  EXPECT_STREQ(JsonTypeName(Json("x")), "string");
  EXPECT_STREQ(JsonTypeName(Json(true)), "boolean");
  EXPECT_STREQ(JsonTypeName(Json(nullptr)), "null");
  EXPECT_STREQ(JsonTypeName(Json::array()), "array");
  EXPECT_STREQ(JsonTypeName(Json::object()), "object");
}

TEST(JsonReadingTest, ValuesForMessagesAreShortAndNeverRecurse) {
  EXPECT_EQ(JsonValueForMessage(Json(1000000)), "1000000");
  EXPECT_EQ(JsonValueForMessage(Json("big")), "\"big\"");
  EXPECT_EQ(JsonValueForMessage(Json(nullptr)), "null");
  EXPECT_EQ(JsonValueForMessage(Json::parse("[1, [2, 3]]")), "an array of 2 elements");
  EXPECT_EQ(JsonValueForMessage(Json::parse(R"({"a": {"b": 1}})")), "an object of 1 fields");
  // A long string is cut at a character boundary (the 3-byte characters
  // straddle byte 64), and stays valid UTF-8.
  std::string long_text = "ab";
  for (int i = 0; i < 40; ++i) long_text += "\xE4\xB8\xAD";
  const std::string shown = JsonValueForMessage(Json(long_text));
  EXPECT_EQ(shown, "\"ab" + long_text.substr(2, 60) + "\"...");
  // Nesting far deeper than the stack could take if the message dumped it.
  std::string deep(200000, '[');
  deep += std::string(200000, ']');
  const Json nested = Json::parse(deep, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(nested.is_discarded());
  EXPECT_EQ(JsonValueForMessage(nested), "an array of 1 elements");
}

TEST(JsonReadingTest, GuardTurnsExceptionsIntoErrorsNamingTheSource) {
  const Json value = Json::parse(R"({"id": 5})");
  const int64_t before = UncheckedJsonErrors();
  absl::StatusOr<std::string> read = GuardJsonReader(
      "tokenizer.json",
      [&]() -> absl::StatusOr<std::string> { return value["id"].get<std::string>(); });
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(),
              HasSubstr("tokenizer.json: unexpected JSON structure ([json.exception.type_error"));
  absl::Status oom =
      GuardJsonReader("config.json", []() -> absl::Status { throw std::bad_alloc(); });
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(oom.message(), "config.json: out of memory while reading it");
  EXPECT_EQ(UncheckedJsonErrors(), before + 2);  // Each is a reader's bug, counted.
  absl::Status fine = GuardJsonReader("config.json", [] { return absl::OkStatus(); });
  EXPECT_TRUE(fine.ok());
  EXPECT_EQ(UncheckedJsonErrors(), before + 2);
}

}  // namespace
}  // namespace dsv2
