// Sizes on the command line ("24GiB", "512MiB", "1e9") and in messages ("5.12 GiB").
#pragma once

#include <cstddef>
#include <string>

namespace tessera::cli {

// "512MiB", "24GiB", "1.5TiB", "1000000" (bytes), also "KB/MB/GB/TB" (powers of 1000) and "K/M/G/T" (binary).
// `option` names the flag in the message; throws tessera::Error for anything else or a size that is not positive.
size_t parse_byte_size(const std::string& text, const std::string& option);

// Binary units with two decimals: "512 B", "3.50 KiB", "1.25 GiB".
std::string format_bytes(size_t bytes);

}  // namespace tessera::cli
