#include "server/jinja.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

namespace tessera::server::jinja {

struct Callable {
  using Args = std::vector<Value>;
  using Kwargs = std::vector<std::pair<std::string, Value>>;
  std::function<Value(Args&, Kwargs&)> fn;
};

// ---- Value ----------------------------------------------------------------------------------------------------

Value Value::from_json(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value(nullptr);
    case nlohmann::json::value_t::boolean:
      return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
      return Value(j.get<int64_t>());
    case nlohmann::json::value_t::number_float:
      return Value(j.get<double>());
    case nlohmann::json::value_t::string:
      return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), from_json(it.value()));
      return Value(std::move(d));
    }
    default:
      return Value();
  }
}

Value Value::namespace_of(Dict d) {
  Value v(std::move(d));
  v.namespace_ = true;
  return v;
}

bool Value::as_bool() const {
  if (is_undefined() || is_none()) return false;
  if (is_bool()) return std::get<bool>(v_);
  if (is_int()) return std::get<int64_t>(v_) != 0;
  if (is_float()) return std::get<double>(v_) != 0.0;
  if (is_string()) return !str().empty();
  if (is_list()) return !list().empty();
  if (is_dict()) return !dict().empty();
  return true;
}

int64_t Value::as_int() const {
  if (is_int()) return std::get<int64_t>(v_);
  if (is_float()) return static_cast<int64_t>(std::get<double>(v_));
  if (is_bool()) return std::get<bool>(v_) ? 1 : 0;
  throw TemplateError("expected a number, got " + type_name());
}

double Value::as_double() const {
  if (is_float()) return std::get<double>(v_);
  return static_cast<double>(as_int());
}

const std::string& Value::str() const {
  if (!is_string()) throw TemplateError("expected a string, got " + type_name());
  return std::get<std::string>(v_);
}

List& Value::list() const {
  if (!is_list()) throw TemplateError("expected a list, got " + type_name());
  return *std::get<std::shared_ptr<List>>(v_);
}

Dict& Value::dict() const {
  if (!is_dict()) throw TemplateError("expected a mapping, got " + type_name());
  return *std::get<std::shared_ptr<Dict>>(v_);
}

const Callable& Value::callable() const {
  if (!is_callable()) throw TemplateError("'" + type_name() + "' object is not callable");
  return *std::get<std::shared_ptr<Callable>>(v_);
}

Value Value::get(const std::string& key) const {
  for (const auto& [k, v] : dict())
    if (k == key) return v;
  return Value();
}

void Value::set(const std::string& key, Value value) const {
  for (auto& [k, v] : dict())
    if (k == key) {
      v = std::move(value);
      return;
    }
  dict().emplace_back(key, std::move(value));
}

std::string Value::type_name() const {
  if (is_undefined()) return "undefined";
  if (is_none()) return "none";
  if (is_bool()) return "bool";
  if (is_int()) return "int";
  if (is_float()) return "float";
  if (is_string()) return "string";
  if (is_list()) return "list";
  if (is_dict()) return "dict";
  return "function";
}

namespace {

std::string format_double(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e16) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f", d);
    return buf;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
}

std::string quote(const std::string& s) {
  const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + q;
}

}  // namespace

std::string Value::to_string() const {
  if (is_undefined()) return "";
  if (is_none()) return "None";
  if (is_bool()) return std::get<bool>(v_) ? "True" : "False";
  if (is_int()) return std::to_string(std::get<int64_t>(v_));
  if (is_float()) return format_double(std::get<double>(v_));
  if (is_string()) return std::get<std::string>(v_);
  return repr();
}

std::string Value::repr() const {
  if (is_string()) return quote(str());
  if (is_list()) {
    std::string s = "[";
    for (size_t i = 0; i < list().size(); ++i) s += (i ? ", " : "") + list()[i].repr();
    return s + "]";
  }
  if (is_dict()) {
    std::string s = "{";
    bool first = true;
    for (const auto& [k, v] : dict()) {
      s += (first ? "" : ", ") + quote(k) + ": " + v.repr();
      first = false;
    }
    return s + "}";
  }
  if (is_callable()) return "<function>";
  return to_string();
}

nlohmann::json Value::to_json() const {
  if (is_undefined() || is_none()) return nullptr;
  if (is_bool()) return std::get<bool>(v_);
  if (is_int()) return std::get<int64_t>(v_);
  if (is_float()) return std::get<double>(v_);
  if (is_string()) return str();
  if (is_list()) {
    nlohmann::json a = nlohmann::json::array();
    for (const Value& v : list()) a.push_back(v.to_json());
    return a;
  }
  if (is_dict()) {
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    for (const auto& [k, v] : dict()) o[k] = nlohmann::ordered_json::parse(v.to_json().dump());
    return nlohmann::json::parse(o.dump());
  }
  return nullptr;
}

bool operator==(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() == b.as_double();
  if (a.is_bool() && b.is_bool()) return a.as_bool() == b.as_bool();
  if (a.is_string() && b.is_string()) return a.str() == b.str();
  if ((a.is_none() || a.is_undefined()) && (b.is_none() || b.is_undefined())) return a.is_none() == b.is_none();
  if (a.is_list() && b.is_list()) return a.list() == b.list();
  if (a.is_dict() && b.is_dict()) {
    if (a.dict().size() != b.dict().size()) return false;
    for (const auto& [k, v] : a.dict())
      if (!(b.get(k) == v)) return false;
    return true;
  }
  return false;
}

// ---- Lexer ------------------------------------------------------------------------------------------------------

