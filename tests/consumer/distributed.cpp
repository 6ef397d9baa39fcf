// An installed xtr::distributed: a data-parallel step (one process when not started by mpirun).
#include <cmath>
#include <cstdio>

#include <xtr/distributed.hpp>
#include <xtr/xtr.hpp>

int main() {
  using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>>;
  xtr::AutoregressiveWrapper model(
      Net({.num_tokens = 16, .max_seq_len = 8, .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8}}));
  auto comm = xtr::distributed::Communicator::from_environment();
  xtr::distributed::DataParallel dp(comm, model, 2);
  auto optimizer = xtr::Adam(model.parameters(), {.lr = 1e-3});
  const xtr::TokenBatch batch{{1, 2, 3, 4, 5, 6, 7, 8, 9}, {9, 8, 7, 6, 5, 4, 3, 2, 1}};
  model.train();
  auto loss = model(batch);
  dp.backward(loss);
  optimizer.step();
  const double mean = comm.mean(loss.item());
  if (!std::isfinite(mean)) {
    std::printf("FAIL: loss %f\n", mean);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
