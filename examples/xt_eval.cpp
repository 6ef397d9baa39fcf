// Evaluates an x-transformers model from its JSON description and safetensors weights:
//   xt_eval --config C.json --weights W.safetensors --tokens T.json [--prompt-len 8] [--new-tokens 16]
//           [--export OUT.safetensors] [--ignore PREFIX,PREFIX...]
// C.json describes one of
//   a Decoder   TransformerWrapper keywords with "attn_layers": {"type": "Decoder", ...}
//   an Encoder  the same with "type": "Encoder"
//   an XTransformer  XTransformer keywords (dim, tie_token_emb, enc_*, dec_*; no attn_layers)
// For a Decoder or an Encoder, T.json is a list of equal-length token rows; the program prints one JSON object:
//   loss        x-transformers' AutoregressiveWrapper(net)(rows): the cross-entropy of net(row)[:-1] against
//               row[1:], mean over every non-ignored target (for a Decoder net(row)[:-1] = net(row[:-1]))
//   logits_sum  the sum of every logit of net(row[:-1]) over all rows (eval mode)
//   greedy      the temperature-0 continuation of row 0's first --prompt-len tokens (KV cache on); null for an
//               Encoder (a bidirectional stack cannot decode)
//   greedy_uncached  the same continuation recomputed without the KV cache (Decoder only)
// --fixture F.safetensors (a Decoder; F may be the weights file itself): a golden fixture as tools/xt_fixture.py writes
// them (tests/fixtures/README.md: fixture.tokens, fixture.logits, fixture.loss, fixture.prompt, fixture.greedy and
// grad.<parameter>) is checked the way the golden tests check it, and the object gains
//   fixture     {"logits_error", "loss_error", "gradient_error", "worst_gradient", "greedy_cached",
//               "greedy_uncached", "passed"}: logits max |ours − ref| / max(|ref|, 1) <= 1e-4, loss relative <= 1e-4,
//               every gradient tensor max |ours − ref| / max |ref| <= 1e-4 (a tensor that is 0 up to fp32 noise
//               against the largest), greedy tokens exact with and without the cache; exit status 1 unless passed.
//               --tokens may then be left out (fixture.tokens), and --prompt-len / --new-tokens are the fixture's.
// For an XTransformer, T.json is an object {"src": rows, "tgt": rows, "src_mask": rows of true/false or 1/0}
// (src_mask optional, equal batch for all three) and the object printed holds
//   loss        model(src, tgt, src_mask)
//   logits_sum  the sum of the decoder's logits on tgt[:, :-1] (ignore_index fed as pad_value) attending to the
//               encoder's output for src (eval mode)
//   greedy      model.generate(src[:1], tgt[:1, :prompt_len], new_tokens, src_mask[:1]) at temperature 0 (new tokens)
// Every description is built as one run-time model type per kind (x_transformers::AnyDecoder, AnyEncoder and
// XTransformer<AnyEncoder, AnyDecoder>): each position, norm, feed-forward and score bias is chosen when the model is
// built and every op dispatches to its policy's kernel, so any supported combination of keywords loads (a keyword or
// combination xtr does not support is an error naming it).
// The JSON object is printed last, after the export: it appears only when everything succeeded.
// --export writes the model back under x-transformers' names (with its buffers) for load_state_dict(strict=True).
// --ignore skips tensors whose names start with the given prefixes (e.g. a golden fixture's "fixture.,grad.");
// every other tensor must be a parameter or buffer of the model.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "xtr/io/x_transformers.hpp"
#include "xtr/xtr.hpp"