namespace {

struct Token {
  enum Kind { kName, kString, kInt, kFloat, kOp, kEnd } kind = kEnd;
  std::string text;
};

std::vector<Token> tokenize(std::string_view s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  auto fail = [&](const std::string& what) { throw TemplateError("line " + std::to_string(line) + ": " + what); };
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::kName, std::string(s.substr(i, j - i))});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.')) {
        if (s[j] == '.') {
          if (j + 1 >= s.size() || !std::isdigit(static_cast<unsigned char>(s[j + 1]))) break;
          is_float = true;
        }
        ++j;
      }
      out.push_back({is_float ? Token::kFloat : Token::kInt, std::string(s.substr(i, j - i))});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          switch (e) {
            case 'n':
              v += '\n';
              break;
            case 't':
              v += '\t';
              break;
            case 'r':
              v += '\r';
              break;
            default:
              v += e;
          }
        } else {
          v += s[j];
        }
      }
      if (j >= s.size()) fail("unterminated string");
      out.push_back({Token::kString, std::move(v)});
      i = j + 1;
    } else {
      static const char* kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : kTwo)
        if (s.substr(i, 2) == t) op = t;
      if (op.size() == 1 && std::string_view("+-*/%~|.,:()[]{}=<>!").find(c) == std::string_view::npos)
        fail(std::string("unexpected character '") + c + "'");
      out.push_back({Token::kOp, op});
      i += op.size();
    }
  }
  out.push_back({Token::kEnd, ""});
  return out;
}

struct Segment {
  enum Kind { kText, kExpr, kStmt } kind;
  std::string text;
  int line;
};

// Splits the source into text, {{ }} and {% %} segments, applying '-' whitespace control, trim_blocks and
// lstrip_blocks (Hugging Face renders chat templates with both on). Comments vanish.
std::vector<Segment> segment(std::string_view src) {
  std::vector<Segment> out;
  size_t i = 0;
  int line = 1;
  bool strip_next = false;  // the previous tag ended with '-'
  bool trim_newline = false;
  auto count_lines = [](std::string_view s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); };
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string_view::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
           src[open + 1] != '#')
      open = src.find('{', open + 1);
    if (open != std::string_view::npos && open + 1 >= src.size()) open = std::string_view::npos;
    std::string text(src.substr(i, open == std::string_view::npos ? std::string_view::npos : open - i));
    if (trim_newline) {
      if (text.starts_with("\r\n")) {
        text.erase(0, 2);
      } else if (text.starts_with("\n")) {
        text.erase(0, 1);
      }
    }
    if (strip_next) text.erase(0, std::min(text.size(), text.find_first_not_of(" \t\r\n")));
    if (open == std::string_view::npos) {
      if (!text.empty()) out.push_back({Segment::kText, text, line});
      break;
    }
    const char kind = src[open + 1];
    const bool minus_before = open + 2 < src.size() && src[open + 2] == '-';
    const bool plus_before = open + 2 < src.size() && src[open + 2] == '+';
    if (minus_before) {
      const size_t keep = text.find_last_not_of(" \t\r\n");
      text.resize(keep == std::string::npos ? 0 : keep + 1);
    } else if ((kind == '%' || kind == '#') && !plus_before) {
      // lstrip_blocks: spaces and tabs between the start of the line and a block tag go.
      const size_t nl = text.find_last_of('\n');
      const size_t from = nl == std::string::npos ? 0 : nl + 1;
      const bool at_line_start = nl != std::string::npos || out.empty() || i == 0 || trim_newline;
      if (at_line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.resize(from);
    }
    if (!text.empty()) out.push_back({Segment::kText, text, line});
    line += count_lines(src.substr(i, open - i));
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    // Find the closing delimiter outside string literals.
    size_t j = open + 2;
    char in_str = 0;
    for (; j + 1 < src.size(); ++j) {
      if (kind != '#' && in_str == 0 && (src[j] == '\'' || src[j] == '"')) {
        in_str = src[j];
      } else if (in_str != 0 && src[j] == in_str) {
        in_str = 0;
      } else if (in_str == 0 && src.substr(j, 2) == close) {
        break;
      }
    }
    if (j + 1 >= src.size()) throw TemplateError("line " + std::to_string(line) + ": unclosed tag");
    const bool minus_after = src[j - 1] == '-' && j - 1 >= open + 3;
    size_t body_begin = open + 2 + (minus_before || plus_before ? 1 : 0);
    size_t body_end = minus_after ? j - 1 : j;
    if (kind != '#') {
      out.push_back({kind == '{' ? Segment::kExpr : Segment::kStmt,
                     std::string(src.substr(body_begin, body_end - body_begin)), line});
    }
    line += count_lines(src.substr(open, j + 2 - open));
    strip_next = minus_after;
    trim_newline = kind != '{';
    i = j + 2;
  }
  return out;
}

}  // namespace

// ---- AST --------------------------------------------------------------------------------------------------------

struct Expr {
  enum Kind {
    kLiteral,
    kName,
    kAttr,    // a.name
    kItem,    // a[b]
    kSlice,   // a[b:c:d] (absent parts are null)
    kCall,    // a(args, kw=...)
    kFilter,  // a | name(args)
    kTest,    // a is [not] name(args)
    kNot,
    kNeg,
    kBinary,  // op in `op`
    kAnd,
    kOr,
    kTernary,  // kids: value, cond, else (else may be null)
    kList,
    kDict,  // kids: k0, v0, k1, v1, ...
  } kind;
  Value literal;
  std::string name;  // name, attribute, filter, test, operator
  bool negated = false;
  std::vector<std::unique_ptr<Expr>> kids;
  std::vector<std::string> kw_names;  // for kCall/kFilter: names of the trailing keyword arguments
};
using ExprPtr = std::unique_ptr<Expr>;

