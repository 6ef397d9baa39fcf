#pragma once
// Data-parallel training (PyTorch DDP's design, on MPI): every rank holds the whole model and trains on its slice
// of the global batch; gradients are averaged over ranks in buckets whose all-reduce starts during backward, as
// soon as the layers behind a bucket have finished (the models report that through on_gradients_ready), so the
// communication of the last layers overlaps the backward of the first ones. A model on the Cpu backend is reduced over
// MPI in host memory (Communicator); one on Cuda<float> over NCCL on the device (NcclCommunicator,
// distributed/nccl.hpp): the same DataParallel, templated on the communicator.
//
//   auto comm = xtr::distributed::Communicator::from_environment();     // mpirun -np N …, or one process
//   xtr::distributed::DataParallel dp(comm, model, batch_size);          // per-rank batch; checks, broadcasts
//   xtr::BatchLoader loader(train, batch_size, seq_len, seed, 1, dp.shard());
//   for (micro …) dp.backward(model(loader.next()) / accumulate, /*sync=*/micro == accumulate - 1);
//   xtr::clip_grad_norm(model.parameters(), 0.5);  optimizer.step();  optimizer.zero_grad();
//
// Guarantees (docs/distributed.md): N ranks × batch B compute what one process with batch N·B computes — the same
// windows (BatchLoader's shard), the same dropout masks (rows addressed by their global index), gradients averaged
// over ranks (each rank's loss is the mean over its rows, so the average is the global mean whenever every row
// counts the same number of tokens: language modelling, the copy task) — up to the order of float additions.
#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "xtr/core/parameters.hpp"
#include "xtr/data/text_dataset.hpp"
#include "xtr/distributed/communicator.hpp"
#include "xtr/training/checkpoint.hpp"
#include "xtr/wrappers/loss.hpp"

namespace xtr::distributed {

struct DataParallelOptions {
  double bucket_mib = 4;        // gradient bucket size (PyTorch DDP's bucket_cap_mb is 25, which makes the small
                                // config one bucket, started only at the end of backward; bench/RESULTS.md)
  bool overlap = true;          // start a bucket's all-reduce during backward (false: all of them after backward)
  std::string run_signature;    // compared across ranks too: what else must agree (batch size, sequence length, …)
};

/// What the last synchronised backward cost: the all-reduce time not hidden behind backward is `exposed_seconds`.
struct ReduceStats {
  double backward_seconds = 0;  // the backward itself, all-reduces started inside it included
  double exposed_seconds = 0;   // waiting after backward for the all-reduces to finish, and averaging
  int buckets = 0;
  int started_during_backward = 0;
  double megabytes = 0;         // gradient bytes each rank contributes
};

namespace detail {

/// Every net inside a model (TransformerWrapper; an AutoregressiveWrapper's or NonAutoregressiveWrapper's net; an
/// XTransformer's decoder and encoder, in the order their backward runs).
template <class Model, class F>
void for_each_net(Model& model, F&& f) {
  if constexpr (requires { model.encoder.on_gradients_ready(nullptr); model.decoder.net.on_gradients_ready(nullptr); }) {
    f(model.decoder.net);
    f(model.encoder);
  } else if constexpr (requires { model.net.on_gradients_ready(nullptr); }) {
    f(model.net);
  } else {
    static_assert(requires { model.on_gradients_ready(nullptr); },
                  "xtr: DataParallel trains a TransformerWrapper, an AutoregressiveWrapper, a NonAutoregressiveWrapper "
                  "or an XTransformer; wrap other models' nets in one of those");
    f(model);
  }
}

template <class T>
inline constexpr bool is_float_or_double = std::is_same_v<T, float> || std::is_same_v<T, double>;

/// Whether a communicator reduces gradients on the device (NcclCommunicator: start_average + wait) rather than over
/// MPI in host memory (Communicator).
template <class Comm>
inline constexpr bool reduces_on_device = requires(const Comm& c, float* p) {
  c.start_average(p, std::int64_t(0));
  c.wait(std::string());
};

}  // namespace detail

/// What a communicator must offer DataParallel: ranks, the host-side collectives of the model check and the losses,
/// and a parameter broadcast (Communicator over MPI; NcclCommunicator, distributed/nccl.hpp, over NCCL).
template <class Comm>
concept DataParallelCommunicator = requires(const Comm& c, std::span<float> values, std::span<double> numbers) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  { c.uses_mpi() } -> std::convertible_to<bool>;
  { c.broadcast_string(std::string()) } -> std::convertible_to<std::string>;
  { c.mean(0.0) } -> std::convertible_to<double>;
  { c.max(0.0) } -> std::convertible_to<double>;
  c.broadcast(values);
  c.all_reduce_sum(numbers);
};

