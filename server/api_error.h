// An error answered to the client: HTTP status plus an OpenAI-style body
// {"error": {"message", "type", "param", "code"}}. Handlers throw it; the router turns it into the response.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace tessera::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string type = "invalid_request_error", std::string param = {})
      : std::runtime_error(message), status_(status), type_(std::move(type)), param_(std::move(param)) {}

  int status() const { return status_; }
  nlohmann::json body() const {
    return {{"error",
             {{"message", what()},
              {"type", type_},
              {"param", param_.empty() ? nlohmann::json(nullptr) : nlohmann::json(param_)},
              {"code", status_}}}};
  }

 private:
  int status_;
  std::string type_;
  std::string param_;
};

// 400 naming the offending field.
inline ApiError bad_request(const std::string& param, const std::string& message) {
  return ApiError(400, message, "invalid_request_error", param);
}

}  // namespace tessera::server
