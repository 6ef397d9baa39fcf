// The seed workflow of x-transformers (train_enwik8.py), in C++: a byte-level decoder-only language
// model trained on random windows of seq_len + 1 bytes with gradient accumulation and clipping, periodic validation
// (loss and bits per character) and sampled text.
//
//   train_enwik8 --data ../shared/data/enwik8-4M.gz --dim 256 --depth 4 --heads 4 --seq-len 256 --batch-size 8
//                --gradient-accumulate-every 1 --learning-rate 1e-3 --num-batches 1500 --log-jsonl run.jsonl
//
// Under mpirun (built with MPI: docs/distributed.md) the same flags train data-parallel: --batch-size is per rank,
// the global batch is ranks × batch size, rank 0 alone logs and saves, and the losses equal one process's with the
// global batch. `mpirun -np 2 train_enwik8 --batch-size 4 …` logs what `train_enwik8 --batch-size 8 …` logs.
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>

#include "command_line.hpp"
#include "xtr/distributed.hpp"
#include "xtr/xtr.hpp"

namespace {

using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;
using Model = xtr::AutoregressiveWrapper<Net>;

struct Options {
  // x-transformers' script constants, as flags with its defaults
  long num_batches = 100000;
  long batch_size = 4;
  long gradient_accumulate_every = 4;
  double learning_rate = 1e-4;
  long validate_every = 100;
  long generate_every = 500;
  long generate_length = 1024;
  long seq_len = 1024;
  // model size (the script's Decoder(dim=512, depth=6, heads=8, rotary_pos_emb=True))
  long dim = 512, depth = 6, heads = 8;
  // ours
  std::string data = "/usr/share/games/fortunes";
  double clip = 0.5;
  long val_batches = 1;
  long prime_length = 128;
  long seed = 0;
  int threads = 0;
  std::string save, resume, log_jsonl;
};

void usage_text(std::FILE* out) {
  std::fprintf(out,
               "usage: train_enwik8 [--data PATH (file, .gz, .zip or directory; default /usr/share/games/fortunes)]\n"
               "  [--num-batches N] [--batch-size N] [--gradient-accumulate-every N] [--learning-rate X]\n"
               "  [--validate-every N] [--generate-every N] [--generate-length N] [--seq-len N]\n"
               "  [--dim N] [--depth N] [--heads N] [--clip X] [--val-batches N] [--prime-length N]\n"
               "  [--seed N] [--threads N] [--save PATH] [--resume PATH] [--log-jsonl PATH]\n");
}

Options parse(int argc, char** argv) {
  Options o;
  const examples::CommandLine flags =
      examples::CommandLine("train_enwik8", "train a byte-level language model; flags as below", usage_text)
          .bind("--num-batches", &o.num_batches)
          .bind("--batch-size", &o.batch_size)
          .bind("--gradient-accumulate-every", &o.gradient_accumulate_every)
          .bind("--validate-every", &o.validate_every)
          .bind("--generate-every", &o.generate_every)
          .bind("--generate-length", &o.generate_length)
          .bind("--seq-len", &o.seq_len)
          .bind("--dim", &o.dim)
          .bind("--depth", &o.depth)
          .bind("--heads", &o.heads)
          .bind("--val-batches", &o.val_batches)
          .bind("--prime-length", &o.prime_length)
          .bind("--seed", &o.seed)
          .bind("--learning-rate", &o.learning_rate)
          .bind("--clip", &o.clip)
          .bind("--data", &o.data)
          .bind("--save", &o.save)
          .bind("--resume", &o.resume)
          .bind("--log-jsonl", &o.log_jsonl)
          .bind("--threads", &o.threads);
  flags.parse(argc, argv);
  auto positive = [&](long v, const char* name) {
    if (v < 1) flags.fail(std::string(name) + " must be >= 1, got " + std::to_string(v));
  };
  positive(o.num_batches, "--num-batches");
  positive(o.batch_size, "--batch-size");
  positive(o.gradient_accumulate_every, "--gradient-accumulate-every");
  positive(o.validate_every, "--validate-every");
  positive(o.generate_every, "--generate-every");
  positive(o.seq_len, "--seq-len");
  positive(o.prime_length, "--prime-length");
  positive(o.dim, "--dim");
  positive(o.depth, "--depth");
  positive(o.heads, "--heads");
  auto at_most = [&](long v, long limit, const char* name) {
    if (v > limit) flags.fail(std::string(name) + " " + std::to_string(v) + " exceeds the limit " + std::to_string(limit));
  };
  at_most(o.seq_len, 65536, "--seq-len");
  at_most(o.batch_size, 65536, "--batch-size");
  at_most(o.dim, 65536, "--dim");
  at_most(o.depth, 4096, "--depth");
  at_most(o.heads, 4096, "--heads");
  positive(o.val_batches, "--val-batches");
  at_most(o.val_batches, 1 << 20, "--val-batches");
  if (o.generate_length < 0) flags.fail("--generate-length must be >= 0");
  at_most(o.generate_length, 1 << 24, "--generate-length");
  if (!(o.learning_rate > 0)) flags.fail("--learning-rate must be > 0");
  if (!(o.clip > 0)) flags.fail("--clip must be > 0");
  return o;
}

/// Bytes as printable text: control bytes other than newline and tab become '.'.
std::string printable(const std::vector<std::int32_t>& tokens) {
  std::string s;
  for (auto t : tokens) s += (t == '\n' || t == '\t' || (t >= 32 && t < 127) || t >= 128) ? char(t) : '.';
  return s;
}

std::string json_number(std::optional<double> v) {
  if (!v || !std::isfinite(*v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", *v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const auto comm = xtr::distributed::Communicator::from_environment();  // mpirun -np N, or one process
  const bool root = comm.is_root();                                      // logs, prints and saves
  if (o.threads > 0)
    omp_set_num_threads(o.threads);
  else if (comm.size() > 1)  // ranks share the machine's cores (one machine assumed; --threads overrides)
    omp_set_num_threads(std::max(1, omp_get_num_procs() / comm.size()));
  const bool terminal = root && isatty(fileno(stdout));
  try {
    const auto [train_data, val_data] = xtr::TextDataset::load(o.data).split(0.9);
    if (root)
      std::printf("data: %s (%ld training bytes, %ld validation bytes)\n", o.data.c_str(), long(train_data.size()),
                  long(val_data.size()));
    const xtr::BatchShard shard{comm.rank(), comm.size()};  // this rank's rows of every global batch
    xtr::BatchLoader train_loader(train_data, o.batch_size, o.seq_len, std::uint64_t(o.seed), 1, shard);
    xtr::BatchLoader val_loader(val_data, o.batch_size, o.seq_len, std::uint64_t(o.seed), 2, shard);

    Model model(Net({.num_tokens = 256,
                     .max_seq_len = o.seq_len,
                     .layers = {.dim = o.dim, .depth = o.depth, .heads = o.heads},
                     .seed = std::uint64_t(o.seed)}));
    auto optimizer = xtr::Adam(model.parameters(), {.lr = o.learning_rate});
    if (root)
      std::printf("model: %s, %ld parameters, %d threads%s\n", Net::describe().c_str(),
                  long(model.parameters().count()), omp_get_max_threads(),
                  comm.size() > 1 ? (" per rank; " + std::to_string(comm.size()) + " ranks x batch " +
                                     std::to_string(o.batch_size) + " = global batch " +
                                     std::to_string(comm.size() * o.batch_size))
                                        .c_str()
                                  : "");
    if (root) std::printf("decoding weights: %s\n", model.net.decoding().c_str());

    long step = 0;
    if (!o.resume.empty()) {
      const auto state = xtr::load_checkpoint(o.resume, model.net, optimizer);
      step = long(state.step);
      train_loader.seek(state.data_position);
      if (auto it = state.extra.find("val_position"); it != state.extra.end())
        val_loader.seek(xtr::parse_count(it->second, o.resume + " metadata 'val_position'"));
      if (root) std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
    }
    // every rank loaded the same checkpoint (or none): check that they built the same run, copy rank 0's parameters
    xtr::distributed::DataParallel data_parallel(
        comm, model, o.batch_size,
        {.run_signature = "batch_size " + std::to_string(o.batch_size) + " seq_len " + std::to_string(o.seq_len) +
                          " accumulate " + std::to_string(o.gradient_accumulate_every) + " seed " +
                          std::to_string(o.seed) + " data " + std::to_string(train_data.size()) + " step " +
                          std::to_string(step)});
    std::ofstream log;
    if (root && !o.log_jsonl.empty()) {
      log.open(o.log_jsonl, std::ios::app);
      if (!log) throw xtr::Error("xtr: cannot open --log-jsonl file '" + o.log_jsonl + "' for appending");
    }
    auto write_row = [&](long s, std::optional<double> train, std::optional<double> val, std::optional<double> tps) {
      if (!log.is_open()) return;
      log << "{\"step\": " << s << ", \"train_loss\": " << json_number(train) << ", \"val_loss\": " << json_number(val)
          << ", \"bpc\": " << json_number(val ? std::optional<double>(*val / std::log(2.0)) : std::nullopt)
          << ", \"tokens_per_s\": " << json_number(tps) << "}\n";
      log.flush();
    };

    const long started_at = step;
    long saved_at = -1;  // the step of the last checkpoint this run wrote
    auto stop = [&](const std::string& why) {  // non-finite state: nothing more is saved (every rank sees the same)
      if (!root) return 3;
      std::fprintf(stderr, "\ntrain_enwik8: %s; stopping (%s)\n", why.c_str(),
                   saved_at >= 0 ? ("the last checkpoint, " + o.save + " from step " + std::to_string(saved_at) +
                                    ", is intact").c_str()
                                 : "no checkpoint was written by this run");
      return 3;
    };
    const double tokens_per_step = double(comm.size() * o.batch_size * o.seq_len * o.gradient_accumulate_every);
    double last_train = 0;
    while (step < o.num_batches) {
      const auto started = std::chrono::steady_clock::now();
      model.train();
      double train_loss = 0;
      for (long micro = 0; micro < o.gradient_accumulate_every; ++micro) {
        auto loss = model(train_loader.next());
        train_loss += loss.item() / double(o.gradient_accumulate_every);
        // the last micro-batch averages the gradients over ranks, overlapped with its backward
        data_parallel.backward(loss / double(o.gradient_accumulate_every), micro == o.gradient_accumulate_every - 1);
      }
      train_loss = comm.mean(train_loss);  // the global batch's loss
      if (!std::isfinite(train_loss))
        return stop("training loss is " + std::to_string(train_loss) + " at step " + std::to_string(step + 1));
      xtr::clip_grad_norm(model.parameters(), o.clip);
      optimizer.step();
      optimizer.zero_grad();
      ++step;
      last_train = train_loss;
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const double tokens_per_s = tokens_per_step / seconds;
      write_row(step, train_loss, std::nullopt, tokens_per_s);
      if (terminal) {
        const int width = 30, filled = int(width * step / o.num_batches);
        std::printf("\r%6ld/%ld [%s%s] loss %.4f | %.0f tok/s ", step, o.num_batches, std::string(filled, '=').c_str(),
                    std::string(width - filled, ' ').c_str(), train_loss, tokens_per_s);
        std::fflush(stdout);
      } else if (root && (step % 10 == 0 || step == 1)) {
        std::printf("step %ld: training loss %.4f, %.0f tokens/s\n", step, train_loss, tokens_per_s);
        std::fflush(stdout);
      }

      if (step % o.validate_every == 0 || step == o.num_batches) {
        model.eval();
        double val_loss = 0;
        for (long v = 0; v < o.val_batches; ++v) val_loss += model(val_loader.next()).item() / double(o.val_batches);
        val_loss = comm.mean(val_loss);  // every rank validated its rows of the same global batches
        if (root)
          std::printf("%sstep %ld: validation loss %.4f, %.4f bits per character\n", terminal ? "\n" : "", step,
                      val_loss, val_loss / std::log(2.0));
        write_row(step, last_train, val_loss, std::nullopt);
        if (!std::isfinite(val_loss))
          return stop("validation loss is " + std::to_string(val_loss) + " at step " + std::to_string(step));
      }
      if ((step % o.generate_every == 0 || step == o.num_batches) && o.generate_length > 0) {
        model.eval();
        xtr::TokenBatch window;
        val_loader.fill(std::uint64_t(1) << 40 | std::uint64_t(step), window);  // a fresh validation window
        const long prime = std::min(o.prime_length, o.seq_len);
        xtr::TokenBatch prompt(1, prime);
        std::copy_n(window.data.begin(), prime, prompt.data.begin());
        if (root)
          std::printf("%s%s\n%s\n%s\n", terminal ? "\n" : "", std::string(60, '-').c_str(),
                      printable(prompt.row(0)).c_str(), std::string(60, '*').c_str());
        // every rank generates (the same text: same seed, same parameters), so forward counts, and with them the
        // dropout streams, stay those of one process; rank 0 prints
        xtr::Sampling sampling{.seed = std::uint64_t(step)};
        sampling.on_tokens = [root](xtr::Index, std::span<const std::int32_t> tokens) {  // stream the sample
          if (!root) return true;
          std::fputs(printable({tokens.begin(), tokens.end()}).c_str(), stdout);
          std::fflush(stdout);
          return true;
        };
        (void)model.generate(prompt, o.generate_length, sampling);
        if (root) std::printf("\n%s\n", std::string(60, '-').c_str());
      }
      if (!o.save.empty() && (step % o.validate_every == 0 || step == o.num_batches)) {
        for (const auto* buffer : {&model.parameters().values(), &optimizer.exp_avg(), &optimizer.exp_avg_sq()})
          if (const auto bad = model.parameters().first_non_finite(*buffer); !bad.empty())
            return stop("the model state is not finite at step " + std::to_string(step) + " (" + bad + ")");
        if (comm.size() > 1 && !data_parallel.parameters_in_sync())
          return stop("the ranks' parameters differ at step " + std::to_string(step));
        if (root)  // rank 0 writes (atomically); every rank loads it on --resume
          xtr::save_checkpoint(o.save, model.net, optimizer,
                               {.step = step,
                                .data_position = train_loader.position(),
                                .extra = {{"val_position", std::to_string(val_loader.position())}}});
        saved_at = step;
      }
    }
    if (step == started_at) {  // resumed at or past --num-batches: evaluate the checkpoint
      model.eval();
      double val_loss = 0;
      for (long v = 0; v < o.val_batches; ++v) val_loss += model(val_loader.next()).item() / double(o.val_batches);
      val_loss = comm.mean(val_loss);
      if (root)
        std::printf("step %ld: validation loss %.4f, %.4f bits per character (%ld batches)\n", step, val_loss,
                  val_loss / std::log(2.0), o.val_batches);
      write_row(step, std::nullopt, val_loss, std::nullopt);
    }
    if (terminal) std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ntrain_enwik8%s: %s\n",
                 comm.size() > 1 ? (" (rank " + std::to_string(comm.rank()) + ")").c_str() : "", e.what());
    return 1;
  }
  return 0;
}