/// Averages a ParameterStore's gradients over the ranks of a communicator, bucket by bucket: MPI_Iallreduce on host
/// memory (Communicator), or NCCL's average on the device (NcclCommunicator).
template <class T, DataParallelCommunicator Comm = Communicator>
class GradientReducer {
  static_assert(detail::is_float_or_double<T>, "xtr: GradientReducer all-reduces float or double gradients");
  static constexpr bool on_device = detail::reduces_on_device<Comm>;

 public:
  GradientReducer(const Comm& comm, ParameterStore<T>& params, DataParallelOptions options)
      : comm_(&comm), params_(&params), options_(options) {
    require(options.bucket_mib > 0 && options.bucket_mib <= 1024, "bucket_mib ", options.bucket_mib,
            " must lie in (0, 1024]");
    const Index total = params.count();
    const Index per_bucket = std::max<Index>(1, Index(options.bucket_mib * 1048576.0 / double(sizeof(T))));
    // buckets from the end of the store: the last parameters' gradients are final first
    for (Index end = total; end > 0;) {
      const Index begin = std::max<Index>(0, end - per_bucket);
      buckets_.push_back({begin, end});
      end = begin;
    }
    std::reverse(buckets_.begin(), buckets_.end());
  }

  /// The next backward reports its finished ranges here (ready()); finish() completes the reduction.
  void arm() {
    for (auto& b : buckets_) {
      b.ready = 0;
      b.started = false;
    }
    armed_ = true;
    started_during_backward_ = 0;
    backward_start_ = std::chrono::steady_clock::now();
  }
  [[nodiscard]] bool armed() const { return armed_; }

  /// Gradients [begin, end) of the store are final: start every bucket that is now complete.
  void ready(Index begin, Index end) {
    if (!armed_ || !options_.overlap || !reduces()) return;
    // buckets are sorted and disjoint: find the first one that ends after begin
    auto it = std::upper_bound(buckets_.begin(), buckets_.end(), begin,
                               [](Index v, const Bucket& b) { return v < b.end; });
    for (; it != buckets_.end() && it->begin < end; ++it) {
      it->ready += std::min(end, it->end) - std::max(begin, it->begin);
      if (it->ready == it->end - it->begin && !it->started) {
        start(*it);
        ++started_during_backward_;
      }
    }
    progress();
  }

  /// Starts the buckets not started yet, waits for all of them and divides by the number of ranks.
  void finish() {
    const auto backward_end = std::chrono::steady_clock::now();
    if (reduces()) {
      for (auto& b : buckets_)
        if (!b.started) start(b);
    }
    if constexpr (on_device) {
      comm_->wait("the gradient all-reduce (" + std::to_string(buckets_.size()) + " buckets)");  // averaged by NCCL
    } else if (reduces()) {
#if defined(XTR_WITH_MPI)
      std::vector<MPI_Request> requests;
      requests.reserve(buckets_.size());
      for (auto& b : buckets_) requests.push_back(b.request);
      comm_->wait_all(requests, "the gradient all-reduce (" + std::to_string(buckets_.size()) + " buckets)");
#endif
      const T scale = T(1) / T(comm_->size());
      T* g = params_->grads().data();
      const Index n = params_->count();
#pragma omp parallel for simd schedule(static)
      for (Index i = 0; i < n; ++i) g[i] *= scale;
    }
    const auto end = std::chrono::steady_clock::now();
    stats_.backward_seconds = std::chrono::duration<double>(backward_end - backward_start_).count();
    stats_.exposed_seconds = std::chrono::duration<double>(end - backward_end).count();
    stats_.buckets = int(buckets_.size());
    stats_.started_during_backward = started_during_backward_;
    stats_.megabytes = double(params_->count()) * double(sizeof(T)) / 1e6;
    armed_ = false;
  }