struct Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro } kind;
  std::string text;            // kText; kSet/kSetBlock/kMacro: the name
  std::string attr;            // kSet on a namespace attribute
  std::vector<ExprPtr> exprs;  // kOutput/kSet: value; kIf: conditions; kFor: iterable, filter
  std::vector<std::vector<std::unique_ptr<Node>>> bodies;  // kIf: one per branch (+ else); kFor: body, else
  std::vector<std::string> vars;                           // kFor: loop variables; kMacro: parameter names
  std::vector<ExprPtr> defaults;                           // kMacro: default per parameter (null when none)
};
using NodePtr = std::unique_ptr<Node>;

namespace {

class ExprParser {
 public:
  ExprParser(std::vector<Token> tokens, int line) : t_(std::move(tokens)), line_(line) {}

  ExprPtr parse() { return ternary(); }
  // For `for x in ITERABLE if cond`: the `if` belongs to the loop, not to a conditional expression.
  ExprPtr parse_no_ternary_if() { return or_expr(); }
  const Token& peek(size_t k = 0) const { return t_[std::min(pos_ + k, t_.size() - 1)]; }
  bool at_end() const { return peek().kind == Token::kEnd; }
  bool accept_op(const char* op) {
    if (peek().kind == Token::kOp && peek().text == op) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool accept_name(const char* name) {
    if (peek().kind == Token::kName && peek().text == name) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) fail(std::string("expected '") + op + "'");
  }
  std::string expect_name() {
    if (peek().kind != Token::kName) fail("expected a name");
    return t_[pos_++].text;
  }
  void expect_end() {
    if (!at_end()) fail("unexpected '" + peek().text + "'");
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw TemplateError("line " + std::to_string(line_) + ": " + what);
  }

 private:
  static ExprPtr make(Expr::Kind k, std::string name = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->name = std::move(name);
    return e;
  }

  ExprPtr ternary() {
    ExprPtr value = or_expr();
    if (peek().kind == Token::kName && peek().text == "if") {
      ++pos_;
      auto e = make(Expr::kTernary);
      e->kids.push_back(std::move(value));
      e->kids.push_back(or_expr());
      e->kids.push_back(accept_name("else") ? ternary() : nullptr);
      return e;
    }
    return value;
  }
  ExprPtr or_expr() {
    ExprPtr l = and_expr();
    while (accept_name("or")) {
      auto e = make(Expr::kOr);
      e->kids.push_back(std::move(l));
      e->kids.push_back(and_expr());
      l = std::move(e);
    }
    return l;
  }
  ExprPtr and_expr() {
    ExprPtr l = not_expr();
    while (accept_name("and")) {
      auto e = make(Expr::kAnd);
      e->kids.push_back(std::move(l));
      e->kids.push_back(not_expr());
      l = std::move(e);
    }
    return l;
  }
  ExprPtr not_expr() {
    if (accept_name("not")) {
      auto e = make(Expr::kNot);
      e->kids.push_back(not_expr());
      return e;
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr l = concat();
    for (;;) {
      std::string op;
      const Token& t = peek();
      if (t.kind == Token::kOp &&
          (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == "<=" || t.text == ">" || t.text == ">=")) {
        op = t.text;
        ++pos_;
      } else if (t.kind == Token::kName && t.text == "in") {
        op = "in";
        ++pos_;
      } else if (t.kind == Token::kName && t.text == "not" && peek(1).kind == Token::kName && peek(1).text == "in") {
        op = "not in";
        pos_ += 2;
      } else if (t.kind == Token::kName && t.text == "is") {
        ++pos_;
        auto e = make(Expr::kTest);
        e->negated = accept_name("not");
        e->name = expect_name();
        e->kids.push_back(std::move(l));
        if (accept_op("(")) {
          args(*e);
        } else if (!at_end() && peek().kind != Token::kOp && peek().kind != Token::kName) {
          e->kids.push_back(primary());  // `is equalto 3` style argument
        }
        l = std::move(e);
        continue;
      } else {
        return l;
      }
      auto e = make(Expr::kBinary, op);
      e->kids.push_back(std::move(l));
      e->kids.push_back(concat());
      l = std::move(e);
    }
  }
  ExprPtr concat() {
    ExprPtr l = additive();
    while (accept_op("~")) {
      auto e = make(Expr::kBinary, "~");
      e->kids.push_back(std::move(l));
      e->kids.push_back(additive());
      l = std::move(e);
    }
    return l;
  }
  ExprPtr additive() {
    ExprPtr l = multiplicative();
    for (;;) {
      std::string op;
      if (accept_op("+")) {
        op = "+";
      } else if (accept_op("-")) {
        op = "-";
      } else {
        return l;
      }
      auto e = make(Expr::kBinary, op);
      e->kids.push_back(std::move(l));
      e->kids.push_back(multiplicative());
      l = std::move(e);
    }
  }
  ExprPtr multiplicative() {
    ExprPtr l = unary();
    for (;;) {
      std::string op;
      for (const char* o : {"*", "//", "/", "%"})
        if (op.empty() && accept_op(o)) op = o;
      if (op.empty()) return l;
      auto e = make(Expr::kBinary, op);
      e->kids.push_back(std::move(l));
      e->kids.push_back(unary());
      l = std::move(e);
    }
  }
  ExprPtr unary() {
    if (accept_op("-")) {
      auto e = make(Expr::kNeg);
      e->kids.push_back(unary());
      return e;
    }
    if (accept_op("+")) return unary();
    return filtered();
  }
  ExprPtr filtered() {
    ExprPtr l = postfix();
    while (accept_op("|")) {
      auto e = make(Expr::kFilter, expect_name());
      e->kids.push_back(std::move(l));
      if (accept_op("(")) args(*e);
      l = std::move(e);
    }
    return l;
  }
  // Parses "a, b, k=c)" after '(' into e.kids (after the existing ones) and e.kw_names.
  void args(Expr& e) {
    while (!accept_op(")")) {
      if (peek().kind == Token::kName && peek(1).kind == Token::kOp && peek(1).text == "=") {
        e.kw_names.push_back(t_[pos_].text);
        pos_ += 2;
      } else if (!e.kw_names.empty()) {
        fail("positional argument after a keyword argument");
      }
      e.kids.push_back(ternary());
      if (!accept_op(",")) {
        expect_op(")");
        break;
      }
    }
  }
  ExprPtr postfix() {
    ExprPtr l = primary();
    for (;;) {
      if (accept_op(".")) {
        auto e = make(Expr::kAttr, expect_name());
        e->kids.push_back(std::move(l));
        l = std::move(e);
      } else if (accept_op("[")) {
        ExprPtr a = peek().kind == Token::kOp && peek().text == ":" ? nullptr : ternary();
        if (accept_op(":")) {
          auto e = make(Expr::kSlice);
          e->kids.push_back(std::move(l));
          e->kids.push_back(std::move(a));
          e->kids.push_back(peek().kind == Token::kOp && (peek().text == "]" || peek().text == ":") ? nullptr
                                                                                                    : ternary());
          e->kids.push_back(accept_op(":") && !(peek().kind == Token::kOp && peek().text == "]") ? ternary() : nullptr);
          expect_op("]");
          l = std::move(e);
        } else {
          expect_op("]");
          auto e = make(Expr::kItem);
          e->kids.push_back(std::move(l));
          e->kids.push_back(std::move(a));
          l = std::move(e);
        }
      } else if (accept_op("(")) {
        auto e = make(Expr::kCall);
        e->kids.push_back(std::move(l));
        args(*e);
        l = std::move(e);
      } else {
        return l;
      }
    }
  }
  ExprPtr primary() {
    const Token t = peek();
    ++pos_;
    switch (t.kind) {
      case Token::kString: {
        auto e = make(Expr::kLiteral);
        std::string s = t.text;
        while (peek().kind == Token::kString) s += t_[pos_++].text;  // adjacent literals concatenate
        e->literal = Value(std::move(s));
        return e;
      }
      case Token::kInt: {
        auto e = make(Expr::kLiteral);
        e->literal = Value(static_cast<int64_t>(std::stoll(t.text)));
        return e;
      }
      case Token::kFloat: {
        auto e = make(Expr::kLiteral);
        e->literal = Value(std::stod(t.text));
        return e;
      }
      case Token::kName: {
        auto e = make(Expr::kLiteral);
        if (t.text == "true" || t.text == "True") {
          e->literal = Value(true);
        } else if (t.text == "false" || t.text == "False") {
          e->literal = Value(false);
        } else if (t.text == "none" || t.text == "None") {
          e->literal = Value(nullptr);
        } else {
          e->kind = Expr::kName;
          e->name = t.text;
        }
        return e;
      }
      case Token::kOp:
        if (t.text == "(") {
          ExprPtr inner = ternary();
          if (accept_op(",")) {  // a tuple: treated as a list
            auto e = make(Expr::kList);
            e->kids.push_back(std::move(inner));
            while (!accept_op(")")) {
              e->kids.push_back(ternary());
              if (!accept_op(",")) {
                expect_op(")");
                break;
              }
            }
            return e;
          }
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          auto e = make(Expr::kList);
          while (!accept_op("]")) {
            e->kids.push_back(ternary());
            if (!accept_op(",")) {
              expect_op("]");
              break;
            }
          }
          return e;
        }
        if (t.text == "{") {
          auto e = make(Expr::kDict);
          while (!accept_op("}")) {
            e->kids.push_back(ternary());
            expect_op(":");
            e->kids.push_back(ternary());
            if (!accept_op(",")) {
              expect_op("}");
              break;
            }
          }
          return e;
        }
        break;
      case Token::kEnd:
        fail("unexpected end of expression");
    }
    fail("unexpected '" + t.text + "'");
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
  int line_;
};

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Segment> segs) : segs_(std::move(segs)) {}

