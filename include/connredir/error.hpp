// Errors as values for every library and data path: an errno plus a message
// that says what happened and what to do about it. No exceptions.
#pragma once

#include <string>
#include <tl/expected.hpp>
#include <utility>

// Exported from libconnredir.so (built with hidden visibility by default).
#pragma GCC visibility push(default)

namespace connredir {

struct Error {
  int code = 0;         // errno value (positive)
  std::string message;  // human-readable, says what to do
};

template <class T>
using Result = tl::expected<T, Error>;

// Build an error result: `return fail(ENOENT, "...");`
inline tl::unexpected<Error> fail(int code, std::string message) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

// "what: strerror(code)"-style message for a failed syscall.
std::string errno_message(int code, const std::string& what);
// The text of an errno value alone ("No such file or directory"): the one
// errno-to-text helper of the project (locale-independent, thread-safe).
inline std::string errno_text(int code) { return errno_message(code, ""); }

}  // namespace connredir

#pragma GCC visibility pop
