#pragma once
// The processes of a data-parallel run: rank, size, barrier, broadcast, all-reduce, over MPI (Open MPI from Debian,
// launched with mpirun). Compiled with XTR_WITH_MPI (the CMake target xtr::distributed defines it and links MPI);
// without it, or when the program was not started by an MPI launcher, the communicator is one process and every
// collective is the identity, so a program written for N processes runs unchanged as one.
//
// Every wait is bounded: a collective that does not complete within `timeout` (a rank died or hangs) prints which
// operation and which rank waited, then aborts the whole job with MPI_Abort, so no process hangs forever.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "xtr/core/error.hpp"

#if defined(XTR_WITH_MPI)
#include <mpi.h>
#endif

namespace xtr::distributed {

/// Whether this process was started by an MPI launcher (mpirun / mpiexec of Open MPI, MPICH or a PMIx runtime).
[[nodiscard]] inline bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

/// Seconds a collective may wait before the job is aborted: XTR_DISTRIBUTED_TIMEOUT when set (seconds, > 0), else
/// 600 (PyTorch's NCCL default is 10 minutes too).
[[nodiscard]] inline double default_timeout_seconds() {
  if (const char* text = std::getenv("XTR_DISTRIBUTED_TIMEOUT")) {
    char* end = nullptr;
    const double v = std::strtod(text, &end);
    require(end != text && *end == '\0' && v > 0 && v <= 86400, "XTR_DISTRIBUTED_TIMEOUT='", text,
            "' must be a number of seconds in (0, 86400]");
    return v;
  }
  return 600;
}

class Communicator {
 public:
  /// One process: rank 0 of 1.
  Communicator() = default;

  /// MPI_COMM_WORLD when launched by an MPI launcher and built with MPI (MPI is initialised here and finalised by
  /// the destructor), one process otherwise.
  [[nodiscard]] static Communicator from_environment(double timeout_seconds = default_timeout_seconds()) {
    Communicator c;
    c.timeout_ = timeout_seconds;
#if defined(XTR_WITH_MPI)
    if (launched_by_mpi()) {
      int initialised = 0;
      MPI_Initialized(&initialised);
      if (!initialised) {
        int provided = 0;
        MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
        c.owns_mpi_ = true;
      }
      c.mpi_ = true;
      MPI_Comm_rank(MPI_COMM_WORLD, &c.rank_);
      MPI_Comm_size(MPI_COMM_WORLD, &c.size_);
    }
#endif
    return c;
  }

  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  Communicator(Communicator&& o) noexcept { *this = std::move(o); }
  Communicator& operator=(Communicator&& o) noexcept {
    rank_ = o.rank_;
    size_ = o.size_;
    mpi_ = o.mpi_;
    owns_mpi_ = o.owns_mpi_;
    timeout_ = o.timeout_;
    o.owns_mpi_ = false;
    return *this;
  }
  ~Communicator() {
#if defined(XTR_WITH_MPI)
    if (owns_mpi_) {
      int finalised = 0;
      MPI_Finalized(&finalised);
      if (!finalised) MPI_Finalize();
    }
#endif
  }

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] bool is_root() const { return rank_ == 0; }
  /// Whether collectives go over MPI (false: one process, no MPI calls).
  [[nodiscard]] bool uses_mpi() const { return mpi_; }
  [[nodiscard]] double timeout_seconds() const { return timeout_; }

  void barrier() const {
#if defined(XTR_WITH_MPI)
    if (!mpi_) return;
    MPI_Request request;
    MPI_Ibarrier(MPI_COMM_WORLD, &request);
    wait(request, "barrier");
#endif
  }

  /// data on every rank ← data on `root`.
  template <class T>
  void broadcast(std::span<T> data, int root = 0) const {
#if defined(XTR_WITH_MPI)
    if (!mpi_ || data.empty()) return;
    auto* bytes = reinterpret_cast<unsigned char*>(data.data());
    std::size_t left = data.size_bytes();
    std::vector<MPI_Request> requests;
    for (std::size_t at = 0; left > 0;) {  // MPI counts are int: chunks of 1 GiB
      const std::size_t n = std::min<std::size_t>(left, std::size_t(1) << 30);
      requests.emplace_back();
      MPI_Ibcast(bytes + at, int(n), MPI_BYTE, root, MPI_COMM_WORLD, &requests.back());
      at += n;
      left -= n;
    }
    wait_all(requests, "broadcast");
#else
    (void)data;
    (void)root;
#endif
  }

  /// `text` on every rank ← `text` on rank 0.
  [[nodiscard]] std::string broadcast_string(std::string text) const {
    if (!mpi_) return text;
    std::uint64_t n = text.size();
    broadcast(std::span(&n, 1));
    text.resize(n);
    broadcast(std::span(text.data(), text.size()));
    return text;
  }

  /// In place: every rank ends with the sum over ranks.
  void all_reduce_sum(std::span<double> values) const {
#if defined(XTR_WITH_MPI)
    if (!mpi_ || values.empty()) return;
    MPI_Request request;
    MPI_Iallreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &request);
    wait(request, "all-reduce of " + std::to_string(values.size()) + " values");
#else
    (void)values;
#endif
  }
  /// The mean over ranks of `value`.
  [[nodiscard]] double mean(double value) const {
    all_reduce_sum(std::span(&value, 1));
    return value / double(size_);
  }
  /// The largest `value` over ranks.
  [[nodiscard]] double max(double value) const {
#if defined(XTR_WITH_MPI)
    if (!mpi_) return value;
    MPI_Request request;
    MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, &request);
    wait(request, "all-reduce (max)");
#endif
    return value;
  }

  /// Ends the whole job (every rank) after printing `message` on this rank's stderr; for errors that one rank
  /// detects and the others would otherwise wait on forever.
  [[noreturn]] void abort(const std::string& message, int code = 2) const {
    std::fprintf(stderr, "xtr::distributed: rank %d of %d: %s\n", rank_, size_, message.c_str());
    std::fflush(stderr);
#if defined(XTR_WITH_MPI)
    if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::exit(code);
  }

#if defined(XTR_WITH_MPI)
  /// Whether every request has completed (progresses MPI; never blocks).
  [[nodiscard]] bool test_all(std::span<MPI_Request> requests) const {
    if (requests.empty()) return true;
    int done = 0;
    MPI_Testall(int(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE);
    return done != 0;
  }
  /// Waits for every request; past the timeout, aborts the job naming `what`.
  void wait_all(std::span<MPI_Request> requests, const std::string& what) const {
    // Spin on MPI_Testall (each call progresses the transfers, as MPI_Wait would) for the first second; after that
    // the partner is late, not busy, so poll every 100 µs and leave the core to others.
    const auto start = std::chrono::steady_clock::now();
    for (int spins = 0; !test_all(requests); ++spins) {
      if ((spins & 255) != 0) continue;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > timeout_)
        abort(what + " did not complete within " + std::to_string(int(timeout_)) +
              " s: another rank has died or hangs (XTR_DISTRIBUTED_TIMEOUT sets the limit)");
      if (waited > 1.0) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  void wait(MPI_Request& request, const std::string& what) const { wait_all(std::span(&request, 1), what); }
#endif

 private:
  int rank_ = 0, size_ = 1;
  bool mpi_ = false, owns_mpi_ = false;
  double timeout_ = 600;
};

}  // namespace xtr::distributed
