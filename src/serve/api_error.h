// Errors a client gets back, in the OpenAI format:
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}
// with the HTTP status that goes with them. Everything the server rejects is one of these.
#pragma once
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>

namespace duo::serve {

struct ApiError : std::runtime_error {
  int status;
  std::string type;   // invalid_request_error, not_found_error, server_error, ...
  std::string param;  // the request field at fault ("" = none)
  std::string code;   // machine-readable reason ("" = none)
  ApiError(int status, std::string type, const std::string& message, std::string param = "", std::string code = "")
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
};

// 400 for a bad field, naming it.
template <typename... Args>
[[noreturn]] void bad_param(const std::string& param, fmt::format_string<Args...> f, Args&&... args) {
  throw ApiError(400, "invalid_request_error", fmt::format(f, std::forward<Args>(args)...), param);
}

inline nlohmann::json error_json(const std::string& type, const std::string& message, const std::string& param = "",
                                 const std::string& code = "") {
  nlohmann::json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return {{"error", e}};
}

inline nlohmann::json error_json(const ApiError& e) { return error_json(e.type, e.what(), e.param, e.code); }

}  // namespace duo::serve