  std::vector<NodePtr> parse_all() {
    std::string end;
    auto body = parse_body({}, end);
    return body;
  }

 private:
  // Parses nodes until a statement whose keyword is in `ends` (returned in `end`, its parser left in stmt_).
  std::vector<NodePtr> parse_body(const std::vector<std::string>& ends, std::string& end) {
    std::vector<NodePtr> out;
    while (i_ < segs_.size()) {
      const Segment& s = segs_[i_++];
      if (s.kind == Segment::kText) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kText;
        n->text = s.text;
        out.push_back(std::move(n));
        continue;
      }
      ExprParser p(tokenize(s.text, s.line), s.line);
      if (s.kind == Segment::kExpr) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kOutput;
        n->exprs.push_back(p.parse());
        p.expect_end();
        out.push_back(std::move(n));
        continue;
      }
      const std::string kw = p.expect_name();
      if (std::find(ends.begin(), ends.end(), kw) != ends.end()) {
        end = kw;
        stmt_ = std::make_unique<ExprParser>(std::move(p));
        return out;
      }
      if (kw == "if") {
        out.push_back(parse_if(p));
      } else if (kw == "for") {
        out.push_back(parse_for(p));
      } else if (kw == "set") {
        out.push_back(parse_set(p));
      } else if (kw == "macro") {
        out.push_back(parse_macro(p));
      } else {
        p.fail("unsupported statement '" + kw + "'");
      }
    }
    if (!ends.empty()) throw TemplateError("template ended inside a block: missing {% " + ends.back() + " %}");
    return out;
  }

  NodePtr parse_if(ExprParser& p) {
    auto n = std::make_unique<Node>();
    n->kind = Node::kIf;
    n->exprs.push_back(p.parse());
    p.expect_end();
    for (;;) {
      std::string end;
      n->bodies.push_back(parse_body({"elif", "else", "endif"}, end));
      if (end == "elif") {
        n->exprs.push_back(stmt_->parse());
        stmt_->expect_end();
      } else if (end == "else") {
        stmt_->expect_end();
        n->bodies.push_back(parse_body({"endif"}, end));
        stmt_->expect_end();
        return n;
      } else {
        stmt_->expect_end();
        return n;
      }
    }
  }

  NodePtr parse_for(ExprParser& p) {
    auto n = std::make_unique<Node>();
    n->kind = Node::kFor;
    n->vars.push_back(p.expect_name());
    while (p.accept_op(",")) n->vars.push_back(p.expect_name());
    if (!p.accept_name("in")) p.fail("expected 'in'");
    n->exprs.push_back(p.parse_no_ternary_if());
    n->exprs.push_back(p.accept_name("if") ? p.parse() : nullptr);
    if (p.accept_name("recursive")) p.fail("recursive loops are not supported");
    p.expect_end();
    std::string end;
    n->bodies.push_back(parse_body({"else", "endfor"}, end));
    if (end == "else") {
      stmt_->expect_end();
      n->bodies.push_back(parse_body({"endfor"}, end));
    }
    stmt_->expect_end();
    return n;
  }

  NodePtr parse_set(ExprParser& p) {
    auto n = std::make_unique<Node>();
    n->kind = Node::kSet;
    n->text = p.expect_name();
    if (p.accept_op(".")) n->attr = p.expect_name();
    if (p.accept_op("=")) {
      n->exprs.push_back(p.parse());
      p.expect_end();
      return n;
    }
    p.expect_end();
    if (!n->attr.empty()) p.fail("block set of an attribute is not supported");
    n->kind = Node::kSetBlock;
    std::string end;
    n->bodies.push_back(parse_body({"endset"}, end));
    stmt_->expect_end();
    return n;
  }

  NodePtr parse_macro(ExprParser& p) {
    auto n = std::make_unique<Node>();
    n->kind = Node::kMacro;
    n->text = p.expect_name();
    p.expect_op("(");
    while (!p.accept_op(")")) {
      n->vars.push_back(p.expect_name());
      n->defaults.push_back(p.accept_op("=") ? p.parse() : nullptr);
      if (!p.accept_op(",")) {
        p.expect_op(")");
        break;
      }
    }
    p.expect_end();
    std::string end;
    n->bodies.push_back(parse_body({"endmacro"}, end));
    stmt_->expect_end();
    return n;
  }

  std::vector<Segment> segs_;
  size_t i_ = 0;
  std::unique_ptr<ExprParser> stmt_;
};

}  // namespace

