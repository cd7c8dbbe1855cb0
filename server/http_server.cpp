#include "server/http_server.h"

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "engine/core/check.h"

namespace tessera::server {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

namespace {

std::string json_error_body(const std::string& message, const std::string& type) {
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped += '\\';
    escaped += c;
  }
  return "{\"error\":{\"message\":\"" + escaped + "\",\"type\":\"" + type + "\",\"param\":null,\"code\":null}}";
}

class Connection final : public HttpResponder {
 public:
  Connection(tcp::socket& socket, bool keep_alive) : socket_(socket), keep_alive_(keep_alive) {}

  void send(int status, std::string_view content_type, std::string body,
            const std::map<std::string, std::string>& extra_headers) override {
    TESSERA_CHECK(status_ == 0);
    status_ = status;
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::server, "tessera");
    res.set(http::field::content_type, std::string(content_type));
    for (const auto& [k, v] : extra_headers) res.set(k, v);
    res.keep_alive(keep_alive_);
    res.body() = std::move(body);
    res.prepare_payload();
    beast::error_code ec;
    http::write(socket_, res, ec);
    if (ec) failed_ = true;
  }

  void begin_stream(int status, std::string_view content_type) override {
    TESSERA_CHECK(status_ == 0);
    status_ = status;
    streaming_ = true;
    http::response<http::empty_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::server, "tessera");
    res.set(http::field::content_type, std::string(content_type));
    res.set(http::field::cache_control, "no-cache");
    res.keep_alive(keep_alive_);
    res.chunked(true);
    http::response_serializer<http::empty_body> sr{res};
    beast::error_code ec;
    http::write_header(socket_, sr, ec);
    if (ec) failed_ = true;
  }

  bool write(std::string_view data) override {
    TESSERA_CHECK(streaming_);
    if (failed_) return false;
    if (data.empty()) return true;
    beast::error_code ec;
    net::write(socket_, http::make_chunk(net::const_buffer(data.data(), data.size())), ec);
    if (ec) failed_ = true;
    return !failed_;
  }

  void end_stream() override {
    TESSERA_CHECK(streaming_);
    if (failed_) return;
    beast::error_code ec;
    net::write(socket_, http::make_chunk_last(), ec);
    if (ec) failed_ = true;
  }

  bool client_gone() override {
    if (failed_) return true;
    pollfd p{socket_.native_handle(), POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
    if (p.revents & POLLIN) {
      char c;
      const ssize_t n = ::recv(socket_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      return n == 0;  // orderly shutdown by the peer; data (a pipelined request) means it is still there
    }
    return false;
  }

  int status() const override { return status_; }
  bool failed() const { return failed_; }

 private:
  tcp::socket& socket_;
  bool keep_alive_;
  int status_ = 0;
  bool streaming_ = false;
  bool failed_ = false;
};

}  // namespace

struct HttpServer::Impl {
  struct Session {
    std::unique_ptr<tcp::socket> socket;  // destroyed under mu, before stop() can return and free io
    int fd = -1;
    bool idle = true;  // blocked reading the next request: stop() may shut it down
  };

  Impl(const HttpServerOptions& o, HttpHandler h) : options(o), handler(std::move(h)), acceptor(io) {
    beast::error_code ec;
    const auto address = net::ip::make_address(options.host, ec);
    if (ec) throw Error("--host: '" + options.host + "' is not an IP address");
    const tcp::endpoint endpoint(address, static_cast<unsigned short>(options.port));
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw Error("cannot listen on " + options.host + ":" + std::to_string(options.port) + ": " + ec.message());
    bound_port = acceptor.local_endpoint().port();
    accept_thread = std::thread([this] { accept_loop(); });
  }

