// NCCL for data-parallel training on the CUDA backend (include/xtr/distributed/nccl.hpp): communicator creation with a
// deadline, collectives on the communicator's own non-blocking stream, bounded waits. Host code over NCCL and the
// CUDA runtime; library xtr::nccl.
#include "xtr/distributed/nccl.hpp"

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "device.hpp"

static_assert(sizeof(ncclUniqueId) == sizeof(xtr::distributed::nccl::UniqueId),
              "nccl::UniqueId must hold NCCL_UNIQUE_ID_BYTES");

namespace xtr::distributed::nccl {

struct Comm {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int size = 1;  // ranks (a broadcast's root is checked against it)
};

namespace {

[[noreturn]] void fail(const std::string& what, ncclResult_t status, ncclComm_t comm = nullptr) {
  std::string detail = ncclGetErrorString(status);
  if (comm != nullptr)
    if (const char* last = ncclGetLastError(comm); last != nullptr && *last != '\0') detail += ": " + std::string(last);
  throw Error("xtr: NCCL " + what + " failed: " + detail);
}

/// A non-blocking communicator's calls may return ncclInProgress: poll its state until the call has settled, or
/// until `deadline`. False when the deadline passed.
bool settle(ncclComm_t comm, ncclResult_t status, const std::string& what,
            std::chrono::steady_clock::time_point deadline) {
  for (int spins = 0; status == ncclInProgress; ++spins) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (const ncclResult_t s = ncclCommGetAsyncError(comm, &status); s != ncclSuccess) fail(what, s, comm);
  }
  if (status != ncclSuccess) fail(what, status, comm);
  return true;
}

std::chrono::steady_clock::time_point after(double seconds) {
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

/// Enqueuing a collective on a non-blocking communicator: settles at once in practice; an hour is a bound, not a wait.
void enqueued(Comm* c, ncclResult_t status, const char* what) {
  if (!settle(c->comm, status, what, after(3600)))
    fail(std::string(what) + " (still in progress after an hour)", ncclInProgress);
}

void require_device_memory(const void* data, const char* what) {
  cudaPointerAttributes attributes{};
  XTR_CUDA_CHECK(cudaPointerGetAttributes(&attributes, data));
  require(attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged, "NcclCommunicator: ",
          what, " at ", data,
          " is host memory; NCCL reduces device memory (a model on Cuda<float>); a model on the Cpu backend is "
          "trained data-parallel over MPI with xtr::distributed::Communicator");
}

}  // namespace

int device_count() { return cuda::device_count(); }

int version() {
  int v = 0;
  return ncclGetVersion(&v) == ncclSuccess ? v : 0;
}

UniqueId make_unique_id() {
  cuda::require_device();
  ncclUniqueId id;
  if (const ncclResult_t s = ncclGetUniqueId(&id); s != ncclSuccess) fail("ncclGetUniqueId", s);
  UniqueId out;
  std::memcpy(out.bytes.data(), &id, sizeof id);
  return out;
}

Comm* create(const UniqueId& id, int rank, int size, int device, double timeout_seconds) {
  cuda::require_device();
  require(size >= 1 && rank >= 0 && rank < size, "NcclCommunicator: rank ", rank, " of ", size, " ranks");
  require(device >= 0 && device < cuda::device_count(), "NcclCommunicator: device ", device, " of ",
          cuda::device_count(), " devices");
  XTR_CUDA_CHECK(cudaSetDevice(device));
  int concurrent = 0;
  XTR_CUDA_CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device));
  require(concurrent != 0, "NcclCommunicator: device ", device,
          " has no concurrent managed access (cudaDevAttrConcurrentManagedAccess = 0), which the Cuda backend's "
          "host-side bookkeeping needs while NCCL reduces gradients on its own stream");
  auto* c = new Comm{.size = size};
  try {
    XTR_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    ncclUniqueId nid;
    std::memcpy(&nid, id.bytes.data(), sizeof nid);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // so that a rank that never arrives cannot hang the others: polled against the deadline
    const ncclResult_t status = ncclCommInitRankConfig(&c->comm, size, nid, rank, &config);
    if (status != ncclSuccess && status != ncclInProgress) fail("ncclCommInitRankConfig", status);
    if (!settle(c->comm, status, "ncclCommInitRankConfig", after(timeout_seconds))) {
      ncclCommAbort(c->comm);
      c->comm = nullptr;
      throw Error("xtr: NCCL communicator of " + std::to_string(size) + " ranks not formed within " +
                  std::to_string(int(timeout_seconds)) + " s (rank " + std::to_string(rank) +
                  "): another rank has died or hangs (XTR_DISTRIBUTED_TIMEOUT sets the limit)");
    }
  } catch (...) {
    destroy(c, true);
    throw;
  }
  return c;
}

void destroy(Comm* c, bool abort) noexcept {
  if (c == nullptr) return;
  if (c->comm != nullptr) {
    if (abort) {
      ncclCommAbort(c->comm);
    } else {
      const ncclResult_t s = ncclCommFinalize(c->comm);
      bool settled = s == ncclSuccess;
      if (s == ncclInProgress) {
        try {
          settled = settle(c->comm, s, "ncclCommFinalize", after(60));
        } catch (...) {
          settled = false;
        }
      }
      if (settled)
        ncclCommDestroy(c->comm);
      else
        ncclCommAbort(c->comm);
    }
  }
  if (c->stream != nullptr) (void)cudaStreamDestroy(c->stream);
  (void)cudaGetLastError();
  delete c;
}

void all_reduce(Comm* c, void* data, std::int64_t count, Type type, Reduction op) {
  require(c != nullptr, "NcclCommunicator: all-reduce on an aborted communicator");
  require(count >= 0, "NcclCommunicator: all-reduce of ", count, " elements");
  if (count == 0) return;
  require_device_memory(data, "an all-reduce buffer");
  enqueued(c,
           ncclAllReduce(data, data, std::size_t(count), type == Type::f32 ? ncclFloat32 : ncclFloat64,
                         op == Reduction::average ? ncclAvg : ncclSum, c->comm, c->stream),
           "ncclAllReduce");
}

void broadcast(Comm* c, void* data, std::int64_t bytes, int root) {
  require(c != nullptr, "NcclCommunicator: broadcast on an aborted communicator");
  require(bytes >= 0 && root >= 0 && root < c->size, "NcclCommunicator: broadcast of ", bytes, " bytes from rank ",
          root, " of ", c->size);
  if (bytes == 0) return;
  require_device_memory(data, "a broadcast buffer");
  enqueued(c, ncclBroadcast(data, data, std::size_t(bytes), ncclUint8, root, c->comm, c->stream), "ncclBroadcast");
}

bool wait(Comm* c, double timeout_seconds) {
  require(c != nullptr, "NcclCommunicator: wait on an aborted communicator");
  const auto deadline = after(timeout_seconds);
  for (int spins = 0;; ++spins) {
    const cudaError_t s = cudaStreamQuery(c->stream);
    if (s == cudaSuccess) return true;
    if (s != cudaErrorNotReady) XTR_CUDA_CHECK(s);
    ncclResult_t async = ncclSuccess;
    if (const ncclResult_t q = ncclCommGetAsyncError(c->comm, &async); q != ncclSuccess)
      fail("a collective", q, c->comm);
    if (async != ncclSuccess && async != ncclInProgress) fail("a collective", async, c->comm);
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace xtr::distributed::nccl
