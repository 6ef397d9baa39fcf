// Evaluates an x-transformers decoder from its JSON description and safetensors weights:
//   xt_eval --config C.json --weights W.safetensors --tokens T.json [--prompt-len 8] [--new-tokens 16]
//           [--export OUT.safetensors] [--ignore PREFIX,PREFIX...]
// T.json is a list of equal-length token rows. Prints one JSON object:
//   loss        the autoregressive loss over all rows (shift inside)
//   logits_sum  the sum of every logit of the network on every row without its last token
//   greedy      the temperature-0 continuation of row 0's first --prompt-len tokens (KV cache on)
// --export writes the model back under x-transformers' names (with its buffers) for load_state_dict(strict=True).
// --ignore skips tensors whose names start with the given prefixes (e.g. a golden fixture's "fixture.,grad.");
// every other tensor must be a parameter or buffer of the model.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "xtr/io/x_transformers.hpp"
#include "xtr/xtr.hpp"

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw xtr::Error("xtr: cannot read '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

xtr::TokenBatch read_tokens(const std::string& path) {
  const auto rows = xtr::json::parse(read_text(path));
  xtr::require(rows.is_array() && rows.size() > 0, path, ": expected a non-empty JSON list of token rows");
  xtr::TokenBatch tokens;
  tokens.batch = xtr::Index(rows.size());
  for (std::size_t b = 0; b < rows.size(); ++b) {
    const auto& row = rows.at(b);
    xtr::require(row.is_array(), path, ": row ", b, " is not a list");
    if (b == 0) tokens.length = xtr::Index(row.size());
    xtr::require(xtr::Index(row.size()) == tokens.length, path, ": row ", b, " has ", row.size(),
                 " tokens, row 0 has ", tokens.length);
    for (std::size_t t = 0; t < row.size(); ++t) tokens.data.push_back(std::int32_t(row.at(t).as_int()));
  }
  return tokens;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args{{"--prompt-len", "8"}, {"--new-tokens", "16"}};
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  if (argc % 2 == 0 || !args.count("--config") || !args.count("--weights") || !args.count("--tokens")) {
    std::fprintf(stderr,
                 "usage: xt_eval --config C.json --weights W.safetensors --tokens T.json [--prompt-len 8] "
                 "[--new-tokens 16] [--export OUT.safetensors] [--ignore PREFIX,PREFIX...]\n");
    return 2;
  }
  try {
    const auto description = xtr::x_transformers::parse_description(xtr::json::parse(read_text(args["--config"])));
    auto weights = xtr::safetensors::read(args["--weights"]);
    if (args.count("--ignore")) {
      std::vector<std::string> prefixes;
      std::stringstream list(args["--ignore"]);
      for (std::string prefix; std::getline(list, prefix, ',');)
        if (!prefix.empty()) prefixes.push_back(prefix);
      std::erase_if(weights.tensors, [&](const xtr::safetensors::TensorRecord& t) {
        return std::any_of(prefixes.begin(), prefixes.end(), [&](const auto& p) { return t.name.starts_with(p); });
      });
    }
    const auto tokens = read_tokens(args["--tokens"]);
    const xtr::Index prompt_len = std::stol(args["--prompt-len"]), new_tokens = std::stol(args["--new-tokens"]);
    xtr::require(prompt_len >= 1 && prompt_len <= tokens.length, "--prompt-len ", prompt_len, " must be in [1, ",
                 tokens.length, "]");
    xtr::x_transformers::with_model(
        description,
        [&](auto& net) {
          using Net = std::decay_t<decltype(net)>;
          xtr::x_transformers::load(net, weights, "'" + args["--weights"] + "'", description.conventions);
          net.eval();
          // logits of the network on every row without its last token
          xtr::TokenBatch inputs(tokens.batch, tokens.length - 1);
          for (xtr::Index b = 0; b < tokens.batch; ++b)
            std::copy_n(tokens.data.begin() + b * tokens.length, tokens.length - 1,
                        inputs.data.begin() + b * inputs.length);
          double logits_sum = 0;
          {
            auto logits = net.forward(inputs);
            for (xtr::Index i = 0; i < logits.size(); ++i) logits_sum += double(logits.data()[i]);
          }
          xtr::AutoregressiveWrapper<Net> model(std::move(net));
          const double loss = model(tokens).item();
          xtr::TokenBatch prompt(1, prompt_len);
          std::copy_n(tokens.data.begin(), prompt_len, prompt.data.begin());
          const auto greedy = model.generate(prompt, new_tokens, {.temperature = 0});
          std::printf("{\"loss\": %.17g, \"logits_sum\": %.17g, \"greedy\": [", loss, logits_sum);
          for (xtr::Index t = 0; t < greedy.length; ++t) std::printf("%s%d", t ? ", " : "", greedy(0, t));
          std::printf("]}\n");
          if (args.count("--export"))
            xtr::safetensors::write(args["--export"], xtr::x_transformers::export_state_dict(
                                                          model.net, &weights, description.conventions));
        },
        xtr::x_transformers::Decoders{});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xt_eval: %s\n", e.what());
    return 1;
  }
  return 0;
}
