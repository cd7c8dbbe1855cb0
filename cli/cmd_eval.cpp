// placeholder
#include "cli/commands.h"
namespace tessera::cli {
Command add_eval_command(CLI::App& app) {
  app.add_subcommand("eval", "Not implemented yet");
  return [] { return 1; };
}
}  // namespace tessera::cli