namespace {

namespace xt = xtr::x_transformers;

using xtr::XTransformer;

/// The XTransformer type every encoder-decoder description is built as.
using AnyXTransformer = XTransformer<xt::AnyEncoder, xt::AnyDecoder>;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw xtr::Error("xtr: cannot read '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

/// A JSON list of equal-length rows of integers; `what` names the value in errors ("T.json: src").
xtr::TokenBatch token_rows(const xtr::json::Value& rows, const std::string& what) {
  xtr::require(rows.is_array() && rows.size() > 0, what, ": expected a non-empty JSON list of token rows, got ",
               rows.dump().substr(0, 80));
  xtr::TokenBatch tokens;
  tokens.batch = xtr::Index(rows.size());
  for (std::size_t b = 0; b < rows.size(); ++b) {
    const auto& row = rows.at(b);
    xtr::require(row.is_array(), what, ": row ", b, " is not a list");
    if (b == 0) tokens.length = xtr::Index(row.size());
    xtr::require(xtr::Index(row.size()) == tokens.length, what, ": row ", b, " has ", row.size(),
                 " tokens, row 0 has ", tokens.length);
    for (std::size_t t = 0; t < row.size(); ++t) {
      const auto& id = row.at(t);
      xtr::require(id.is_number(), what, "[", b, "][", t, "] is ", id.dump(), ", not a token id");
      const std::int64_t value = id.as_int();
      xtr::require(value >= INT32_MIN && value <= INT32_MAX, what, "[", b, "][", t, "] = ", value,
                   " is outside the 32-bit token id range");
      tokens.data.push_back(std::int32_t(value));
    }
  }
  xtr::require(tokens.length > 0, what, ": rows are empty");
  return tokens;
}

/// A JSON list of rows of true/false or 1/0 shaped (batch, length) like the tokens it masks.
xtr::Mask mask_rows(const xtr::json::Value& rows, const std::string& what, xtr::Index batch, xtr::Index length,
                    const std::string& of) {
  xtr::require(rows.is_array(), what, ": expected a list of rows of true/false (or 1/0), got ",
               rows.dump().substr(0, 80));
  xtr::require(xtr::Index(rows.size()) == batch, what, ": batch ", rows.size(), " != ", of, " batch ", batch);
  xtr::Mask mask(batch, length);
  for (xtr::Index b = 0; b < batch; ++b) {
    const auto& row = rows.at(std::size_t(b));
    xtr::require(row.is_array(), what, ": row ", b, " is not a list");
    xtr::require(xtr::Index(row.size()) == length, what, ": row ", b, " has ", row.size(), " entries, ", of,
                 " rows have ", length);
    for (xtr::Index t = 0; t < length; ++t) {
      const auto& v = row.at(std::size_t(t));
      const bool ok = v.is_bool() || (v.is_number() && (v.as_number() == 0 || v.as_number() == 1));
      xtr::require(ok, what, "[", b, "][", t, "] is ", v.dump(), ", expected true/false or 1/0");
      mask(b, t) = v.is_bool() ? v.as_bool() : v.as_number() != 0;
    }
  }
  return mask;
}

/// The encoder-decoder's tokens: {"src": rows, "tgt": rows, "src_mask": rows (optional)}.
struct PairedTokens {
  xtr::TokenBatch src, tgt;
  xtr::Mask src_mask;  // empty: every source token is real
};

PairedTokens read_paired_tokens(const std::string& path) {
  const auto root = xtr::json::parse(read_text(path));
  xtr::require(root.is_object(), path, ": an XTransformer needs a JSON object {\"src\": rows, \"tgt\": rows, "
               "\"src_mask\": rows (optional)}, got ", root.is_array() ? "a list" : root.dump().substr(0, 80));
  for (const auto& [key, value] : root.as_object())
    xtr::require(key == "src" || key == "tgt" || key == "src_mask", path, ": unknown key \"", key,
                 "\" (expected src, tgt, src_mask)");
  for (const char* key : {"src", "tgt"})
    xtr::require(root.find(key) != nullptr, path, ": missing \"", key, "\" (an XTransformer needs src and tgt rows)");
  PairedTokens p;
  p.src = token_rows(root.at("src"), path + ": src");
  p.tgt = token_rows(root.at("tgt"), path + ": tgt");
  xtr::require(p.tgt.batch == p.src.batch, path, ": tgt batch ", p.tgt.batch, " != src batch ", p.src.batch,
               " (one tgt row per src row)");
  xtr::require(p.tgt.length >= 2, path, ": tgt rows need >= 2 tokens (the loss shifts by one), got ", p.tgt.length);
  if (const auto* m = root.find("src_mask"))
    p.src_mask = mask_rows(*m, path + ": src_mask", p.src.batch, p.src.length, "src");
  return p;
}

/// Whether a description holds XTransformer keywords (enc_* / dec_*, no attn_layers).
bool is_xtransformer(const xtr::json::Value& root) {
  if (!root.is_object() || root.find("attn_layers")) return false;
  for (const auto& [key, value] : root.as_object())
    if (key.starts_with("enc_") || key.starts_with("dec_")) return true;
  return false;
}

/// The first `batch` rows, first `length` tokens of each.
xtr::TokenBatch prefix(const xtr::TokenBatch& tokens, xtr::Index batch, xtr::Index length) {
  xtr::TokenBatch out(batch, length);
  for (xtr::Index b = 0; b < batch; ++b)
    std::copy_n(tokens.data.begin() + b * tokens.length, length, out.data.begin() + b * length);
  return out;
}

/// `tokens` as a network's input: ids equal to ignore_index fed as pad_value (as AutoregressiveWrapper does).
xtr::TokenBatch as_input(xtr::TokenBatch tokens, std::int32_t ignore_index, std::int32_t pad_value) {
  std::replace(tokens.data.begin(), tokens.data.end(), ignore_index, pad_value);
  return tokens;
}

template <class Matrix>
double sum_of(const Matrix& m) {
  double sum = 0;
  for (xtr::Index i = 0; i < m.size(); ++i) sum += double(m.data()[i]);
  return sum;
}

/// Mean over the targets tokens(b, t + 1) != ignore_index of −log softmax(logits of (b, t))[target], t < T − 1, in
/// double with a max-shifted log-sum-exp; logits is (B·T, V).
template <class Matrix>
double next_token_loss(const Matrix& logits, const xtr::TokenBatch& tokens, std::int32_t ignore_index) {
  const xtr::Index T = tokens.length, V = logits.cols();
  double total = 0;
  xtr::Index counted = 0;
  for (xtr::Index b = 0; b < tokens.batch; ++b)
    for (xtr::Index t = 0; t + 1 < T; ++t) {
      const std::int32_t target = tokens(b, t + 1);
      if (target == ignore_index) continue;
      const auto* row = logits.data() + (b * T + t) * V;
      double top = row[0];
      for (xtr::Index v = 1; v < V; ++v) top = std::max(top, double(row[v]));
      double sum = 0;
      for (xtr::Index v = 0; v < V; ++v) sum += std::exp(double(row[v]) - top);
      total += top + std::log(sum) - double(row[target]);
      ++counted;
    }
  xtr::require(counted > 0, "every target is ignore_index ", ignore_index, ": no loss to compute");
  return total / double(counted);
}

std::string token_list(const xtr::TokenBatch& row) {
  std::string s = "[";
  for (xtr::Index t = 0; t < row.length; ++t) s += (t ? ", " : "") + std::to_string(row(0, t));
  return s + "]";
}

/// The printed object; `extra` (", \"key\": value" pairs) goes before the closing brace.
void print_result(double loss, double logits_sum, const xtr::TokenBatch* greedy, const std::string& extra = "") {
  std::printf("{\"loss\": %.17g, \"logits_sum\": %.17g, \"greedy\": %s%s}\n", loss, logits_sum,
              greedy ? token_list(*greedy).c_str() : "null", extra.c_str());
}

struct Options {
  std::string config, weights, tokens, export_path, ignore, fixture;
  long prompt_len = 8, new_tokens = 16;
};

/// A golden fixture's tensors (fixture.* and grad.*), read once.
struct Fixture {
  xtr::safetensors::File file;
  [[nodiscard]] const xtr::safetensors::TensorRecord& at(const std::string& name) const {
    for (const auto& t : file.tensors)
      if (t.name == name) return t;
    throw xtr::Error("--fixture: no tensor '" + name + "' (tests/fixtures/README.md lists what a fixture holds)");
  }
  [[nodiscard]] xtr::TokenBatch tokens(const std::string& name) const {
    const auto& t = at(name);
    xtr::require(t.shape.size() == 2, "--fixture: '", name, "' must be 2-D (rows, tokens)");
    xtr::TokenBatch out(xtr::Index(t.shape[0]), xtr::Index(t.shape[1]));
    out.data = xtr::safetensors::to_vector<std::int32_t>(t);  // I64 or I32; a value outside int32 is an error
    for (const std::int32_t id : out.data)
      xtr::require(id >= 0, "--fixture: '", name, "' holds ", id, ", not a token id");
    return out;
  }
};

/// The golden comparison of tests/unit/test_golden_options.cpp on a causal model: logits, loss, every gradient,
/// greedy with and without the cache. Returns the JSON members to print; `passed` says whether all held.
template <class Model>
std::string check_fixture(Model& model, const Fixture& f, bool& passed) {
  constexpr double tolerance = 1e-4;
  const xtr::TokenBatch tokens = f.tokens("fixture.tokens");
  xtr::require(tokens.length >= 2, "--fixture: fixture.tokens rows need >= 2 tokens");
  model.eval();
  const auto expected_logits = xtr::safetensors::to_vector<double>(f.at("fixture.logits"));
  const auto logits = model.net.forward(prefix(tokens, tokens.batch, tokens.length - 1));
  xtr::require(logits.size() == xtr::Index(expected_logits.size()), "--fixture: fixture.logits holds ",
               expected_logits.size(), " values, the model gives ", logits.size());
  double logits_error = 0;
  for (xtr::Index i = 0; i < logits.size(); ++i)
    logits_error = std::max(logits_error, std::abs(double(logits.data()[i]) - expected_logits[std::size_t(i)]) /
                                              std::max(std::abs(expected_logits[std::size_t(i)]), 1.0));
  model.train();
  auto& params = model.parameters();
  params.zero_grad();
  const auto loss = model(tokens);
  const double expected_loss = xtr::safetensors::to_vector<double>(f.at("fixture.loss")).at(0);
  const double loss_error = std::abs(loss.item() - expected_loss) / std::max(std::abs(expected_loss), 1e-30);
  loss.backward();
  std::map<std::string, std::vector<double>> reference;  // parameter name → its grad.<name>, read once
  double largest = 0;
  for (const auto& t : f.file.tensors)
    if (t.name.starts_with("grad.")) {
      auto& g = reference[t.name.substr(5)] = xtr::safetensors::to_vector<double>(t);
      for (double v : g) largest = std::max(largest, std::abs(v));
    }
  double gradient_error = 0;
  std::string worst, missing;
  for (const auto& e : params.entries()) {
    const auto found = reference.find(e.name);
    if (found == reference.end()) {
      missing += (missing.empty() ? "" : ", ") + e.name;
      continue;
    }
    const std::vector<double>& expected = found->second;
    xtr::require(xtr::Index(expected.size()) == e.shape.numel(), "--fixture: grad.", e.name, " holds ",
                 expected.size(), " values, the parameter ", e.shape.numel());
    double diff = 0, scale = 0;
    for (xtr::Index i = 0; i < e.shape.numel(); ++i) {
      diff = std::max(diff, std::abs(double(params.grads()[e.offset + i]) - expected[std::size_t(i)]));
      scale = std::max(scale, std::abs(expected[std::size_t(i)]));
    }
    if (scale < 1e-4 * largest) scale = largest;  // 0 up to x-transformers' fp32 noise
    const double err = scale > 0 ? diff / scale : diff;
    if (err >= gradient_error) gradient_error = err, worst = e.name;
  }
  xtr::require(missing.empty(), "--fixture: no grad.<name> for ", missing);
  model.eval();
  const xtr::TokenBatch prompt = f.tokens("fixture.prompt"), greedy = f.tokens("fixture.greedy");
  const bool cached = model.generate(prompt, greedy.length, {.temperature = 0}).data == greedy.data;
  const bool uncached =
      model.generate(prompt, greedy.length, {.temperature = 0, .cache_kv = false}).data == greedy.data;
  passed = logits_error <= tolerance && loss_error <= tolerance && gradient_error <= tolerance && cached && uncached;
  char text[512];
  std::snprintf(text, sizeof text,
                ", \"fixture\": {\"logits_error\": %.3g, \"loss_error\": %.3g, \"gradient_error\": %.3g, "
                "\"worst_gradient\": \"%s\", \"greedy_cached\": %s, \"greedy_uncached\": %s, \"passed\": %s}",
                logits_error, loss_error, gradient_error, worst.c_str(), cached ? "true" : "false",
                uncached ? "true" : "false", passed ? "true" : "false");
  return text;
}

void usage_text(std::FILE* out) {
  std::fprintf(out,
               "usage: xt_eval --config C.json --weights W.safetensors --tokens T.json [--prompt-len 8] "
               "[--new-tokens 16] [--export OUT.safetensors] [--ignore PREFIX,PREFIX...]\n"
               "  C.json: TransformerWrapper keywords with attn_layers {\"type\": \"Decoder\" | \"Encoder\", ...}, or\n"
               "          XTransformer keywords (dim, enc_*, dec_*)\n"
               "  T.json: a list of token rows, or for an XTransformer {\"src\": rows, \"tgt\": rows, "
               "\"src_mask\": rows}\n");
}

/// A Decoder or an Encoder: loss, logits_sum, greedy (null for an Encoder); the export; the fixture's check.
/// Returns false when a --fixture check failed.
template <class Net>
bool evaluate(Net& net, const xt::ModelDescription& description, const xtr::safetensors::File& weights,
              const xtr::TokenBatch& tokens, const Options& o, const Fixture* fixture) {
  constexpr std::int32_t ignore_index = -100, pad_value = 0;  // AutoregressiveWrapper's defaults
  xt::load(net, weights, "'" + o.weights + "'", description.conventions);
  net.eval();
  xtr::require(tokens.length >= 2, o.tokens, ": rows need >= 2 tokens (the loss shifts by one), got ", tokens.length);
  const double logits_sum =
      sum_of(net.forward(as_input(prefix(tokens, tokens.batch, tokens.length - 1), ignore_index, pad_value)));
  if constexpr (Net::layers_type::causal) {
    xtr::AutoregressiveWrapper<Net> model(std::move(net), {ignore_index, pad_value});
    const double loss = model(tokens).item();
    const auto greedy = model.generate(prefix(tokens, 1, o.prompt_len), o.new_tokens, {.temperature = 0});
    const auto recomputed =
        model.generate(prefix(tokens, 1, o.prompt_len), o.new_tokens, {.temperature = 0, .cache_kv = false});
    if (!o.export_path.empty())
      xtr::safetensors::write(o.export_path, xt::export_state_dict(model.net, &weights, description.conventions));
    std::string extra = ", \"greedy_uncached\": " + token_list(recomputed);
    bool passed = true;
    if (fixture) extra += check_fixture(model, *fixture, passed);
    print_result(loss, logits_sum, &greedy, extra);
    return passed;
  } else {  // x-transformers' AutoregressiveWrapper runs the net on the whole row and drops the last position
    xtr::require(!fixture, "--fixture checks a Decoder (golden fixtures decode greedily); this is an Encoder");
    const double loss = next_token_loss(net.forward(as_input(tokens, ignore_index, pad_value)), tokens, ignore_index);
    if (!o.export_path.empty())
      xtr::safetensors::write(o.export_path, xt::export_state_dict(net, &weights, description.conventions));
    print_result(loss, logits_sum, nullptr);
    return true;
  }
}

/// An XTransformer: loss, the decoder's logits_sum, greedy; the export.
template <class Model>
void evaluate_xtransformer(Model& model, const xtr::safetensors::File& weights, const PairedTokens& p,
                           const Options& o, const xt::XTransformerConventions& conventions) {
  xt::load_xtransformer(model, weights, "'" + o.weights + "'", {}, conventions);
  model.eval();
  const auto& c = model.config();
  const xtr::MaskView src_mask = p.src_mask.data.empty() ? xtr::MaskView{} : xtr::MaskView(p.src_mask);
  xtr::require(o.prompt_len <= p.tgt.length, "--prompt-len ", o.prompt_len, " must be in [1, ", p.tgt.length,
               "] (the tgt row length)");
  double logits_sum = 0;
  {
    const auto encoded = model.encoder.embed(p.src, src_mask);
    const std::vector<typename Model::scalar> context(encoded.data(), encoded.data() + encoded.size());
    logits_sum = sum_of(model.decoder.net.forward(
        as_input(prefix(p.tgt, p.tgt.batch, p.tgt.length - 1), c.ignore_index, c.pad_value), {},
        {context.data(), p.src.batch, p.src.length, c.dim, src_mask}));
  }
  const double loss = model(p.src, p.tgt, src_mask).item();
  xtr::Mask mask0;
  if (!p.src_mask.data.empty()) {
    mask0 = xtr::Mask(1, p.src.length);
    std::copy_n(p.src_mask.data.begin(), p.src.length, mask0.data.begin());
  }
  const auto greedy = model.generate(prefix(p.src, 1, p.src.length), prefix(p.tgt, 1, o.prompt_len),
                                     o.new_tokens, mask0.data.empty() ? xtr::MaskView{} : xtr::MaskView(mask0),
                                     {.temperature = 0});
  if (!o.export_path.empty())
    xtr::safetensors::write(o.export_path, xt::export_xtransformer_state_dict(model, &weights, conventions));
  print_result(loss, logits_sum, &greedy);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const examples::CommandLine flags =
      examples::CommandLine("xt_eval", "evaluate an x-transformers model from its description and weights", usage_text)
          .bind("--config", &o.config)
          .bind("--weights", &o.weights)
          .bind("--tokens", &o.tokens)
          .bind("--prompt-len", &o.prompt_len)
          .bind("--new-tokens", &o.new_tokens)
          .bind("--export", &o.export_path)
          .bind("--ignore", &o.ignore)
          .bind("--fixture", &o.fixture);
  flags.parse(argc, argv);
  if (o.config.empty() || o.weights.empty() || (o.tokens.empty() && o.fixture.empty()))
    flags.fail("--config, --weights and --tokens (or --fixture) are required");
  if (o.prompt_len < 1) flags.fail("--prompt-len " + std::to_string(o.prompt_len) + " must be >= 1");
  if (o.new_tokens < 0) flags.fail("--new-tokens " + std::to_string(o.new_tokens) + " must be >= 0");
  try {
    const auto root = xtr::json::parse(read_text(o.config));
    auto weights = xtr::safetensors::read(o.weights);
    std::vector<std::string> prefixes;
    std::stringstream list(o.ignore);
    for (std::string p; std::getline(list, p, ',');)
      if (!p.empty()) prefixes.push_back(p);
    std::optional<Fixture> fixture;
    if (!o.fixture.empty()) {
      fixture.emplace();
      fixture->file = xtr::safetensors::read(o.fixture);
      prefixes.push_back("fixture.");  // a fixture's own tensors are not the model's
      prefixes.push_back("grad.");
    }
    std::erase_if(weights.tensors, [&](const xtr::safetensors::TensorRecord& t) {
      return std::any_of(prefixes.begin(), prefixes.end(), [&](const auto& p) { return t.name.starts_with(p); });
    });
    if (is_xtransformer(root)) {
      auto description = xt::parse_xtransformer_description(root);
      xt::match_layout(description.encoder, weights, "encoder.");
      xt::match_layout(description.decoder, weights, "decoder.net.");
      description.config.encoder = description.encoder.config;
      description.config.decoder = description.decoder.config;
      xtr::require(!fixture, "--fixture checks a Decoder description; XTransformer fixtures are checked by the tests");
      const auto tokens = read_paired_tokens(o.tokens);
      AnyXTransformer model(description.config);
      evaluate_xtransformer(model, weights, tokens, o, description.conventions());
    } else {
      auto description = xt::parse_description(root);
      xt::match_layout(description, weights);  // torch < 2.1 files of 1.27.1 – 1.30.x
      xtr::TokenBatch tokens;
      Options run = o;
      if (!o.tokens.empty()) {
        const auto rows = xtr::json::parse(read_text(o.tokens));
        xtr::require(!rows.is_object(), o.tokens, ": ", description.stack == "Encoder" ? "an Encoder" : "a Decoder",
                     " takes a JSON list of token rows; the {\"src\", \"tgt\"} object is for XTransformer descriptions");
        tokens = token_rows(rows, o.tokens);
      } else {  // the fixture's rows, prompt and greedy length
        tokens = fixture->tokens("fixture.tokens");
        run.prompt_len = long(fixture->tokens("fixture.prompt").length);
        run.new_tokens = long(fixture->tokens("fixture.greedy").length);
      }
      xtr::require(run.prompt_len <= tokens.length, "--prompt-len ", run.prompt_len, " must be in [1, ", tokens.length,
                   "]");
      bool passed = true;
      xt::with_model(description, [&](auto& net) {
        passed = evaluate(net, description, weights, tokens, run, fixture ? &*fixture : nullptr);
      });
      if (!passed) {
        std::fprintf(stderr, "xt_eval: the model does not reproduce the fixture '%s' (see \"fixture\" above)\n",
                     o.fixture.c_str());
        return 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xt_eval: %s\n", e.what());
    return 1;
  }
  return 0;
}