  [[nodiscard]] const ReduceStats& stats() const { return stats_; }
  [[nodiscard]] int buckets() const { return int(buckets_.size()); }

 private:
  struct Bucket {
    Index begin = 0, end = 0, ready = 0;
    bool started = false;
#if defined(XTR_WITH_MPI)
    MPI_Request request = MPI_REQUEST_NULL;
#endif
  };

  /// Whether gradients leave this process: always over NCCL (one rank included), over MPI when launched by it.
  [[nodiscard]] bool reduces() const {
    if constexpr (on_device)
      return true;
    else
      return comm_->uses_mpi();
  }

  void start(Bucket& b) {
    b.started = true;
    if constexpr (on_device) {
      comm_->start_average(params_->grads().data() + b.begin, std::int64_t(b.end - b.begin));
      return;
    }
#if defined(XTR_WITH_MPI)
    T* g = params_->grads().data() + b.begin;
    MPI_Iallreduce(MPI_IN_PLACE, g, int(b.end - b.begin), std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM,
                   MPI_COMM_WORLD, &b.request);
#endif
  }
  /// Lets MPI move the started all-reduces along (Open MPI progresses non-blocking collectives inside MPI calls).
  void progress() {
    if constexpr (on_device) return;  // NCCL runs on its own stream
#if defined(XTR_WITH_MPI)
    for (auto& b : buckets_)
      if (b.started && b.request != MPI_REQUEST_NULL) {
        int done = 0;
        MPI_Test(&b.request, &done, MPI_STATUS_IGNORE);
      }
#endif
  }

  const Comm* comm_;
  ParameterStore<T>* params_;
  DataParallelOptions options_;
  std::vector<Bucket> buckets_;
  bool armed_ = false;
  int started_during_backward_ = 0;
  std::chrono::steady_clock::time_point backward_start_{};
  ReduceStats stats_;
};

/// A model trained data-parallel over a communicator's ranks. At construction: checks that every rank built the
/// same model (configuration, parameter names and shapes, options.run_signature), copies rank 0's parameters to
/// every rank, tells the model which rows of the global batch it sees, and hooks the gradient reducer into its
/// backward. The model and communicator must outlive this object.
template <class Model, DataParallelCommunicator Comm = Communicator>
class DataParallel {
 public:
  using scalar = std::remove_cvref_t<decltype(std::declval<Model&>().parameters().values().data()[0])>;

  DataParallel(const Comm& comm, Model& model, Index batch_size_per_rank, DataParallelOptions options = {})
      : comm_(&comm), model_(&model), batch_(batch_size_per_rank),
        reducer_(comm, model.parameters(), options) {
    require(batch_size_per_rank >= 1, "batch size per rank ", batch_size_per_rank, " must be at least 1");
    check_same_model(options.run_signature);
    broadcast_parameters();
    detail::for_each_net(model, [&](auto& net) {
      net.set_sequence_offset(Index(comm.rank()) * batch_size_per_rank);
      net.on_gradients_ready([this](Index begin, Index end) { reducer_.ready(begin, end); });
    });
  }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;
  ~DataParallel() {
    detail::for_each_net(*model_, [&](auto& net) {
      net.on_gradients_ready(nullptr);
      net.set_sequence_offset(0);
    });
  }

