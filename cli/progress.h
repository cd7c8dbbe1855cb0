// A one-line progress bar on stderr for long load-time steps (quantization, calibration). It draws only when
// stderr is a terminal, so logs and pipes stay clean.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>

namespace tessera::cli {

class ProgressBar {
 public:
  // Enabled when stderr is a terminal.
  explicit ProgressBar(std::string label);
  ProgressBar(std::string label, bool enabled);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  bool enabled() const { return enabled_; }
  // Redraws at most every 100 ms, and always at 100%.
  void update(size_t done, size_t total);
  // Erases the bar (the caller prints its own summary line).
  void finish();
  // A callback for CompressOptions::progress and the like; valid while the bar lives.
  std::function<void(size_t, size_t)> callback();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  int last_permille_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace tessera::cli
