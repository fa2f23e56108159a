#include "common/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/tokenizer/unicode.h"

namespace dsv2::tokenizer_internal {
namespace {

void AppendRanges(const CodepointRange* ranges, size_t count, std::string* out) {
  for (size_t i = 0; i < count; ++i) {
    if (ranges[i].first == ranges[i].last) {
      absl::StrAppendFormat(out, "\\x{%X}", static_cast<uint32_t>(ranges[i].first));
    } else {
      absl::StrAppendFormat(out, "\\x{%X}-\\x{%X}", static_cast<uint32_t>(ranges[i].first),
                            static_cast<uint32_t>(ranges[i].last));
    }
  }
}

std::string WhiteSpaceClassBody() {
  std::string body;
  auto [ranges, count] = WhiteSpaceRanges();
  AppendRanges(ranges, count, &body);
  return body;
}

// The body (without brackets) of a character class for the general category
// `name`: PCRE2's class plus the code points Hugging Face's newer tables add,
// or the whole category where PCRE2's would also match code points that left it.
absl::StatusOr<std::string> CategoryClassBody(std::string_view name, std::string_view pattern) {
  const CategoryTable* table = FindCategory(name);
  if (table == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported Unicode property \\p{", std::string(name), "} in pattern '",
        std::string(pattern), "' (general categories such as L, N, P, S, M, Nd are supported)"));
  }
  std::string body = table->full ? "" : absl::StrCat("\\p{", std::string(name), "}");
  AppendRanges(table->ranges, table->count, &body);
  return body;
}

bool IsHexDigit(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

class Translator {
 public:
  explicit Translator(std::string_view pattern) : p_(pattern) {}

  absl::StatusOr<std::string> Run() {
    while (i_ < p_.size()) {
      const char c = p_[i_];
      if (c == '\\') {
        if (auto status = Escape(); !status.ok()) return status;
      } else if (in_class_) {
        if (auto status = ClassCharacter(); !status.ok()) return status;
      } else if (c == '[') {
        in_class_ = true;
        out_ += '[';
        ++i_;
        if (i_ < p_.size() && p_[i_] == '^') out_ += p_[i_++];
        if (i_ < p_.size() && p_[i_] == ']') {
          out_ += "\\]";  // A leading ']' is a literal.
          ++i_;
        }
      } else if (c == '(' && i_ + 1 < p_.size() && p_[i_ + 1] == '?') {
        Group();
      } else if (c == '(' && i_ + 1 < p_.size() && p_[i_ + 1] == '*') {
        // PCRE2's start-of-pattern options and verbs, e.g. (*CR) or (*NO_JIT):
        // not Oniguruma syntax, and able to change what `$` means.
        return Error("(* verb or option (not supported)");
      } else if (c == '{' && i_ + 1 < p_.size() && p_[i_ + 1] == ',') {
        out_ += "{0,";  // Oniguruma's {,n} is {0,n}.
        i_ += 2;
      } else {
        out_ += c;
        ++i_;
      }
    }
    if (in_class_) return Error("unterminated character class");
    return out_;
  }

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " in pattern '", std::string(p_), "' at offset ", i_));
  }

  absl::Status ClassCharacter() {
    const char c = p_[i_];
    if (c == ']') {
      in_class_ = false;
    } else if (c == '[') {
      return Error("nested character class or POSIX bracket (not supported)");
    } else if (c == '&' && i_ + 1 < p_.size() && p_[i_ + 1] == '&') {
      return Error("class intersection && (not supported)");
    }
    out_ += c;
    ++i_;
    return absl::OkStatus();
  }

  void Group() {
    // "(?imx-imx)" or "(?imx-imx:": Ruby's m is PCRE2's s (dot matches newline).
    size_t j = i_ + 2;
    while (j < p_.size() && (p_[j] == 'i' || p_[j] == 'm' || p_[j] == 'x' || p_[j] == '-')) ++j;
    if (j > i_ + 2 && j < p_.size() && (p_[j] == ')' || p_[j] == ':')) {
      out_ += "(?";
      for (size_t k = i_ + 2; k < j; ++k) out_ += p_[k] == 'm' ? 's' : p_[k];
      i_ = j;
      return;
    }
    out_ += "(?";
    i_ += 2;
  }

  // A class (such as \s) given by its body: inside a class the body is
  // inlined; outside it is wrapped in brackets.
  void EmitClass(const std::string& body, bool negated) {
    if (in_class_) {
      out_ += body;
    } else {
      absl::StrAppend(&out_, negated ? "[^" : "[", body, "]");
    }
  }

  absl::Status Escape() {
    if (i_ + 1 >= p_.size()) return Error("trailing backslash");
    const char e = p_[i_ + 1];
    i_ += 2;
    switch (e) {
      case 's':
        EmitClass(WhiteSpaceClassBody(), false);
        return absl::OkStatus();
      case 'S':
        if (in_class_) {
          out_ += "\\S\\x{180E}";  // PCRE2's \s also has U+180E; White_Space does not.
        } else {
          EmitClass(WhiteSpaceClassBody(), true);
        }
        return absl::OkStatus();
      case 'h':
        EmitClass("0-9a-fA-F", false);  // Ruby: a hexadecimal digit.
        return absl::OkStatus();
      case 'H':
        if (in_class_) return Error("\\H inside a character class (not supported)");
        EmitClass("0-9a-fA-F", true);
        return absl::OkStatus();
      case 'd':
      case 'D':
        return Category("Nd", e == 'D');
      case 'w':
      case 'W': {
        if (e == 'W' && in_class_) return Error("\\W inside a character class (not supported)");
        std::string body;
        auto [ranges, count] = WordCharacterRanges();
        AppendRanges(ranges, count, &body);
        EmitClass(body, e == 'W');
        return absl::OkStatus();
      }
      case 'p':
      case 'P': {
        std::string name;
        bool negated = e == 'P';
        if (i_ < p_.size() && p_[i_] == '{') {
          const size_t close = p_.find('}', i_);
          if (close == std::string_view::npos) return Error("unterminated \\p{");
          name = std::string(p_.substr(i_ + 1, close - i_ - 1));
          i_ = close + 1;
          if (!name.empty() && name[0] == '^') {
            negated = !negated;
            name.erase(0, 1);
          }
        } else if (i_ < p_.size()) {
          name = std::string(1, p_[i_++]);
        }
        return Category(name, negated);
      }
      case 'v':
        out_ += "\\x{0B}";  // Ruby: the vertical tab, not PCRE2's vertical space class.
        return absl::OkStatus();
      case 'u': {
        if (i_ + 4 > p_.size() || !IsHexDigit(p_[i_]) || !IsHexDigit(p_[i_ + 1]) ||
            !IsHexDigit(p_[i_ + 2]) || !IsHexDigit(p_[i_ + 3])) {
          return Error("\\u needs four hex digits");
        }
        absl::StrAppend(&out_, "\\x{", std::string(p_.substr(i_, 4)), "}");
        i_ += 4;
        return absl::OkStatus();
      }
      case 'x':
      case 'k':
        // \xHH, \x{H..}, \k<name>: same syntax; copy the escape and let the rest follow.
        absl::StrAppend(&out_, "\\", std::string(1, e));
        return absl::OkStatus();
      case 't':
      case 'n':
      case 'r':
      case 'f':
      case 'a':
      case 'e':
      case 'A':
      case 'z':
      case 'Z':
      case 'G':
      case '0':
      case '1':
      case '2':
      case '3':
      case '4':
      case '5':
      case '6':
      case '7':
      case '8':
      case '9':
        absl::StrAppend(&out_, "\\", std::string(1, e));
        return absl::OkStatus();
      default:
        if (std::isalnum(static_cast<unsigned char>(e))) {
          i_ -= 2;
          return Error(absl::StrCat("unsupported escape \\", std::string(1, e)));
        }
        absl::StrAppend(&out_, "\\", std::string(1, e));  // An escaped punctuation or byte.
        return absl::OkStatus();
    }
  }

  absl::Status Category(const std::string& name, bool negated) {
    auto body = CategoryClassBody(name, p_);
    if (!body.ok()) return body.status();
    if (negated && in_class_) {
      const CategoryTable* table = FindCategory(name);
      if (table->count != 0) {
        return Error(
            absl::StrCat("negated \\P{", name, "} inside a character class (not supported)"));
      }
      absl::StrAppend(&out_, "\\P{", name, "}");
      return absl::OkStatus();
    }
    EmitClass(*body, negated);
    return absl::OkStatus();
  }

  std::string_view p_;
  size_t i_ = 0;
  bool in_class_ = false;
  std::string out_;
};

