// Training machinery: AdamW and clipping against their formulas, gradient accumulation, checkpoints (save → load →
// identical logits, resume → identical loss trajectory, mismatches and corrupt files), no allocation per step.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <span>
#include <thread>

#include <csignal>
#include <zlib.h>
#include <sys/resource.h>

#include "testing.hpp"
#include "xtr/xtr.hpp"

// Counts operator new calls in this test binary (a steady-state training step must make none). The replacement
// pairs malloc with free, which GCC cannot see through.
// (At global scope: a replacement operator new may not be declared in a namespace.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<long> g_news{0};
}
void* operator new(std::size_t n) {
  ++g_news;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace test_training {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;

namespace {

using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
using Model = AutoregressiveWrapper<Net>;

TransformerConfig small_config(double dropout = 0, std::uint64_t seed = 1) {
  return {.num_tokens = 64,
          .max_seq_len = 32,
          .emb_dropout = dropout,
          .layers = {.dim = 32, .depth = 2, .heads = 2, .dim_head = 16, .attn_dropout = dropout, .ff_dropout = dropout},
          .seed = seed};
}

TextDataset synthetic_text() {
  std::vector<std::uint8_t> bytes;
  const std::string words[] = {"the cat ", "sat on ", "a mat. ", "dogs run ", "fast! "};
  RandomStream rs{9, 0};
  for (int i = 0; i < 3000; ++i) {
    const auto& w = words[rs.below(std::uint64_t(i), 5)];
    for (char c : w) bytes.push_back(std::uint8_t(c) % 64);
  }
  return TextDataset(std::move(bytes));
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("xtr_test_" + std::to_string(::getpid()) + "_" + name);
}

/// One optimiser step over `accumulate` micro-batches; returns the mean loss.
double train_step(Model& model, AdamW<float>& opt, BatchLoader& loader, int accumulate = 1) {
  double total = 0;
  for (int i = 0; i < accumulate; ++i) {
    auto loss = model(loader.next());
    total += loss.item() / accumulate;
    (loss / double(accumulate)).backward();
  }
  clip_grad_norm(model.parameters(), 0.5);
  opt.step();
  opt.zero_grad();
  return total;
}

}  // namespace

TEST_CASE("AdamW follows its update formula / weight_decay 0 is Adam", "[training]") {
  for (double wd : {0.0, 0.1}) {
    ParameterStore<double> store;
    store.add("w", {5}, Init::normal_std(1.0));
    store.allocate(3);
    std::vector<double> w(store.values().span().begin(), store.values().span().end()), m(5, 0), v(5, 0);
    AdamW<double> opt(store, {.lr = 0.01, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-6, .weight_decay = wd});
    for (int t = 1; t <= 4; ++t) {
      for (int i = 0; i < 5; ++i) store.grads()[i] = std::sin(1.0 + i * t);
      opt.step();
      for (int i = 0; i < 5; ++i) {
        const double g = std::sin(1.0 + i * t);
        m[i] = 0.8 * m[i] + 0.2 * g;
        v[i] = 0.9 * v[i] + 0.1 * g * g;
        const double mhat = m[i] / (1 - std::pow(0.8, t)), vhat = v[i] / (1 - std::pow(0.9, t));
        w[i] = w[i] * (1 - 0.01 * wd) - 0.01 * mhat / (std::sqrt(vhat) + 1e-6);
        REQUIRE(store.values()[i] == Approx(w[i]).epsilon(1e-12));
      }
    }
  }
}

TEST_CASE("clip_grad_norm scales to the max norm and reports the norm before", "[training]") {
  ParameterStore<float> store;
  store.add("a", {3}, Init::fill(0));
  store.add("b", {1}, Init::fill(0));
  store.allocate(0);
  const float g[] = {3, 0, 0, 4};
  std::copy(g, g + 4, store.grads().data());
  REQUIRE(clip_grad_norm(store, 0.5) == Approx(5.0));
  REQUIRE(store.grads()[0] == Approx(0.3).epsilon(1e-5));
  REQUIRE(store.grads()[3] == Approx(0.4).epsilon(1e-5));
  REQUIRE(clip_grad_norm(store, 10.0) == Approx(0.5).epsilon(1e-5));  // below the limit: unchanged
  REQUIRE(store.grads()[3] == Approx(0.4).epsilon(1e-5));
  REQUIRE_THROWS_WITH(clip_grad_norm(store, 0.0), Catch::Contains("max_norm must be > 0, got 0"));
}

TEST_CASE("gradient accumulation over two halves equals the full batch", "[training]") {
  Model model{Net{small_config()}};
  const auto x = xtr::testing::random_tokens(4, 17, 64, 5);
  TokenBatch first(2, 17), second(2, 17);
  std::copy_n(x.data.begin(), 34, first.data.begin());
  std::copy_n(x.data.begin() + 34, 34, second.data.begin());
  model.parameters().zero_grad();
  model(x).backward();
  const std::vector<float> full(model.parameters().grads().span().begin(), model.parameters().grads().span().end());
  model.parameters().zero_grad();
  (model(first) / 2.0).backward();
  (model(second) / 2.0).backward();
  const auto& acc = model.parameters().grads();
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    worst = std::max(worst, double(std::abs(acc[Index(i)] - full[i])));
    scale = std::max(scale, double(std::abs(full[i])));
  }
  REQUIRE(worst <= 1e-5 * scale);
}

TEST_CASE("save then load gives identical logits / a resumed run repeats the loss trajectory exactly", "[training][checkpoint]") {
  const auto path = temp_path("resume.safetensors");
  const auto data = synthetic_text();
  const double dropout = 0.1;  // the dropout streams must resume too
  std::vector<double> uninterrupted, resumed;
  {
    Model model(Net(small_config(dropout)));
    auto opt = AdamW<float>(model.parameters(), {.lr = 3e-3});
    BatchLoader loader(data, 4, 24, 7, 1);
    for (int s = 0; s < 8; ++s) {
      uninterrupted.push_back(train_step(model, opt, loader, 2));
      if (s == 3) save_checkpoint(path, model.net, opt, {.step = 4, .data_position = loader.position()});
    }
  }
  {
    Model model(Net(small_config(dropout, /*seed=*/99)));  // different initial weights: all must come from the file
    auto opt = AdamW<float>(model.parameters(), {.lr = 3e-3});
    BatchLoader loader(data, 4, 24, 7, 1);
    const auto state = load_checkpoint(path, model.net, opt);
    REQUIRE(state.step == 4);
    loader.seek(state.data_position);
    for (int s = 4; s < 8; ++s) resumed.push_back(train_step(model, opt, loader, 2));
  }
  for (int s = 4; s < 8; ++s) REQUIRE(resumed[std::size_t(s - 4)] == uninterrupted[std::size_t(s)]);
  REQUIRE(uninterrupted.back() < uninterrupted.front());  // it trained

  // logits of a loaded model equal the saved model's
  Model a(Net(small_config(0, 5))), b(Net(small_config(0, 6)));
  auto opt_a = Adam(a.parameters()), opt_b = Adam(b.parameters());
  save_checkpoint(path, a.net, opt_a, {});
  load_checkpoint(path, b.net, opt_b);
  const auto x = xtr::testing::random_tokens(2, 20, 64, 3);
  a.eval();
  b.eval();
  auto la = a.net.forward(x);
  const std::vector<float> logits_a(la.data(), la.data() + la.size());
  auto lb = b.net.forward(x);
  REQUIRE(std::equal(logits_a.begin(), logits_a.end(), lb.data()));
  std::filesystem::remove(path);
}

namespace {
/// Trains `make(seed 1)` 8 steps, saving after step 4; a model made with another seed loads the checkpoint and runs
/// steps 5..8: the losses must be identical (parameters, optimiser, dropout and every wrapper draw resume).
template <class Make, class Step>
void check_resume(const std::string& file, Make make, Step step) {
  const auto path = temp_path(file);
  std::vector<double> uninterrupted, resumed;
  {
    auto model = make(1);
    auto opt = AdamW<float>(model.parameters(), {.lr = 3e-3});
    for (int s = 0; s < 8; ++s) {
      uninterrupted.push_back(step(model, opt, s));
      if (s == 3) save_checkpoint(path, model, opt, {.step = 4, .data_position = 4});
    }
  }
  auto model = make(99);
  auto opt = AdamW<float>(model.parameters(), {.lr = 3e-3});
  const auto state = load_checkpoint(path, model, opt);
  REQUIRE(state.data_position == 4);
  for (int s = 4; s < 8; ++s) resumed.push_back(step(model, opt, s));
  for (int s = 4; s < 8; ++s) REQUIRE(resumed[std::size_t(s - 4)] == uninterrupted[std::size_t(s)]);
  std::filesystem::remove(path);
}
double optimiser_step(AdamW<float>& opt, Loss loss) {
  const double value = loss.item();
  loss.backward();
  opt.step();
  opt.zero_grad();
  return value;
}
}  // namespace

TEST_CASE("XTransformer and NonAutoregressiveWrapper checkpoints resume a run exactly", "[training][checkpoint]") {
  using Seq2Seq = XTransformer<Encoder<Rotary>, Decoder<Rotary>>;
  auto make_seq2seq = [](std::uint64_t seed) {
    const TransformerConfig part{.num_tokens = 12, .max_seq_len = 13, .emb_dropout = 0.1,
                                 .layers = {.depth = 1, .heads = 2, .dim_head = 8, .attn_dropout = 0.1}};
    auto encoder = part;
    encoder.max_seq_len = 6;
    return Seq2Seq({.dim = 16, .encoder = encoder, .decoder = part, .tie_token_emb = true,
                    .cross_attn_tokens_dropout = 0.25, .seed = seed});
  };
  using Nar = NonAutoregressiveWrapper<TransformerWrapper<Encoder<AbsoluteLearned>>,
                                       TransformerWrapper<Encoder<NoPosition>>>;
  auto make_nar = [](std::uint64_t seed) {
    const TransformerConfig net{.num_tokens = 16, .max_seq_len = 10, .emb_dropout = 0.1,
                                .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8, .ff_dropout = 0.1},
                                .seed = seed};
    auto critic = net;
    critic.seed = seed + 1;
    return Nar(net, {.mask_id = 15, .self_cond = true}, critic);
  };
  SECTION("XTransformer: dropout, source-token dropout, the copy task's batches") {
    const auto copy = copy_task({.batch = 4, .src_len = 6, .num_tokens = 12, .min_len = 3}, 5);
    check_resume("xtransformer.safetensors", make_seq2seq, [&](Seq2Seq& model, AdamW<float>& opt, int s) {
      PairedBatch batch;
      copy.fill(std::uint64_t(s), batch);
      return optimiser_step(opt, model(batch.src, batch.tgt, batch.src_mask));
    });
  }
  SECTION("NonAutoregressiveWrapper: self-conditioning, a token critic, the corruption draws") {
    check_resume("nar.safetensors", make_nar, [](Nar& model, AdamW<float>& opt, int s) {
      return optimiser_step(opt, model(xtr::testing::random_tokens(3, 10, 15, std::uint64_t(s))));
    });
  }
  SECTION("a checkpoint of one model type does not load into another") {
    const auto path = temp_path("nar_into_seq2seq.safetensors");
    auto nar = make_nar(1);
    auto nar_opt = AdamW<float>(nar.parameters());
    save_checkpoint(path, nar, nar_opt, {});
    auto seq2seq = make_seq2seq(1);
    auto opt = AdamW<float>(seq2seq.parameters());
    REQUIRE_THROWS_WITH(load_checkpoint(path, seq2seq, opt),
                        Catch::Contains("holds a NonAutoregressiveWrapper<TransformerWrapper<Encoder<AbsoluteLearned") &&
                            Catch::Contains("this model is a XTransformer<"));
    auto other = make_nar(1);
    auto other_opt = AdamW<float>(other.parameters());
    load_checkpoint(path, other, other_opt);  // the same type and options load
    std::filesystem::remove(path);
  }
}