  [[nodiscard]] const Comm& communicator() const { return *comm_; }
  [[nodiscard]] int rank() const { return comm_->rank(); }
  [[nodiscard]] int size() const { return comm_->size(); }
  [[nodiscard]] Index batch_size_per_rank() const { return batch_; }
  [[nodiscard]] Index global_batch_size() const { return batch_ * comm_->size(); }
  /// This rank's slice of every global batch, for BatchLoader.
  [[nodiscard]] BatchShard shard() const { return {comm_->rank(), comm_->size()}; }

  /// loss.backward(); with `sync` (the last micro-batch of a step), the gradients are averaged over ranks when it
  /// returns, their all-reduce started bucket by bucket during the backward. Without, they accumulate locally
  /// (PyTorch DDP's no_sync()).
  void backward(const Loss& loss, bool sync = true) {
    if (sync) reducer_.arm();
    loss.backward();
    if (sync) reducer_.finish();
  }
  /// What the last synchronised backward cost.
  [[nodiscard]] const ReduceStats& stats() const { return reducer_.stats(); }

  /// Every rank ← rank 0's parameters (after construction they already agree; after loading a checkpoint on every
  /// rank they agree too: this is for state that only rank 0 has).
  void broadcast_parameters() {
    auto& v = model_->parameters().values();
    comm_->broadcast(std::span(v.data(), std::size_t(v.size())));
  }

  /// Whether every rank holds bit-identical parameters (a checksum compared over ranks; for checkpoints and tests).
  [[nodiscard]] bool parameters_in_sync() const {
    const auto& v = model_->parameters().values();
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the bytes
    const auto* bytes = reinterpret_cast<const unsigned char*>(v.data());
    for (std::size_t i = 0, n = std::size_t(v.size()) * sizeof(scalar); i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
    const double mine = double(h >> 11);  // 53 bits: exact in a double
    return comm_->max(mine) == mine && -comm_->max(-mine) == mine;
  }

 private:
  /// One line per fact that must agree: each net's type and configuration, each parameter's name and shape.
  std::string signature(const std::string& run) const {
    std::string s;
    detail::for_each_net(*model_, [&](auto& net) {
      s += net.describe() + "\n" + to_json(net.config()).dump() + "\n";
    });
    for (const auto& e : model_->parameters().entries()) s += e.name + " " + e.shape.str() + "\n";
    s += "run: " + run + "\n";
    return s;
  }
  void check_same_model(const std::string& run) const {
    const std::string mine = signature(run);
    const std::string root = comm_->broadcast_string(mine);
    double differs = root == mine ? 0.0 : 1.0;
    std::string first_difference;
    if (differs != 0) {
      std::size_t at = 0;
      while (at < mine.size() && at < root.size() && mine[at] == root[at]) ++at;
      // the line holding the first difference, from up to 60 characters before it to 40 after
      const auto excerpt = [&](const std::string& text) {
        const std::size_t nl = at == 0 ? std::string::npos : text.rfind('\n', at - 1);
        const std::size_t line = nl == std::string::npos ? 0 : nl + 1;
        const std::size_t from = std::max(line, at > 60 ? at - 60 : 0);
        std::size_t to = std::min(text.find('\n', at), std::min(text.size(), at + 40));
        if (to < from) to = from;
        return (from > line ? "…" : "") + text.substr(from, to - from) + (to < text.find('\n', from) ? "…" : "");
      };
      first_difference = "rank 0 has '" + excerpt(root) + "', rank " + std::to_string(comm_->rank()) + " has '" +
                         excerpt(mine) + "'";
    }
    const double ranks_that_differ = comm_->mean(differs) * comm_->size();
    if (ranks_that_differ > 0) {
      throw Error("xtr::distributed: " + std::to_string(int(ranks_that_differ)) + " of " +
                  std::to_string(comm_->size()) +
                  " ranks built a model that differs from rank 0's (configuration, parameter shapes or run settings)" +
                  (differs != 0 ? ": " + first_difference : std::string(" (see their messages)")));
    }
  }

  const Comm* comm_;
  Model* model_;
  Index batch_;
  GradientReducer<scalar, Comm> reducer_;
};

}  // namespace xtr::distributed
