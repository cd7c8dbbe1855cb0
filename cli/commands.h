// Subcommands of the `tessera` executable. Each registers its options on the app and returns the function
// that runs it after parsing.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace tessera::cli {

using Command = std::function<int()>;

Command add_generate_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_quantize_command(CLI::App& app);
Command add_serve_command(CLI::App& app);
Command add_plan_command(CLI::App& app);
Command add_batch_command(CLI::App& app);

}  // namespace tessera::cli
