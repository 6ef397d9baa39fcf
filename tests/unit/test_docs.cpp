// The field tables drive the docs: every field of every options struct (its xtr name and its x-transformers keyword)
// is documented in docs/policies.md, so a knob added to a table without a line of documentation fails here.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>
#include <string>

#include "xtr/xtr.hpp"

#ifndef XTR_SOURCE_DIR
#define XTR_SOURCE_DIR "."
#endif

namespace test_docs {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;

namespace {

std::string policies_doc() {
  std::ifstream in(std::string(XTR_SOURCE_DIR) + "/docs/policies.md");
  REQUIRE(in.good());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

template <class S>
void check_documented(const std::string& doc, const char* owner) {
  for_each_field<S>([&](const auto& f) {
    INFO(owner << " field " << f.name << " (x-transformers keyword '" << f.keyword << "') in docs/policies.md");
    CHECK(doc.find(std::string(f.name)) != std::string::npos);
    if (!f.keyword.empty()) CHECK(doc.find("`" + std::string(f.keyword) + "`") != std::string::npos);
    CHECK_FALSE(f.doc.empty());
  });
}

}  // namespace

TEST_CASE("every field of every options struct is documented in docs/policies.md", "[docs]") {
  const std::string doc = policies_doc();
  check_documented<TransformerConfig>(doc, "TransformerConfig");
  check_documented<LayersConfig>(doc, "LayersConfig");
  const LayersConfig layers;
  LayersConfig::for_each_policy_options(layers, [&](std::string_view key, const auto& options) {
    check_documented<std::remove_cvref_t<decltype(options)>>(doc, std::string(key).c_str());
  });
  // and every policy a run-time slot can name
  for (const auto& name : {Positions::names(), Norms::names(), FeedForwards::names(), ScoreBiases::names()}) {
    std::stringstream list(name);
    for (std::string policy; std::getline(list, policy, ',');) {
      if (policy.starts_with(" ")) policy.erase(0, 1);
      INFO("policy " << policy);
      CHECK(doc.find(policy) != std::string::npos);
    }
  }
}

}  // namespace test_docs
