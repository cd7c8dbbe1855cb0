// Starting other programs from the CLI with an explicit argument vector (no shell, so nothing in an argument is
// ever interpreted), e.g. the mpiexec jobs of a `tessera bench` sweep.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace tessera::cli {

struct ChildExit {
  bool exited = false;  // false: ended by a signal
  int code = 0;         // exit status, or the signal number
  bool ok() const { return exited && code == 0; }
  std::string describe() const;  // "exit status 1", "signal 9 (Killed)"
};

// Runs argv[0] (searched on PATH when it has no '/') and waits for it. It shares this process's stdin and
// stderr; its stdout goes to this process's stdout, or to stderr when stdout_to_stderr (so a JSON report on
// stdout stays clean). Throws tessera::Error when the program cannot be started (ENOENT: "not found").
ChildExit run_child(const std::vector<std::string>& argv, bool stdout_to_stderr);

// Runs argv and returns its stdout (stderr discarded), or nullopt when it cannot be started or fails.
std::optional<std::string> capture_output(const std::vector<std::string>& argv);

// This process's command line as a shell would need it typed (arguments quoted where needed), from
// /proc/self/cmdline; "" when unavailable.
std::string own_command_line();

// The absolute path of the running executable (/proc/self/exe).
std::string own_executable();

}  // namespace tessera::cli
