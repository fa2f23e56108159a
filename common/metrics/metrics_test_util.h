// Reading a text exposition in metrics tests.
#pragma once

#include <cmath>
#include <cstdlib>
#include <string>

namespace dsv2::testutil {

// The value of the sample `series` (name and labels exactly as exposed) in
// text exposition `text`, or NaN.
inline double Sample(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::strtod(text.c_str() + at + series.size(), nullptr);
    at += series.size();
  }
  return std::nan("");
}

}  // namespace dsv2::testutil
