// Prometheus text exposition (format 0.0.4) of the serving metrics, names prefixed tessera_.
#pragma once

#include <string>

#include "engine/serving/metrics.h"

namespace tessera::server {

std::string render_prometheus(const serving::MetricsSnapshot& m);

}  // namespace tessera::server