TEST_CASE("checkpoints from another configuration or type, and corrupt files, are clear errors", "[training][checkpoint][errors]") {
  const auto path = temp_path("mismatch.safetensors");
  Model model{Net{small_config()}};
  auto opt = Adam(model.parameters());
  save_checkpoint(path, model.net, opt, {.step = 3});

  auto other_config = small_config();
  other_config.layers.depth = 3;
  Model deeper(Net{other_config});
  auto opt_deeper = Adam(deeper.parameters());
  REQUIRE_THROWS_WITH(load_checkpoint(path, deeper.net, opt_deeper),
                      Catch::Contains("was saved with config") && Catch::Contains("\"depth\":2") &&
                          Catch::Contains("\"depth\":3"));

  using Other = TransformerWrapper<Decoder<Rotary, RMSNorm, GELU>>;
  Other rms(small_config());
  auto opt_rms = Adam(rms.parameters());
  REQUIRE_THROWS_WITH(load_checkpoint(path, rms, opt_rms),
                      Catch::Contains("holds a TransformerWrapper<Decoder<Rotary, LayerNorm") &&
                          Catch::Contains("this model is a TransformerWrapper<Decoder<Rotary, RMSNorm"));

  // truncated file
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size / 2);
  REQUIRE_THROWS_WITH(load_checkpoint(path, model.net, opt), Catch::Contains(path.string()));
  // a safetensors file that is not a checkpoint
  safetensors::File plain;
  append_state_dict(model.parameters(), plain);
  safetensors::write(path, plain);
  REQUIRE_THROWS_WITH(load_checkpoint(path, model.net, opt), Catch::Contains("has no metadata entry 'xtr.model'"));
  // missing file
  std::filesystem::remove(path);
  REQUIRE_THROWS_WITH(load_checkpoint(path, model.net, opt), Catch::Contains(path.string()));
}

