#pragma once
// Data-parallel training of models on the CUDA backend: gradients, parameters and broadcasts over NCCL, on the
// device, while MPI (Communicator) still starts the job, numbers the ranks and carries the few host-side values
// (the model signature, losses). PyTorch's DDP with backend="nccl", in xtr's terms:
//
//   auto comm = xtr::distributed::Communicator::from_environment();  // mpirun -np N (one GPU per rank), or one process
//   xtr::distributed::NcclCommunicator gpus(comm);                   // picks this rank's GPU: before any model
//   Model model(Net(config));                                        // TransformerWrapper<..., Cuda<float>>
//   xtr::distributed::DataParallel dp(gpus, model, batch_size);      // the same DataParallel as over MPI
//
// The host API of kernels/nccl.cpp (library xtr::nccl, built where nvcc and NCCL are found): no NCCL or CUDA header
// here, so this file compiles with the host compiler alone. Every collective runs on the communicator's own stream
// (non-blocking with respect to the default stream the model's kernels use), so a gradient bucket's all-reduce
// overlaps the rest of the backward. Every wait is bounded by the Communicator's timeout: past it the NCCL
// communicator is aborted (ncclCommAbort) and the job ends through the Communicator (MPI_Abort), naming the operation.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "xtr/core/error.hpp"
#include "xtr/distributed/communicator.hpp"

namespace xtr::distributed {

namespace nccl {

/// ncclUniqueId's bytes (NCCL_UNIQUE_ID_BYTES = 128): made by rank 0, broadcast to every rank over MPI.
struct UniqueId {
  std::array<unsigned char, 128> bytes{};
};
/// The element types and reductions the data-parallel code asks for.
enum class Type { f32, f64 };
enum class Reduction { sum, average };

struct Comm;  // an NCCL communicator, its stream and its device (kernels/nccl.cpp)

/// CUDA devices usable here (0 without a driver or a device; never throws).
[[nodiscard]] int device_count();
/// NCCL's version as it reports it (e.g. 22805 for 2.28.5).
[[nodiscard]] int version();
/// A fresh id (ncclGetUniqueId); throws xtr::Error "no CUDA device at run time ..." without a device.
[[nodiscard]] UniqueId make_unique_id();
/// Joins the communicator of `size` ranks named by `id` as `rank`, on `device`, within `timeout_seconds` (a
/// non-blocking init, polled). Throws xtr::Error naming NCCL's reason, or the timeout.
[[nodiscard]] Comm* create(const UniqueId& id, int rank, int size, int device, double timeout_seconds);
/// Aborts outstanding work (ncclCommAbort) or finalizes and frees; never throws.
void destroy(Comm* comm, bool abort) noexcept;
/// Enqueues an in-place all-reduce of `count` elements at `data` (device or managed memory) on comm's stream.
void all_reduce(Comm* comm, void* data, std::int64_t count, Type type, Reduction op);
/// Enqueues a broadcast of `bytes` at `data` (device or managed memory) from `root` on comm's stream.
void broadcast(Comm* comm, void* data, std::int64_t bytes, int root);
/// Waits until everything enqueued on comm's stream has finished. False when `timeout_seconds` passed first (the
/// work is still outstanding: abort the communicator); throws xtr::Error on an NCCL or CUDA failure.
[[nodiscard]] bool wait(Comm* comm, double timeout_seconds);

/// The rank of this process among those of its machine: the launcher's local rank (Open MPI, MPICH, Slurm,
/// torchrun's LOCAL_RANK), else the global rank (one machine).
[[nodiscard]] inline int local_rank(int rank) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"})
    if (const char* text = std::getenv(name)) {
      char* end = nullptr;
      const long v = std::strtol(text, &end, 10);
      require(end != text && *end == '\0' && v >= 0 && v < (1 << 20), name, "='", text,
              "' is not a local rank (an integer in [0, 2^20))");
      return int(v);
    }
  return rank;
}

}  // namespace nccl

