#include "cli/child_process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "engine/core/check.h"

extern char** environ;

namespace tessera::cli {

namespace {

// posix_spawn file actions and their cleanup.
class FileActions {
 public:
  FileActions() { posix_spawn_file_actions_init(&fa_); }
  ~FileActions() { posix_spawn_file_actions_destroy(&fa_); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
  posix_spawn_file_actions_t* get() { return &fa_; }

 private:
  posix_spawn_file_actions_t fa_;
};

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// Spawns argv; returns the pid, or the posix_spawn error as a negative number.
pid_t spawn(const std::vector<std::string>& argv, posix_spawn_file_actions_t* actions) {
  TESSERA_CHECK(!argv.empty());
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], actions, nullptr, args.data(), environ);
  return rc == 0 ? pid : -rc;
}

ChildExit wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw Error(std::string("waitpid failed: ") + std::strerror(errno));
  }
  ChildExit e;
  e.exited = WIFEXITED(status);
  e.code = e.exited ? WEXITSTATUS(status) : WTERMSIG(status);
  return e;
}

bool needs_quotes(const std::string& s) {
  if (s.empty()) return true;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::strchr("-_./=:,+@%", c) != nullptr)) return true;
  return false;
}

}  // namespace

std::string ChildExit::describe() const {
  if (exited) return "exit status " + std::to_string(code);
  return "signal " + std::to_string(code) + " (" + strsignal(code) + ")";
}

ChildExit run_child(const std::vector<std::string>& argv, bool stdout_to_stderr) {
  FileActions actions;
  if (stdout_to_stderr) posix_spawn_file_actions_adddup2(actions.get(), STDERR_FILENO, STDOUT_FILENO);
  std::fflush(nullptr);  // our buffered output first, in order
  const pid_t pid = spawn(argv, actions.get());
  if (pid == -ENOENT) throw Error("cannot run " + argv[0] + ": not found");
  if (pid < 0) throw Error("cannot run " + argv[0] + ": " + std::strerror(-pid));
  return wait_for(pid);
}

std::optional<std::string> capture_output(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
  Fd read_end(fds[0]), write_end(fds[1]);
  FileActions actions;
  posix_spawn_file_actions_adddup2(actions.get(), write_end.get(), STDOUT_FILENO);
  posix_spawn_file_actions_addopen(actions.get(), STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  const pid_t pid = spawn(argv, actions.get());
  write_end.reset();  // the child holds the only write end now, so EOF comes when it exits
  if (pid < 0) return std::nullopt;
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  if (!wait_for(pid).ok()) return std::nullopt;
  return out;
}

std::string own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string line;
  size_t start = 0;
  while (start < raw.size()) {
    size_t end = raw.find('\0', start);
    if (end == std::string::npos) end = raw.size();
    std::string arg = raw.substr(start, end - start);
    if (!line.empty()) line += ' ';
    if (needs_quotes(arg)) {
      std::string quoted = "'";
      for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      arg = quoted + "'";
    }
    line += arg;
    start = end + 1;
  }
  return line;
}

std::string own_executable() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) throw Error("cannot find this executable's path (/proc/self/exe): " + std::string(std::strerror(errno)));
  return std::string(buf.data(), static_cast<size_t>(n));
}

}  // namespace tessera::cli
