// A small HTTP/1.1 server on Boost.Beast (synchronous, one thread per connection; Beast and Asio stay inside
// http_server.cpp). Handlers answer with a whole body or stream chunks (SSE) and can ask whether the client
// has gone away. stop() refuses new connections, closes idle keep-alive connections, lets requests in flight
// finish, then joins everything.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace tessera::server {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string target;                          // path, query included
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;

  std::string path() const { return target.substr(0, target.find('?')); }
  std::string header(const std::string& lower_name) const {
    const auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// How a handler answers. Exactly one of send() or begin_stream() (then write()s and end_stream()).
class HttpResponder {
 public:
  virtual ~HttpResponder() = default;
  virtual void send(int status, std::string_view content_type, std::string body,
                    const std::map<std::string, std::string>& extra_headers = {}) = 0;
  virtual void begin_stream(int status, std::string_view content_type) = 0;
  // Returns false when the client is gone (the write failed).
  virtual bool write(std::string_view data) = 0;
  virtual void end_stream() = 0;
  // True when the client closed its side of the connection (checked without blocking).
  virtual bool client_gone() = 0;
  virtual int status() const = 0;  // the status sent so far (0: none)
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponder&)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see HttpServer::port())
  size_t max_body_bytes = 1 << 20;
  int max_connections = 1024;
  // Called for every request that the server answers itself (413, 400 on unparsable HTTP, 503 over capacity).
  std::function<void(int status)> on_error_response;
};

class HttpServer {
 public:
  // Binds and listens (throws tessera::Error when it cannot), then accepts on its own thread.
  HttpServer(const HttpServerOptions& options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::server