/// The ranks of a Communicator, joined into one NCCL communicator: one GPU per rank (device = local rank modulo the
/// devices of the machine; XTR_CUDA_DEVICE overrides), made current for this process. Construct it before any model
/// on Cuda<float>, so the model's memory lives on that device. Moves are not needed and not allowed.
class NcclCommunicator {
 public:
  explicit NcclCommunicator(const Communicator& host) : host_(&host) {
    const int devices = nccl::device_count();
    if (devices == 0) (void)nccl::make_unique_id();  // throws "no CUDA device at run time ..." on every rank
    device_ = nccl::local_rank(host.rank()) % devices;
    if (const char* text = std::getenv("XTR_CUDA_DEVICE")) {
      char* end = nullptr;
      const long v = std::strtol(text, &end, 10);
      require(end != text && *end == '\0' && v >= 0 && v < devices, "XTR_CUDA_DEVICE='", text,
              "' must name a device in [0, ", devices, ")");
      device_ = int(v);
    }
    nccl::UniqueId id;
    if (host.is_root()) id = nccl::make_unique_id();
    host.broadcast(std::span<unsigned char>(id.bytes));
    comm_ = nccl::create(id, host.rank(), host.size(), device_, host.timeout_seconds());
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() { nccl::destroy(comm_, false); }

  [[nodiscard]] const Communicator& host() const { return *host_; }
  [[nodiscard]] int rank() const { return host_->rank(); }
  [[nodiscard]] int size() const { return host_->size(); }
  [[nodiscard]] bool is_root() const { return host_->is_root(); }
  [[nodiscard]] bool uses_mpi() const { return host_->uses_mpi(); }
  [[nodiscard]] double timeout_seconds() const { return host_->timeout_seconds(); }
  /// The CUDA device this rank uses.
  [[nodiscard]] int device() const { return device_; }

  void barrier() const { host_->barrier(); }
  /// data (device or managed memory) on every rank ← data on `root`, over NCCL; returns when it has arrived.
  template <class T>
  void broadcast(std::span<T> data, int root = 0) const {
    if (data.empty()) return;
    nccl::broadcast(comm_, const_cast<std::remove_const_t<T>*>(data.data()), std::int64_t(data.size_bytes()), root);
    wait("broadcast of " + std::to_string(data.size_bytes()) + " bytes");
  }
  // Host values (a signature, losses): over the host communicator.
  [[nodiscard]] std::string broadcast_string(std::string text) const {
    return host_->broadcast_string(std::move(text));
  }
  void all_reduce_sum(std::span<double> values) const { host_->all_reduce_sum(values); }
  [[nodiscard]] double mean(double value) const { return host_->mean(value); }
  [[nodiscard]] double max(double value) const { return host_->max(value); }

  /// Ends the whole job: the NCCL communicator is aborted first, so no kernel waits for a rank that is gone.
  [[noreturn]] void abort(const std::string& message, int code = 2) const {
    nccl::destroy(std::exchange(comm_, nullptr), true);
    host_->abort(message, code);
  }

  /// Starts the in-place average over ranks of `count` gradients at `data` (device or managed memory): NCCL's ncclAvg,
  /// enqueued on the communicator's stream; wait() completes it.
  template <class T>
  void start_average(T* data, std::int64_t count) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "xtr: NCCL averages float or double");
    nccl::all_reduce(comm_, data, count, std::is_same_v<T, float> ? nccl::Type::f32 : nccl::Type::f64,
                     nccl::Reduction::average);
  }
  /// Waits for every collective started so far; past the timeout, aborts the job naming `what`.
  void wait(const std::string& what) const {
    if (!nccl::wait(comm_, host_->timeout_seconds()))
      abort(what + " did not complete within " + std::to_string(int(host_->timeout_seconds())) +
            " s: another rank has died or hangs (XTR_DISTRIBUTED_TIMEOUT sets the limit)");
  }

 private:
  const Communicator* host_;
  mutable nccl::Comm* comm_ = nullptr;
  int device_ = 0;
};

}  // namespace xtr::distributed