TEST_CASE("a failed save leaves the previous checkpoint intact", "[training][checkpoint][errors]") {
  const auto dir = temp_path("dir");
  std::filesystem::create_directories(dir);
  const auto path = dir / "ck.safetensors";
  Model model{Net{small_config()}};
  auto opt = Adam(model.parameters());
  save_checkpoint(path, model.net, opt, {.step = 1});
  const auto before = std::filesystem::file_size(path);
  // the write fails half-way: the file-size limit stops it (EFBIG); the temporary file goes, the old file stays
  struct rlimit saved {};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  bool threw = false;
  try {
    save_checkpoint(path, model.net, opt, {.step = 2});
  } catch (const Error&) {
    threw = true;
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  REQUIRE(threw);
  REQUIRE(std::filesystem::file_size(path) == before);
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    CHECK(entry.path().filename() == "ck.safetensors");  // no temporary file left behind
  Model reloaded(Net(small_config(0, 7)));
  auto opt2 = Adam(reloaded.parameters());
  REQUIRE(load_checkpoint(path, reloaded.net, opt2).step == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a steady-state training step makes no heap allocation", "[training][allocation]") {
  Model model(Net(small_config(0.1)));
  auto opt = Adam(model.parameters());
  BatchLoader loader(synthetic_text(), 4, 24, 1, 1);
  train_step(model, opt, loader, 2);  // first steps size the arena
  train_step(model, opt, loader, 2);
  const auto arena_allocations = model.net.activation_arena().heap_allocations();
  const long news = g_news.load();
  for (int i = 0; i < 3; ++i) train_step(model, opt, loader, 2);
  REQUIRE(g_news.load() - news == 0);
  REQUIRE(model.net.activation_arena().heap_allocations() == arena_allocations);
}

TEST_CASE("non-finite state is never saved or loaded without the opt-out", "[training][checkpoint][errors]") {
  const auto path = temp_path("nonfinite.safetensors");
  Model model{Net{small_config()}};
  auto opt = Adam(model.parameters());
  save_checkpoint(path, model.net, opt, {.step = 1});
  const auto good = std::filesystem::file_size(path);
  const auto& e = *model.parameters().find("attn_layers.layers.0.1.to_q.weight");
  model.parameters().values()[e.offset + 5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(save_checkpoint(path, model.net, opt, {.step = 2}),
                      Catch::Contains("refusing to save checkpoint") &&
                          Catch::Contains("parameter attn_layers.layers.0.1.to_q.weight[5] = nan is not finite"));
  REQUIRE(std::filesystem::file_size(path) == good);  // the old checkpoint is untouched
  model.parameters().values()[e.offset + 5] = 0;
  opt.exp_avg_sq()[3] = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(save_checkpoint(path, model.net, opt, {.step = 2}), Catch::Contains("optimizer exp_avg_sq"));
  // written for inspection, it does not load by default
  save_checkpoint(path, model.net, opt, {.step = 2}, {.allow_non_finite = true});
  Model other{Net{small_config(0, 5)}};
  auto opt_other = Adam(other.parameters());
  const std::vector<float> before(other.parameters().values().span().begin(), other.parameters().values().span().end());
  REQUIRE_THROWS_WITH(load_checkpoint(path, other.net, opt_other),
                      Catch::Contains("tensor 'optimizer.exp_avg_sq.") && Catch::Contains("is not finite"));
  REQUIRE(std::equal(before.begin(), before.end(), other.parameters().values().data()));  // nothing changed
  REQUIRE(load_checkpoint(path, other.net, opt_other, {.allow_non_finite = true}).step == 2);
  std::filesystem::remove(path);
}

TEST_CASE("optimizer settings and counters from a checkpoint are checked like the constructor's", "[training][checkpoint][errors]") {
  const auto path = temp_path("optimizer.safetensors");
  Model model{Net{small_config()}};
  auto opt = Adam(model.parameters());
  save_checkpoint(path, model.net, opt, {.step = 1});
  auto with = [&](const std::string& key, const std::string& value) {
    auto file = safetensors::read(path);
    file.metadata[key] = value;
    const auto edited = temp_path("edited.safetensors");
    safetensors::write(edited, file);
    return edited;
  };
  Model other{Net{small_config(0, 5)}};
  auto opt_other = Adam(other.parameters());
  REQUIRE_THROWS_WITH(load_checkpoint(with("optimizer.beta1", "1"), other.net, opt_other),
                      Catch::Contains("optimizer settings the optimizer refuses: beta1 must be in [0, 1), got 1"));
  REQUIRE_THROWS_WITH(load_checkpoint(with("optimizer.lr", "-5"), other.net, opt_other),
                      Catch::Contains("learning rate must be >= 0, got -5"));
  REQUIRE_THROWS_WITH(load_checkpoint(with("optimizer.steps", "9223372036854775807"), other.net, opt_other),
                      Catch::Contains("'optimizer.steps' = 9223372036854775807 exceeds the limit 2^53"));
  REQUIRE_THROWS_WITH(load_checkpoint(with("step", "-1"), other.net, opt_other),
                      Catch::Contains("metadata 'step' is not a count: '-1'"));
  REQUIRE_THROWS_WITH(load_checkpoint(with("data_position", " 7"), other.net, opt_other),
                      Catch::Contains("metadata 'data_position' is not a count: ' 7'"));
  REQUIRE_THROWS_WITH(load_checkpoint(with("optimizer.eps", " 1e-8"), other.net, opt_other),
                      Catch::Contains("metadata 'optimizer.eps' is not a number: ' 1e-8'"));
  REQUIRE_THROWS_WITH(opt.set_steps(-1), Catch::Contains("optimizer steps must be in [0, 2^53"));
  std::filesystem::remove(path);
  std::filesystem::remove(temp_path("edited.safetensors"));
}

TEST_CASE("sizes from outside: checked products and sums, bounded batches, strict counts", "[errors]") {
  REQUIRE(checked_mul(1 << 20, 1 << 20, "x") == Index(1) << 40);
  REQUIRE_THROWS_WITH(checked_mul(Index(1) << 32, Index(1) << 32, "the thing"),
                      Catch::Contains("the thing: 4294967296 × 4294967296 exceeds the limit of 2^48"));
  REQUIRE_THROWS_WITH(checked_add(kMaxElements, 1, "sum"), Catch::Contains("sum: 281474976710656 + 1 exceeds"));
  REQUIRE_THROWS_WITH(checked_mul(-1, 3, "neg"), Catch::Contains("neg: negative size"));
  REQUIRE_THROWS_WITH((Shape{Index(1) << 32, Index(1) << 32}), Catch::Contains("exceeds the limit of 2^48"));
  REQUIRE_THROWS_WITH((Shape{-3, 2}), Catch::Contains("a shape's extents must be >= 0, got -3"));
  ParameterStore<float> store;
  store.add("a", {Index(1) << 24, Index(1) << 23}, Init::fill(0));
  REQUIRE_THROWS_WITH(store.add("b", {Index(1) << 24, Index(1) << 24}, Init::fill(0)),
                      Catch::Contains("the parameter count") && Catch::Contains("exceeds the limit"));
  REQUIRE_THROWS_WITH(BatchLoader(synthetic_text(), Index(1) << 62, 3, 0),
                      Catch::Contains("batch_size × (seq_len + 1)") && Catch::Contains("exceeds the limit"));
  REQUIRE_THROWS_WITH(BatchLoader(synthetic_text(), 1, std::numeric_limits<Index>::max(), 0),
                      Catch::Contains("seq_len + 1: 9223372036854775807 + 1 exceeds"));
  REQUIRE_THROWS_WITH(BatchLoader(synthetic_text(), Index(1) << 30, 8, 0),
                      Catch::Contains("exceeds the limit of 4294967296 tokens per batch"));
  REQUIRE(parse_count("123", "n") == 123);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "abc", "99999999999999999999999"})
    REQUIRE_THROWS_WITH(parse_count(bad, "key 'n'"), Catch::Contains("key 'n'") && Catch::Contains("is not a count"));
  REQUIRE_THROWS_WITH(parse_count("11", "n", 10), Catch::Contains("n = 11 exceeds the limit 10"));
}

TEST_CASE("a killed save's temporary file is removed at the next save, a live writer's is not", "[training][checkpoint]") {
  const auto dir = temp_path("stale");
  std::filesystem::create_directories(dir);
  const auto path = dir / "ck.safetensors";
  Model model{Net{small_config()}};
  auto opt = Adam(model.parameters());
  pid_t dead = 999999;
  while (::kill(dead, 0) == 0 || errno != ESRCH) --dead;  // a pid no process has
  const auto stale = dir / ("ck.safetensors.tmp." + std::to_string(dead) + ".0");
  const auto live = dir / "ck.safetensors.tmp.1.0";  // init's: alive
  const auto other = dir / "other.safetensors.tmp.999999.0";
  for (const auto& p : {stale, live, other}) std::ofstream(p) << "partial";
  save_checkpoint(path, model.net, opt, {.step = 1});
  CHECK_FALSE(std::filesystem::exists(stale));
  CHECK(std::filesystem::exists(live));
  CHECK(std::filesystem::exists(other));
  Model reloaded(Net(small_config(0, 7)));
  auto opt2 = Adam(reloaded.parameters());
  CHECK(load_checkpoint(path, reloaded.net, opt2).step == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a gzip corpus that inflates past the limit is an error naming the file and the limit", "[data][errors]") {
  std::vector<std::uint8_t> zeros(1 << 20, 0);
  uLongf packed_size = compressBound(uLong(zeros.size())) + 64;
  // a gzip stream of 1 MiB of zeros (deflate with the gzip wrapper)
  z_stream z{};
  REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<std::uint8_t> gz(packed_size);
  z.next_in = zeros.data();
  z.avail_in = uInt(zeros.size());
  z.next_out = gz.data();
  z.avail_out = uInt(gz.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  gz.resize(z.total_out);
  deflateEnd(&z);
  CHECK(xtr::detail::gunzip(gz, "bomb.gz").size() == zeros.size());
  REQUIRE_THROWS_WITH(xtr::detail::gunzip(gz, "bomb.gz", 100000),
                      Catch::Contains("bomb.gz") && Catch::Contains("inflates to more than the limit of 100000 bytes"));
  CHECK(xtr::detail::gunzip(gz, "bomb.gz", zeros.size()).size() == zeros.size());  // exactly the limit is fine
}

TEST_CASE("checkpoints carry a CRC-32C of their tensors: a flipped byte is an error, files without one load",
          "[training][checkpoint][errors]") {
  const std::string digits = "123456789";
  CHECK(crc32c(std::as_bytes(std::span(digits.data(), digits.size()))) == 0xE3069283u);  // the standard check value
  const auto path = temp_path("crc.safetensors");
  Model model{Net{small_config()}};
  auto opt = Adam(model.parameters());
  save_checkpoint(path, model.net, opt, {.step = 1});
  REQUIRE(safetensors::read(path).metadata.count("xtr.crc32c") == 1);
  std::vector<char> raw(std::filesystem::file_size(path));
  std::ifstream(path, std::ios::binary).read(raw.data(), std::streamsize(raw.size()));
  raw[raw.size() - 3] ^= 0x10;  // one bit of the last tensor's data
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(raw.data(), std::streamsize(raw.size()));
  Model other{Net{small_config(0, 5)}};
  auto opt_other = Adam(other.parameters());
  REQUIRE_THROWS_WITH(load_checkpoint(path, other.net, opt_other),
                      Catch::Contains("is corrupt: its tensor data has CRC-32C") && Catch::Contains("the file records"));
  // without the checksum entry (a file from elsewhere) the same bytes load
  auto file = safetensors::read(path);
  file.metadata.erase("xtr.crc32c");
  safetensors::write(path, file);
  CHECK(load_checkpoint(path, other.net, opt_other).step == 1);
  std::filesystem::remove(path);
}

TEST_CASE("issue 13's corrupt checkpoints in the fuzz corpus are refused, naming what is wrong", "[training][checkpoint][errors]") {
  // tests/fuzz/corpus/checkpoint/issue13_*.safetensors (tests/fuzz/make_regressions.py): the fuzz harness replays
  // them at every CI run; here each must be refused with its own message, the model and optimizer unchanged.
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
  Net net({.num_tokens = 16, .max_seq_len = 8, .layers = {.dim = 8, .depth = 1, .heads = 2, .dim_head = 4}});
  auto optimizer = Adam(net.parameters());
  const std::vector<float> before(net.parameters().values().data(),
                                  net.parameters().values().data() + net.parameters().count());
  const std::filesystem::path dir = std::filesystem::path(XTR_SOURCE_DIR) / "tests/fuzz/corpus/checkpoint";
  const std::pair<const char*, const char*> cases[] = {
      {"nan_weight", "tensor 'token_emb.emb.weight' [3] = nan is not finite"},
      {"inf_moment", "tensor 'optimizer.exp_avg_sq.to_logits.weight' [0] = inf is not finite"},
      {"flipped_byte", "is corrupt: its tensor data has CRC-32C"},
      {"beta1_one", "beta1 must be in [0, 1), got 1"},
      {"negative_lr", "learning rate must be >= 0, got -5"},
      {"steps_int64_max", "'optimizer.steps' = 9223372036854775807 exceeds the limit 2^53"},
      {"random_state_sign", "'xtr.random_state' item 0 ('+5,0') is not a count: '+5'"},
      {"step_letters", "metadata 'step' is not a count: 'abc'"},
      {"step_negative", "metadata 'data_position' is not a count: '-1'"}};
  for (const auto& [name, message] : cases) {
    INFO(name);
    REQUIRE_THROWS_WITH(load_checkpoint(dir / ("issue13_" + std::string(name) + ".safetensors"), net, optimizer),
                        Catch::Contains(message));
    CHECK(std::equal(before.begin(), before.end(), net.parameters().values().data()));
    CHECK(optimizer.steps() == 0);
  }
  (void)load_checkpoint(dir / "small.safetensors", net, optimizer);  // the file they were made from loads
}

TEST_CASE("two models train and generate in two threads at once, each exactly as alone", "[training][threads]") {
  auto run = [](std::uint64_t seed, std::vector<double>& losses, TokenBatch& text) {
    Model model{Net{small_config(0, seed)}};
    auto opt = Adam(model.parameters());
    BatchLoader loader(synthetic_text(), 4, 16, seed);
    for (int s = 0; s < 3; ++s) losses.push_back(train_step(model, opt, loader));
    text = model.generate(TokenBatch{{1, 2, 3}}, 12, {.temperature = 1.0, .seed = seed});
  };
  std::vector<double> alone_a, alone_b, together_a, together_b;
  TokenBatch text_a, text_b, together_text_a, together_text_b;
  run(3, alone_a, text_a);
  run(4, alone_b, text_b);
  std::thread a([&] { run(3, together_a, together_text_a); });
  std::thread b([&] { run(4, together_b, together_text_b); });
  a.join();
  b.join();
  CHECK(together_a == alone_a);
  CHECK(together_b == alone_b);
  CHECK(together_text_a.data == text_a.data);
  CHECK(together_text_b.data == text_b.data);
}

}  // namespace test_training