  void accept_loop() {
    for (;;) {
      tcp::socket socket(io);
      beast::error_code ec;
      acceptor.accept(socket, ec);
      if (stopping.load()) return;
      if (ec) {
        if (ec == net::error::operation_aborted || ec == net::error::bad_descriptor) return;
        continue;  // e.g. too many open files: try again
      }
      std::unique_lock lock(mu);
      if (static_cast<int>(sessions.size()) >= options.max_connections) {
        lock.unlock();
        refuse(socket);
        continue;
      }
      const uint64_t id = next_id++;
      const int fd = socket.native_handle();
      auto owned = std::make_unique<tcp::socket>(std::move(socket));
      tcp::socket* s = owned.get();
      sessions[id] = Session{std::move(owned), fd, true};
      lock.unlock();
      std::thread([this, id, s] {
        serve(id, *s);
        beast::error_code ignored;
        s->shutdown(tcp::socket::shutdown_both, ignored);
        s->close(ignored);
        std::lock_guard done(mu);
        sessions.erase(id);
        cv.notify_all();
      }).detach();
    }
  }

  void refuse(tcp::socket& socket) {
    Connection c(socket, false);
    c.send(503, "application/json", json_error_body("too many connections", "server_error"), {});
    if (options.on_error_response) options.on_error_response(503);
  }

  // Serves requests on one connection until it closes, fails or the server stops. Catches everything.
  void serve(uint64_t id, tcp::socket& socket) {
    beast::flat_buffer buffer;
    for (;;) {
      {
        std::lock_guard lock(mu);
        if (stopping.load()) return;
        sessions[id].idle = true;
      }
      http::request_parser<http::string_body> parser;
      parser.body_limit(options.max_body_bytes);
      parser.header_limit(64 * 1024);
      beast::error_code ec;
      http::read(socket, buffer, parser, ec);
      {
        std::lock_guard lock(mu);
        sessions[id].idle = false;
      }
      if (ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset) return;
      if (ec == http::error::body_limit) {
        Connection c(socket, false);
        c.send(413, "application/json",
               json_error_body("request body exceeds " + std::to_string(options.max_body_bytes) + " bytes",
                               "invalid_request_error"),
               {});
        if (options.on_error_response) options.on_error_response(413);
        return;
      }
      if (ec) {
        if (stopping.load() || ec == net::error::shut_down || ec == net::error::operation_aborted) return;
        Connection c(socket, false);
        c.send(400, "application/json",
               json_error_body("malformed HTTP request: " + ec.message(), "invalid_request_error"), {});
        if (options.on_error_response) options.on_error_response(400);
        return;
      }
      http::request<http::string_body> req = parser.release();
      HttpRequest r;
      r.method = std::string(req.method_string());
      r.target = std::string(req.target());
      for (const auto& f : req) {
        std::string name(f.name_string());
        for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        r.headers[name] = std::string(f.value());
      }
      r.body = std::move(req.body());
      const bool keep_alive = req.keep_alive() && !stopping.load();
      Connection c(socket, keep_alive);
      try {
        handler(r, c);
      } catch (const std::exception& e) {
        if (c.status() == 0) c.send(500, "application/json", json_error_body(e.what(), "server_error"), {});
      }
      if (c.status() == 0) c.send(500, "application/json", json_error_body("no response", "server_error"), {});
      if (!keep_alive || c.failed()) return;
    }
  }

  void stop() {
    {
      std::lock_guard lock(mu);
      if (stopping.exchange(true)) return;
      // Wake idle connections: their blocking read returns and the session ends; busy ones finish first.
      for (const auto& [id, s] : sessions)
        if (s.idle) ::shutdown(s.fd, SHUT_RD);
    }
    ::shutdown(acceptor.native_handle(), SHUT_RDWR);  // wakes accept()
    if (accept_thread.joinable()) accept_thread.join();
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return sessions.empty(); });
    beast::error_code ignored;
    acceptor.close(ignored);
  }

  HttpServerOptions options;
  HttpHandler handler;
  net::io_context io;
  tcp::acceptor acceptor;
  int bound_port = 0;
  std::atomic<bool> stopping{false};
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<uint64_t, Session> sessions;
  uint64_t next_id = 0;
  std::thread accept_thread;
};

HttpServer::HttpServer(const HttpServerOptions& options, HttpHandler handler)
    : impl_(std::make_unique<Impl>(options, std::move(handler))) {}

HttpServer::~HttpServer() {
  impl_->stop();
}

int HttpServer::port() const {
  return impl_->bound_port;
}

void HttpServer::stop() {
  impl_->stop();
}

}  // namespace tessera::server