// ---- Rendering --------------------------------------------------------------------------------------------------

namespace {

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && chars.find(s[b]) != std::string::npos) ++b;
  if (right)
    while (e > b && chars.find(s[e - 1]) != std::string::npos) --e;
  return s.substr(b, e - b);
}

const std::string kSpaces = " \t\n\r\f\v";

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  size_t at = 0;
  while ((at = s.find(from, at)) != std::string::npos) {
    s.replace(at, from.size(), to);
    at += to.size();
  }
  return s;
}

int64_t length_of(const Value& v) {
  if (v.is_string()) return static_cast<int64_t>(v.str().size());
  if (v.is_list()) return static_cast<int64_t>(v.list().size());
  if (v.is_dict()) return static_cast<int64_t>(v.dict().size());
  throw TemplateError("object of type " + v.type_name() + " has no length");
}

// Items a for loop visits: list elements, dict keys, string characters.
List iterate(const Value& v) {
  if (v.is_list()) return v.list();
  if (v.is_dict()) {
    List keys;
    for (const auto& [k, _] : v.dict()) keys.emplace_back(k);
    return keys;
  }
  if (v.is_string()) {
    List chars;
    for (char c : v.str()) chars.emplace_back(std::string(1, c));
    return chars;
  }
  if (v.is_undefined() || v.is_none()) return {};
  throw TemplateError("'" + v.type_name() + "' object is not iterable");
}

class Renderer {
 public:
  explicit Renderer(const Dict& variables) {
    scopes_.emplace_back();
    Dict& globals = scopes_.back();
    globals.emplace_back("raise_exception", Value(std::make_shared<Callable>(Callable{[](auto& args, auto&) -> Value {
                           throw TemplateError(args.empty() ? "raise_exception" : args[0].to_string());
                         }})));
    globals.emplace_back("namespace", Value(std::make_shared<Callable>(Callable{[](auto&, auto& kwargs) {
                           Dict d;
                           for (auto& [k, v] : kwargs) d.emplace_back(k, v);
                           return Value::namespace_of(std::move(d));
                         }})));
    globals.emplace_back("range", Value(std::make_shared<Callable>(Callable{[](auto& args, auto&) {
                           int64_t start = 0, stop = 0, step = 1;
                           if (args.size() == 1) {
                             stop = args[0].as_int();
                           } else if (args.size() >= 2) {
                             start = args[0].as_int();
                             stop = args[1].as_int();
                             if (args.size() > 2) step = args[2].as_int();
                           }
                           if (step == 0) throw TemplateError("range() step must not be zero");
                           List out;
                           for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.emplace_back(i);
                           return Value(std::move(out));
                         }})));
    for (const auto& kv : variables) globals.push_back(kv);
  }

  void render(const std::vector<NodePtr>& body, std::string& out) {
    for (const NodePtr& n : body) render(*n, out);
  }

 private:
  Value lookup(const std::string& name) const {
    for (auto s = scopes_.rbegin(); s != scopes_.rend(); ++s)
      for (const auto& [k, v] : *s)
        if (k == name) return v;
    return Value();
  }
  void assign(const std::string& name, Value v) {
    for (auto& [k, old] : scopes_.back())
      if (k == name) {
        old = std::move(v);
        return;
      }
    scopes_.back().emplace_back(name, std::move(v));
  }

