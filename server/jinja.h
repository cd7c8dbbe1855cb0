// A small Jinja2 interpreter: the subset Hugging Face chat templates use (tokenizer_config.json
// "chat_template"), rendered with HF's settings (trim_blocks and lstrip_blocks on).
//
// Supported: {{ }}, {% %}, {# #} with '-' whitespace control; if/elif/else, for (with an if filter, else, tuple
// unpacking, the loop variable), set (names and namespace attributes), macro/endmacro; literals, lists, dicts,
// attribute/subscript/slice access, arithmetic, ~ concatenation, comparisons, in, and/or/not, a if b else c,
// `is` tests (defined, none, string, number, mapping, sequence, ...), common filters (trim, length, upper,
// lower, tojson, default, join, first, last, string, int, list, items, replace, capitalize, title), string and
// dict methods (strip, startswith, split, items, get, ...), and the globals raise_exception, namespace, range.
// Anything else is refused when the template is parsed, so an unsupported template fails at start-up.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tessera::server::jinja {

// Raised by a malformed template (at parse time) or by rendering (raise_exception, a type error).
class TemplateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, like Python dicts

struct Callable;

class Value {
 public:
  struct Undefined {};
  Value() : v_(Undefined{}) {}
  Value(std::nullptr_t) : v_(nullptr) {}
  Value(bool b) : v_(b) {}
  Value(int i) : v_(static_cast<int64_t>(i)) {}
  Value(int64_t i) : v_(i) {}
  Value(double d) : v_(d) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(List l) : v_(std::make_shared<List>(std::move(l))) {}
  Value(Dict d) : v_(std::make_shared<Dict>(std::move(d))) {}
  Value(std::shared_ptr<Callable> f) : v_(std::move(f)) {}
  static Value from_json(const nlohmann::json& j);
  static Value namespace_of(Dict d);  // a dict whose attributes can be assigned with {% set ns.x = ... %}

  bool is_undefined() const { return std::holds_alternative<Undefined>(v_); }
  bool is_none() const { return std::holds_alternative<std::nullptr_t>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_int() const { return std::holds_alternative<int64_t>(v_); }
  bool is_float() const { return std::holds_alternative<double>(v_); }
  bool is_number() const { return is_int() || is_float(); }
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<List>>(v_); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(v_); }
  bool is_callable() const { return std::holds_alternative<std::shared_ptr<Callable>>(v_); }
  bool is_namespace() const { return is_dict() && namespace_; }

  bool as_bool() const;  // Python truthiness
  int64_t as_int() const;
  double as_double() const;
  const std::string& str() const;  // throws unless a string
  List& list() const;
  Dict& dict() const;
  const Callable& callable() const;

  // Dict lookup: undefined when absent.
  Value get(const std::string& key) const;
  void set(const std::string& key, Value v) const;

  std::string to_string() const;  // what {{ }} prints (Python str())
  std::string repr() const;       // Python repr(), for lists/dicts
  nlohmann::json to_json() const;
  std::string type_name() const;

 private:
  std::variant<Undefined, std::nullptr_t, bool, int64_t, double, std::string, std::shared_ptr<List>,
               std::shared_ptr<Dict>, std::shared_ptr<Callable>>
      v_;
  bool namespace_ = false;
};

bool operator==(const Value& a, const Value& b);

struct Node;

class Template {
 public:
  // Parses; throws TemplateError naming the problem and the line.
  explicit Template(std::string_view source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the given variables (plus the built-in globals). Throws TemplateError. Thread-safe: rendering
  // does not modify the template.
  std::string render(const Dict& variables) const;

 private:
  std::vector<std::unique_ptr<Node>> body_;
};

}  // namespace tessera::server::jinja
