// Data-parallel training over NCCL (include/xtr/distributed/nccl.hpp), ctest cuda.nccl. Without a device: the errors a
// user sees and the interface checks, then "skipped: no CUDA device". With devices, as one process or under
// `mpirun -np N` (one GPU per rank; NCCL refuses two ranks on one GPU):
//   - a broadcast from rank 0 and an average of rank-dependent values, on device memory;
//   - host memory handed to NCCL is refused with a message that names the MPI path;
//   - N ranks × batch B of a Decoder on Cuda<float>, trained 3 steps (accumulation 2, clipping, dropout 0 and 0.1)
//     with DataParallel over NCCL, end with the parameters one process with batch N·B computes on Cuda<float> without
//     DataParallel (every rank computes that reference itself), to float tolerance; buckets start during backward.
// NEVER RUN ON A DEVICE so far (no GPU lent to this work yet).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../tests/distributed/training_setup.hpp"
#include "xtr/backend/cuda/backend.hpp"
#include "xtr/distributed.hpp"
#include "xtr/distributed/nccl.hpp"
#include "xtr/xtr.hpp"

namespace {

using namespace xtr;
using namespace xtr::testing::data_parallel;  // check(), and the model, text and sizes of the MPI checks
namespace dist = xtr::distributed;


template <class F>
bool throws_containing(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const std::exception& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return true;
    std::printf("  (unexpected message: %s)\n", e.what());
    return false;
  }
  return false;
}

static_assert(dist::DataParallelCommunicator<dist::NcclCommunicator>);
static_assert(dist::DataParallelCommunicator<dist::Communicator>);
static_assert(dist::detail::reduces_on_device<dist::NcclCommunicator>);
static_assert(!dist::detail::reduces_on_device<dist::Communicator>);

template <class Model, class DP>
void train(Model& model, BatchLoader& loader, int steps, DP* dp) {
  AdamW<float, Cuda<float>> optimizer(model.parameters(), {.lr = 3e-3});
  model.train();
  for (int s = 0; s < steps; ++s) (void)train_step(model, loader, optimizer, dp);
}

void without_device() {
  dist::Communicator one;
  check(throws_containing([&] { dist::NcclCommunicator gpus(one); }, "no CUDA device at run time"),
        "NcclCommunicator explains that there is no device");
  setenv("LOCAL_RANK", "two", 1);
  check(throws_containing([] { (void)dist::nccl::local_rank(0); }, "LOCAL_RANK='two' is not a local rank"),
        "a malformed LOCAL_RANK is named");
  setenv("LOCAL_RANK", "3", 1);
  check(dist::nccl::local_rank(0) == 3, "LOCAL_RANK gives the local rank");
  unsetenv("LOCAL_RANK");
}

void collectives(const dist::NcclCommunicator& gpus) {
  const int n = 1000;
  float* data = static_cast<float*>(Cuda<float>::memory().allocate(n * sizeof(float)));
  for (int i = 0; i < n; ++i) data[i] = gpus.is_root() ? float(i) : -1.0f;
  gpus.broadcast(std::span(data, n));
  bool same = true;
  for (int i = 0; i < n; ++i) same = same && data[i] == float(i);
  check(same, "a broadcast from rank 0 reaches every rank");
  for (int i = 0; i < n; ++i) data[i] = float(i + gpus.rank());
  gpus.start_average(data, n);
  gpus.wait("the test's average");
  double worst = 0;
  for (int i = 0; i < n; ++i) worst = std::max(worst, std::fabs(data[i] - (i + (gpus.size() - 1) / 2.0)));
  check(worst <= 1e-4,
        "an average over " + std::to_string(gpus.size()) + " ranks (max error " + std::to_string(worst) + ")");
  Cuda<float>::memory().deallocate(data);
  std::vector<float> host(16, 1.0f);
  check(throws_containing([&] { gpus.start_average(host.data(), 16); }, "is host memory"),
        "host memory handed to NCCL is refused, naming the MPI path");
}

void equivalence(const dist::NcclCommunicator& gpus, double dropout) {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cuda<float>>;
  using Model = AutoregressiveWrapper<Net>;
  const std::string what = "Cuda<float>, dropout " + std::to_string(dropout).substr(0, 3);
  const TextDataset text = synthetic_text();
  constexpr int steps = 3;
  Model model(Net(small_config(dropout)));
  dist::DataParallel dp(gpus, model, kBatch, {.bucket_mib = 0.01});
  BatchLoader loader(text, kBatch, kSeqLen, 11, 1, dp.shard());
  train(model, loader, steps, &dp);
  check(dp.parameters_in_sync(), what + ": every rank holds the same parameters");
  check(dp.stats().buckets > 1 && dp.stats().started_during_backward > 0,
        what + ": " + std::to_string(dp.stats().started_during_backward) + " of " + std::to_string(dp.stats().buckets) +
            " buckets started during backward");
  Model reference(Net(small_config(dropout)));
  BatchLoader whole(text, kBatch * gpus.size(), kSeqLen, 11, 1);
  train(reference, whole, steps, static_cast<dist::DataParallel<Model, dist::NcclCommunicator>*>(nullptr));
  double worst = 0;
  for (Index i = 0; i < model.parameters().count(); ++i)
    worst = std::max(worst, std::fabs(double(model.parameters().values().data()[i]) -
                                      double(reference.parameters().values().data()[i])));
  check(worst <= 2e-5, what + ": " + std::to_string(gpus.size()) + " ranks over NCCL = 1 process with the global batch"
                            " (max |parameter difference| " + std::to_string(worst) + ")");
}

}  // namespace

int main() {
  auto comm = dist::Communicator::from_environment();
  try {
    if (dist::nccl::device_count() == 0) {
      without_device();
      if (failures) {
        std::printf("FAILED: %d host-side check(s)\n", failures);
        return 1;
      }
      std::printf("host-side checks passed; skipped: no CUDA device\n");
      return 0;
    }
    std::printf("NCCL %d, %d rank(s)\n", dist::nccl::version(), comm.size());
    dist::NcclCommunicator gpus(comm);
    collectives(gpus);
    equivalence(gpus, 0.0);
    equivalence(gpus, 0.1);
  } catch (const std::exception& e) {
    std::printf("FAIL: %s\n", e.what());
    ++failures;
  }
  const double all = comm.max(double(failures));
  if (comm.is_root()) std::printf(all == 0 ? "all NCCL checks passed\n" : "FAILED: NCCL checks\n");
  return all == 0 ? 0 : 1;
}