  void render(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::kText:
        out += n.text;
        return;
      case Node::kOutput:
        out += eval(*n.exprs[0]).to_string();
        return;
      case Node::kIf:
        for (size_t b = 0; b < n.bodies.size(); ++b) {
          if (b >= n.exprs.size() || eval(*n.exprs[b]).as_bool()) {
            render(n.bodies[b], out);
            return;
          }
        }
        return;
      case Node::kFor:
        render_for(n, out);
        return;
      case Node::kSet: {
        Value v = eval(*n.exprs[0]);
        if (n.attr.empty()) {
          assign(n.text, std::move(v));
        } else {
          const Value ns = lookup(n.text);
          if (!ns.is_namespace()) throw TemplateError("cannot set an attribute of '" + n.text + "' (not a namespace)");
          ns.set(n.attr, std::move(v));
        }
        return;
      }
      case Node::kSetBlock: {
        std::string captured;
        render(n.bodies[0], captured);
        assign(n.text, Value(std::move(captured)));
        return;
      }
      case Node::kMacro:
        assign(n.text, make_macro(n));
        return;
    }
  }

  Value make_macro(const Node& n) {
    return Value(std::make_shared<Callable>(Callable{[this, &n](auto& args, auto& kwargs) {
      Dict frame;
      for (size_t i = 0; i < n.vars.size(); ++i) {
        Value v;
        if (i < args.size()) {
          v = args[i];
        } else if (n.defaults[i]) {
          v = eval(*n.defaults[i]);
        }
        for (auto& [k, kv] : kwargs)
          if (k == n.vars[i]) v = kv;
        frame.emplace_back(n.vars[i], std::move(v));
      }
      scopes_.push_back(std::move(frame));
      std::string out;
      try {
        render(n.bodies[0], out);
      } catch (...) {
        scopes_.pop_back();
        throw;
      }
      scopes_.pop_back();
      return Value(std::move(out));
    }}));
  }

  void render_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.exprs[0]);
    List items;
    const bool dict_items = seq.is_dict() && n.vars.size() == 2;
    for (const Value& item : iterate(seq)) {
      Value bound = dict_items ? Value(List{item, seq.get(item.str())}) : item;
      if (n.exprs[1]) {
        scopes_.emplace_back();
        bind(n.vars, bound);
        const bool keep = eval(*n.exprs[1]).as_bool();
        scopes_.pop_back();
        if (!keep) continue;
      }
      items.push_back(std::move(bound));
    }
    if (items.empty()) {
      if (n.bodies.size() > 1) render(n.bodies[1], out);
      return;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      scopes_.emplace_back();
      bind(n.vars, items[static_cast<size_t>(i)]);
      Dict loop{{"index", Value(i + 1)},
                {"index0", Value(i)},
                {"revindex", Value(len - i)},
                {"revindex0", Value(len - i - 1)},
                {"first", Value(i == 0)},
                {"last", Value(i == len - 1)},
                {"length", Value(len)},
                {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value()},
                {"nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value()}};
      scopes_.back().emplace_back("loop", Value(std::move(loop)));
      try {
        render(n.bodies[0], out);
      } catch (...) {
        scopes_.pop_back();
        throw;
      }
      scopes_.pop_back();
    }
  }

  void bind(const std::vector<std::string>& vars, const Value& item) {
    if (vars.size() == 1) {
      scopes_.back().emplace_back(vars[0], item);
      return;
    }
    if (!item.is_list() || item.list().size() != vars.size())
      throw TemplateError("cannot unpack " + item.type_name() + " into " + std::to_string(vars.size()) + " names");
    for (size_t i = 0; i < vars.size(); ++i) scopes_.back().emplace_back(vars[i], item.list()[i]);
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::kLiteral:
        return e.literal;
      case Expr::kName:
        return lookup(e.name);
      case Expr::kAttr: {
        const Value obj = eval(*e.kids[0]);
        if (obj.is_dict()) return obj.get(e.name);
        return Value();  // methods are resolved by kCall; anything else is undefined
      }
      case Expr::kItem:
        return item(eval(*e.kids[0]), eval(*e.kids[1]));
      case Expr::kSlice:
        return slice(e);
      case Expr::kCall:
        return call(e);
      case Expr::kFilter:
        return filter(e);
      case Expr::kTest:
        return Value(test(e) != e.negated);
      case Expr::kNot:
        return Value(!eval(*e.kids[0]).as_bool());
      case Expr::kNeg: {
        const Value v = eval(*e.kids[0]);
        return v.is_float() ? Value(-v.as_double()) : Value(-v.as_int());
      }
      case Expr::kAnd: {
        Value l = eval(*e.kids[0]);
        return l.as_bool() ? eval(*e.kids[1]) : l;
      }
      case Expr::kOr: {
        Value l = eval(*e.kids[0]);
        return l.as_bool() ? l : eval(*e.kids[1]);
      }
      case Expr::kTernary:
        if (eval(*e.kids[1]).as_bool()) return eval(*e.kids[0]);
        return e.kids[2] ? eval(*e.kids[2]) : Value();
      case Expr::kList: {
        List l;
        for (const auto& k : e.kids) l.push_back(eval(*k));
        return Value(std::move(l));
      }
      case Expr::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
          const Value k = eval(*e.kids[i]);
          Value v = eval(*e.kids[i + 1]);
          d.emplace_back(k.to_string(), std::move(v));
        }
        return Value(std::move(d));
      }
      case Expr::kBinary:
        return binary(e.name, eval(*e.kids[0]), eval(*e.kids[1]));
    }
    return Value();
  }

  static Value item(const Value& obj, const Value& key) {
    if (obj.is_dict()) return obj.get(key.to_string());
    if (obj.is_list() || obj.is_string()) {
      const int64_t n = length_of(obj);
      int64_t i = key.as_int();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value();
      if (obj.is_string()) return Value(std::string(1, obj.str()[static_cast<size_t>(i)]));
      return obj.list()[static_cast<size_t>(i)];
    }
    return Value();
  }

  Value slice(const Expr& e) {
    const Value obj = eval(*e.kids[0]);
    const int64_t n = length_of(obj);
    const int64_t step = e.kids[3] ? eval(*e.kids[3]).as_int() : 1;
    if (step == 0) throw TemplateError("slice step cannot be zero");
    auto clamp = [&](const ExprPtr& x, int64_t dflt) {
      if (!x) return dflt;
      int64_t v = eval(*x).as_int();
      if (v < 0) v += n;
      return step > 0 ? std::clamp<int64_t>(v, 0, n) : std::clamp<int64_t>(v, -1, n - 1);
    };
    const int64_t start = clamp(e.kids[1], step > 0 ? 0 : n - 1);
    const int64_t stop = clamp(e.kids[2], step > 0 ? n : -1);
    if (obj.is_string()) {
      std::string s;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) s += obj.str()[static_cast<size_t>(i)];
      return Value(std::move(s));
    }
    List l;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) l.push_back(obj.list()[static_cast<size_t>(i)]);
    return Value(std::move(l));
  }

  void eval_args(const Expr& e, size_t first, Callable::Args& args, Callable::Kwargs& kwargs) {
    const size_t n_pos = e.kids.size() - first - e.kw_names.size();
    for (size_t i = 0; i < n_pos; ++i) args.push_back(eval(*e.kids[first + i]));
    for (size_t i = 0; i < e.kw_names.size(); ++i) kwargs.emplace_back(e.kw_names[i], eval(*e.kids[first + n_pos + i]));
  }

  Value call(const Expr& e) {
    Callable::Args args;
    Callable::Kwargs kwargs;
    eval_args(e, 1, args, kwargs);
    const Expr& callee = *e.kids[0];
    if (callee.kind == Expr::kAttr) {
      const Value obj = eval(*callee.kids[0]);
      if (!(obj.is_dict() && obj.get(callee.name).is_callable())) return method(obj, callee.name, args);
    }
    const Value f = eval(callee);
    if (!f.is_callable())
      throw TemplateError("'" + (callee.name.empty() ? f.type_name() : callee.name) + "' is not callable");
    return f.callable().fn(args, kwargs);
  }

  static std::string arg_str(const Callable::Args& args, size_t i, const std::string& dflt) {
    return i < args.size() && !args[i].is_none() ? args[i].str() : dflt;
  }

  static Value method(const Value& obj, const std::string& name, Callable::Args& args) {
    if (obj.is_string()) {
      const std::string& s = obj.str();
      if (name == "strip") return Value(strip_chars(s, arg_str(args, 0, kSpaces), true, true));
      if (name == "lstrip") return Value(strip_chars(s, arg_str(args, 0, kSpaces), true, false));
      if (name == "rstrip") return Value(strip_chars(s, arg_str(args, 0, kSpaces), false, true));
      if (name == "startswith") return Value(s.starts_with(arg_str(args, 0, "")));
      if (name == "endswith") return Value(s.ends_with(arg_str(args, 0, "")));
      if (name == "upper") return Value(upper(s));
      if (name == "lower") return Value(lower(s));
      if (name == "title" || name == "capitalize") return capitalize(s, name == "title");
      if (name == "replace") return Value(replace_all(s, arg_str(args, 0, ""), arg_str(args, 1, "")));
      if (name == "find") return Value(static_cast<int64_t>(s.find(arg_str(args, 0, ""))));
      if (name == "split") {
        List parts;
        const std::string sep = arg_str(args, 0, "");
        if (sep.empty()) {
          std::istringstream in(s);
          std::string w;
          while (in >> w) parts.emplace_back(w);
        } else {
          size_t at = 0, next;
          while ((next = s.find(sep, at)) != std::string::npos) {
            parts.emplace_back(s.substr(at, next - at));
            at = next + sep.size();
          }
          parts.emplace_back(s.substr(at));
        }
        return Value(std::move(parts));
      }
    } else if (obj.is_dict()) {
      if (name == "items" || name == "keys" || name == "values") {
        List out;
        for (const auto& [k, v] : obj.dict()) {
          if (name == "items") {
            out.emplace_back(List{Value(k), v});
          } else {
            out.push_back(name == "keys" ? Value(k) : v);
          }
        }
        return Value(std::move(out));
      }
      if (name == "get") {
        const Value v = args.empty() ? Value() : obj.get(args[0].to_string());
        return v.is_undefined() ? (args.size() > 1 ? args[1] : Value(nullptr)) : v;
      }
    } else if (obj.is_list()) {
      if (name == "append") {
        obj.list().push_back(args.empty() ? Value(nullptr) : args[0]);
        return Value(nullptr);
      }
    }
    throw TemplateError("unsupported method '" + name + "' on " + obj.type_name());
  }

  static Value capitalize(const std::string& s, bool every_word) {
    std::string out = lower(s);
    bool start = true;
    for (char& c : out) {
      if (start && std::isalpha(static_cast<unsigned char>(c))) {
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        start = false;
      }
      if (every_word && std::isspace(static_cast<unsigned char>(c))) start = true;
    }
    return Value(std::move(out));
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.kids[0]);
    Callable::Args args;
    Callable::Kwargs kwargs;
    eval_args(e, 1, args, kwargs);
    const std::string& f = e.name;
    if (f == "trim") return Value(strip_chars(v.to_string(), kSpaces, true, true));
    if (f == "length" || f == "count") return Value(length_of(v));
    if (f == "upper") return Value(upper(v.to_string()));
    if (f == "lower") return Value(lower(v.to_string()));
    if (f == "capitalize" || f == "title") return capitalize(v.to_string(), f == "title");
    if (f == "string") return Value(v.to_string());
    if (f == "int") return Value(v.is_string() ? static_cast<int64_t>(std::stoll(v.str())) : v.as_int());
    if (f == "float") return Value(v.is_string() ? std::stod(v.str()) : v.as_double());
    if (f == "safe" || f == "e" || f == "escape") return v;  // chat templates render text, not HTML
    if (f == "list") return Value(iterate(v));
    if (f == "items") return method(v, "items", args);
    if (f == "first") return v.is_list() && !v.list().empty() ? v.list().front() : item(v, Value(0));
    if (f == "last") return v.is_list() && !v.list().empty() ? v.list().back() : item(v, Value(-1));
    if (f == "replace") return Value(replace_all(v.to_string(), arg_str(args, 0, ""), arg_str(args, 1, "")));
    if (f == "default" || f == "d") {
      const bool boolean = args.size() > 1 && args[1].as_bool();
      if (v.is_undefined() || (boolean && !v.as_bool())) return args.empty() ? Value("") : args[0];
      return v;
    }
    if (f == "join") {
      const std::string sep = arg_str(args, 0, "");
      std::string out;
      bool first = true;
      for (const Value& x : iterate(v)) {
        out += (first ? "" : sep) + x.to_string();
        first = false;
      }
      return Value(std::move(out));
    }
    if (f == "tojson") {
      int indent = -1;
      for (auto& [k, x] : kwargs)
        if (k == "indent") indent = static_cast<int>(x.as_int());
      if (!args.empty()) indent = static_cast<int>(args[0].as_int());
      return Value(v.to_json().dump(indent));
    }
    throw TemplateError("unsupported filter '" + f + "'");
  }

  bool test(const Expr& e) {
    const Value v = eval(*e.kids[0]);
    const std::string& t = e.name;
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.is_none();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number();
    if (t == "integer") return v.is_int();
    if (t == "float") return v.is_float();
    if (t == "boolean") return v.is_bool();
    if (t == "true") return v.is_bool() && v.as_bool();
    if (t == "false") return v.is_bool() && !v.as_bool();
    if (t == "mapping") return v.is_dict();
    if (t == "sequence" || t == "iterable") return v.is_list() || v.is_string() || v.is_dict();
    if (t == "callable") return v.is_callable();
    if (t == "odd" || t == "even") return (v.as_int() % 2 != 0) == (t == "odd");
    if (t == "eq" || t == "equalto" || t == "sameas") return e.kids.size() > 1 && v == eval(*e.kids[1]);
    throw TemplateError("unsupported test '" + t + "'");
  }

  static Value binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return Value(a == b);
    if (op == "!=") return Value(!(a == b));
    if (op == "~") return Value(a.to_string() + b.to_string());
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is_string()) {
        found = b.str().find(a.to_string()) != std::string::npos;
      } else if (b.is_dict()) {
        found = !b.get(a.to_string()).is_undefined();
      } else if (b.is_list()) {
        found = std::find(b.list().begin(), b.list().end(), a) != b.list().end();
      } else if (!b.is_undefined() && !b.is_none()) {
        throw TemplateError("'in' needs a string, list or mapping");
      }
      return Value(found != (op == "not in"));
    }
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      int cmp;
      if (a.is_string() && b.is_string()) {
        cmp = a.str().compare(b.str());
      } else {
        const double x = a.as_double(), y = b.as_double();
        cmp = x < y ? -1 : x > y ? 1 : 0;
      }
      if (op == "<") return Value(cmp < 0);
      if (op == "<=") return Value(cmp <= 0);
      if (op == ">") return Value(cmp > 0);
      return Value(cmp >= 0);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
      if (a.is_list() && b.is_list()) {
        List l = a.list();
        l.insert(l.end(), b.list().begin(), b.list().end());
        return Value(std::move(l));
      }
      if (a.is_string() || b.is_string()) throw TemplateError("cannot add " + a.type_name() + " and " + b.type_name());
    }
    if (op == "*" && a.is_string() && b.is_int()) {
      std::string s;
      for (int64_t i = 0; i < b.as_int(); ++i) s += a.str();
      return Value(std::move(s));
    }
    const bool ints = a.is_int() && b.is_int();
    if (op == "+") return ints ? Value(a.as_int() + b.as_int()) : Value(a.as_double() + b.as_double());
    if (op == "-") return ints ? Value(a.as_int() - b.as_int()) : Value(a.as_double() - b.as_double());
    if (op == "*") return ints ? Value(a.as_int() * b.as_int()) : Value(a.as_double() * b.as_double());
    if (op == "/") {
      if (b.as_double() == 0.0) throw TemplateError("division by zero");
      return Value(a.as_double() / b.as_double());
    }
    if (op == "//" || op == "%") {
      if (!ints) throw TemplateError("'" + op + "' needs integers");
      const int64_t y = b.as_int();
      if (y == 0) throw TemplateError("division by zero");
      const int64_t x = a.as_int();
      int64_t q = x / y;
      if ((x % y != 0) && ((x < 0) != (y < 0))) --q;  // Python floors
      return op == "//" ? Value(q) : Value(x - q * y);
    }
    throw TemplateError("unsupported operator '" + op + "'");
  }

  std::vector<Dict> scopes_;
};

}  // namespace

Template::Template(std::string_view source) : body_(TemplateParser(segment(source)).parse_all()) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Dict& variables) const {
  Renderer r(variables);
  std::string out;
  r.render(body_, out);
  return out;
}

}  // namespace tessera::server::jinja
