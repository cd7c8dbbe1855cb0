// tessera: load-time-compressing LLM inference engine. One executable, one subcommand per job.
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include "cli/commands.h"
#include "engine/core/check.h"

int main(int argc, char** argv) {
  CLI::App app{"Tessera: run Llama-family language models on the CPU (more backends to come)", "tessera"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tessera 0.1.0");
  std::map<std::string, tessera::cli::Command> commands;
  commands["generate"] = tessera::cli::add_generate_command(app);
  commands["bench"] = tessera::cli::add_bench_command(app);
  commands["eval"] = tessera::cli::add_eval_command(app);
  commands["quantize"] = tessera::cli::add_quantize_command(app);
  commands["serve"] = tessera::cli::add_serve_command(app);
  commands["plan"] = tessera::cli::add_plan_command(app);
  commands["batch"] = tessera::cli::add_batch_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (const auto* sub : app.get_subcommands()) return commands.at(sub->get_name())();
  } catch (const tessera::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
