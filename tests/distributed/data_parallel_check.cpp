// Data-parallel training checks, run under mpirun (tests/distributed/run.sh; ctest label distributed):
//
//   data_parallel_check equivalence   N ranks × batch B for K steps (gradient accumulation 2, clipping, dropout on
//                                     and off, float and double) end with the parameters one process with batch N·B
//                                     computes; rank 0 computes that reference itself. Also: every rank holds the same
//                                     parameters, logged losses agree, buckets start during backward, and a
//                                     checkpoint written by rank 0 resumes on every rank to the same next step.
//   data_parallel_check mismatch      rank 1 builds a wider model: every rank stops at construction with an error
//                                     naming the difference.
//   data_parallel_check die           rank 1 kills itself (SIGKILL) in step 2: the job ends with an error, no hang.
//   data_parallel_check hang          rank 1 sleeps in step 2: rank 0's wait times out (XTR_DISTRIBUTED_TIMEOUT) and
//                                     aborts the job with a message naming the operation.
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <unistd.h>

#include "training_setup.hpp"
#include "xtr/distributed.hpp"
#include "xtr/xtr.hpp"

namespace {

using namespace xtr;
namespace dist = xtr::distributed;


using namespace xtr::testing::data_parallel;

/// K steps of the training loop train_enwik8 runs; with `dp`, data-parallel. Returns the per-step global losses.
template <class Model, class DP>
std::vector<double> train(Model& model, BatchLoader& loader, int steps, DP* dp,
                          const dist::Communicator& comm) {
  auto optimizer = Adam(model.parameters(), {.lr = 3e-3});
  std::vector<double> losses;
  model.train();
  for (int s = 0; s < steps; ++s) {
    const double loss_sum = train_step(model, loader, optimizer, dp);
    losses.push_back(dp ? comm.mean(loss_sum) : loss_sum);
  }
  return losses;
}

template <class T>
double max_difference(const ParameterStore<T>& a, const ParameterStore<T>& b) {
  double worst = 0;
  for (Index i = 0; i < a.count(); ++i)
    worst = std::max(worst, std::fabs(double(a.values().data()[i]) - double(b.values().data()[i])));
  return worst;
}

template <class Scalar>
void equivalence(const dist::Communicator& comm, double dropout, double tolerance) {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cpu<Scalar>>;
  using Model = AutoregressiveWrapper<Net>;
  const std::string what = std::string(sizeof(Scalar) == 4 ? "float" : "double") + ", dropout " +
                           std::to_string(dropout).substr(0, 3);
  const TextDataset text = synthetic_text();
  constexpr int steps = 4;

  Model model(Net(small_config(dropout)));
  // small buckets, so that several start during backward
  dist::DataParallel dp(comm, model, kBatch, {.bucket_mib = 0.01});
  BatchLoader loader(text, kBatch, kSeqLen, 11, 1, dp.shard());
  const auto losses = train(model, loader, steps, &dp, comm);
  check(dp.parameters_in_sync(), what + ": every rank holds the same parameters after " + std::to_string(steps) +
                                     " steps");
  if (comm.is_root()) {
    check(dp.stats().started_during_backward > 0 && dp.stats().buckets > 1,
          what + ": " + std::to_string(dp.stats().started_during_backward) + " of " +
              std::to_string(dp.stats().buckets) + " gradient buckets started their all-reduce during backward");
    Model reference(Net(small_config(dropout)));
    BatchLoader whole(text, kBatch * comm.size(), kSeqLen, 11, 1);
    dist::Communicator one;  // the single process
    const auto reference_losses = train(reference, whole, steps, static_cast<dist::DataParallel<Model>*>(nullptr), one);
    const double diff = max_difference(model.parameters(), reference.parameters());
    double loss_diff = 0;
    for (int s = 0; s < steps; ++s) loss_diff = std::max(loss_diff, std::fabs(losses[s] - reference_losses[s]));
    char line[300];
    std::snprintf(line, sizeof line,
                  "%s: %d ranks x batch %ld = 1 process x batch %ld after %d steps (accumulation %ld, clip 0.5): "
                  "max |parameter difference| %.3g <= %.0e, max |loss difference| %.3g",
                  what.c_str(), comm.size(), long(kBatch), long(kBatch * comm.size()), steps, long(kAccumulate), diff,
                  tolerance, loss_diff);
    check(diff <= tolerance && loss_diff <= tolerance * 10, line);
  }
  comm.barrier();
}

/// A checkpoint written by rank 0 mid-run, loaded by every rank, continues exactly like the run that wrote it.
void resume(const dist::Communicator& comm) {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
  using Model = AutoregressiveWrapper<Net>;
  const TextDataset text = synthetic_text();
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("xtr_dp_resume_" + std::to_string(comm.rank() == 0 ? getpid() : 0) + ".safetensors"))
                               .string();
  const std::string shared = comm.broadcast_string(path);
  Model model(Net(small_config(0.1)));
  dist::DataParallel dp(comm, model, kBatch);
  BatchLoader loader(text, kBatch, kSeqLen, 5, 1, dp.shard());
  auto optimizer = Adam(model.parameters(), {.lr = 3e-3});
  auto step = [&](auto& m, auto& d, auto& l, auto& o) {
    m.train();
    d.backward(m(l.next()), true);
    clip_grad_norm(m.parameters(), 0.5);
    o.step();
    o.zero_grad();
  };
  for (int s = 0; s < 2; ++s) step(model, dp, loader, optimizer);
  if (comm.is_root()) save_checkpoint(shared, model.net, optimizer, {.step = 2, .data_position = loader.position()});
  comm.barrier();
  step(model, dp, loader, optimizer);  // step 3 of the run that saved