// Per-thread PCRE2 state: match data for one match and a JIT stack large
// enough for the tokenizer patterns on long inputs.
struct ThreadMatchState {
  pcre2_match_data* match_data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  ThreadMatchState() { pcre2_jit_stack_assign(context, nullptr, jit_stack); }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(match_data);
  }
};

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern) {
  return Translator(pattern).Run();
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  absl::StatusOr<std::string> translated = TranslateOnigurumaPattern(pattern);
  if (!translated.ok()) return translated.status();
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(
      reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
      PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NEVER_BACKSLASH_C, &error, &offset, context);
  pcre2_compile_context_free(context);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid regex '", std::string(pattern), "': ", Pcre2ErrorMessage(error)));
  }
  std::unique_ptr<Regex> regex(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->code_ = code;
  regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(std::string_view text, std::vector<Match>* matches) const {
  ThreadMatchState& state = MatchState();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const auto* code = static_cast<const pcre2_code*>(code_);
  PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
  size_t search_from = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), search_from, 0,
                                          state.match_data, state.context)
                        : pcre2_match(code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK,
                                      state.match_data, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      return absl::ResourceExhaustedError(absl::StrCat("regex '", pattern_, "' failed on a ",
                                                       text.size(),
                                                       "-byte input: ", Pcre2ErrorMessage(rc)));
    }
    const size_t start = ovector[0], end = ovector[1];
    if (start == end && have_last && last_match_end == end) {
      // Oniguruma skips an empty match where the last match ended and
      // searches again one character later.
      search_from +=
          search_from < text.size() ? Utf8Length(static_cast<unsigned char>(text[search_from])) : 1;
      continue;
    }
    search_from = end;
    have_last = true;
    last_match_end = end;
    matches->push_back({static_cast<uint32_t>(start), static_cast<uint32_t>(end)});
  }
  return absl::OkStatus();
}

}  // namespace dsv2::tokenizer_internal
