// Programmer-error checks and the user-facing error type.
//
// TESSERA_CHECK is for broken invariants inside the engine (a bug in Tessera): it prints file:line and aborts.
// Anything a user or a request can cause (bad file, bad flag, bad JSON) throws tessera::Error instead, with a
// message the user can act on; boundaries (CLI, HTTP) catch it.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace tessera {

// An error the user can fix: bad input file, bad option, bad request.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void check_failed(const char* file, int line, const char* expr, const std::string& msg) {
  std::fprintf(stderr, "%s:%d: TESSERA_CHECK(%s) failed%s%s\n", file, line, expr, msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace tessera

#define TESSERA_CHECK(cond)                                                         \
  do {                                                                              \
    if (!(cond)) ::tessera::check_failed(__FILE__, __LINE__, #cond, std::string()); \
  } while (0)

#define TESSERA_CHECK_MSG(cond, msg)                                        \
  do {                                                                      \
    if (!(cond)) ::tessera::check_failed(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)
