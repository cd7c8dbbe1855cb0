// placeholder
#include "cli/commands.h"
namespace tessera::cli {
Command add_quantize_command(CLI::App& app) {
  app.add_subcommand("quantize", "Not implemented yet");
  return [] { return 1; };
}
}  // namespace tessera::cli