  Model resumed(Net(small_config(0.1)));
  auto optimizer2 = Adam(resumed.parameters());
  const auto state = load_checkpoint(shared, resumed.net, optimizer2);
  dist::DataParallel dp2(comm, resumed, kBatch);
  BatchLoader loader2(text, kBatch, kSeqLen, 5, 1, dp2.shard());
  loader2.seek(state.data_position);
  step(resumed, dp2, loader2, optimizer2);  // step 3 of the resumed run
  const double diff = max_difference(model.parameters(), resumed.parameters());
  check(comm.max(diff) == 0, "a checkpoint written by rank 0 and loaded by every rank resumes exactly (max difference " +
                                 std::to_string(comm.max(diff)) + ")");
  comm.barrier();
  if (comm.is_root()) std::filesystem::remove(shared);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "equivalence";
  auto comm = dist::Communicator::from_environment();
  try {
    if (mode == "equivalence") {
      if (comm.is_root()) std::printf("%d ranks\n", comm.size());
      equivalence<double>(comm, 0.0, 1e-10);
      equivalence<double>(comm, 0.1, 1e-10);
      equivalence<float>(comm, 0.0, 2e-5);
      equivalence<float>(comm, 0.1, 2e-5);
      resume(comm);
      const double all = comm.max(double(failures));
      if (comm.is_root()) std::printf(all == 0 ? "data-parallel training equals one process\n" : "FAILED\n");
      return all == 0 ? 0 : 1;
    }
    using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
    using Model = AutoregressiveWrapper<Net>;
    if (mode == "mismatch") {
      Model model(Net(small_config(0, comm.rank() == 1 ? 48 : 32)));
      dist::DataParallel dp(comm, model, kBatch);
      std::printf("rank %d: no mismatch detected\n", comm.rank());
      return 0;
    }
    if (mode == "die" || mode == "hang") {
      Model model(Net(small_config(0)));
      dist::DataParallel dp(comm, model, kBatch);
      const TextDataset text = synthetic_text();
      BatchLoader loader(text, kBatch, kSeqLen, 1, 1, dp.shard());
      auto optimizer = Adam(model.parameters());
      for (int s = 1; s <= 5; ++s) {
        if (s == 2 && comm.rank() == 1) {
          std::printf("rank 1: %s in step 2\n", mode == "die" ? "killing itself" : "hanging");
          std::fflush(stdout);
          if (mode == "die") std::raise(SIGKILL);
          std::this_thread::sleep_for(std::chrono::seconds(600));
        }
        dp.backward(model(loader.next()), true);
        optimizer.step();
        optimizer.zero_grad();
      }
      std::printf("rank %d: finished 5 steps (expected to be stopped)\n", comm.rank());
      return 0;
    }
    std::fprintf(stderr, "usage: data_parallel_check equivalence|mismatch|die|hang\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", comm.rank(), e.what());
    return 1;
  }
}
