#pragma once
// Flags of the example programs: `--name value` pairs bound to variables, `--help`, and errors that name the flag and
// the value, then print the usage text and exit with status 2.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <set>
#include <string>
#include <type_traits>
#include <variant>

namespace examples {

class CommandLine {
 public:
  using Target = std::variant<long*, int*, double*, std::string*>;

  /// `program` prefixes every message; `summary` is what --help prints above the usage text.
  CommandLine(const char* program, const char* summary, void (*usage_text)(std::FILE*))
      : program_(program), summary_(summary), usage_text_(usage_text) {}

  CommandLine& bind(const std::string& flag, Target target) {
    targets_[flag] = target;
    return *this;
  }
  /// A flag without a value: present = true.
  CommandLine& bind_switch(const std::string& flag, bool* target) {
    switches_[flag] = target;
    return *this;
  }

  /// Every argument must be a bound flag followed by a value that parses completely.
  void parse(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag == "--help" || flag == "-h") {
        std::printf("%s: %s\n", program_, summary_);
        usage_text_(stdout);
        std::exit(0);
      }
      if (const auto s = switches_.find(flag); s != switches_.end()) {
        *s->second = true;
        given_.insert(flag);
        continue;
      }
      if (i + 1 >= argc) fail("missing value after " + flag);
      const std::string value = argv[++i];
      const auto it = targets_.find(flag);
      if (it == targets_.end()) fail("unknown flag " + flag);
      given_.insert(flag);
      try {
        std::size_t used = value.size();
        std::visit(
            [&](auto* target) {
              using T = std::remove_pointer_t<decltype(target)>;
              if constexpr (std::is_same_v<T, long>) *target = std::stol(value, &used);
              else if constexpr (std::is_same_v<T, int>) *target = std::stoi(value, &used);
              else if constexpr (std::is_same_v<T, double>) {
                *target = std::stod(value, &used);
                if (!std::isfinite(*target)) throw std::invalid_argument(value);  // inf, nan: never a setting
              }
              else *target = value;
            },
            it->second);
        if (used != value.size()) throw std::invalid_argument(value);
      } catch (const std::logic_error&) {
        fail("bad value '" + value + "' for " + flag);
      }
    }
  }

  /// Whether parse() saw `flag` on the command line (not only its default).
  [[nodiscard]] bool given(const std::string& flag) const { return given_.count(flag) != 0; }

  /// Prints "<program>: <why>" and the usage text to stderr; exits with status 2.
  [[noreturn]] void fail(const std::string& why) const {
    std::fprintf(stderr, "%s: %s\n", program_, why.c_str());
    usage_text_(stderr);
    std::exit(2);
  }

 private:
  const char* program_;
  const char* summary_;
  void (*usage_text_)(std::FILE*);
  std::map<std::string, Target> targets_;
  std::map<std::string, bool*> switches_;
  mutable std::set<std::string> given_;  // the flags parse() saw
};

}  // namespace examples
