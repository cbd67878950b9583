// A small persistent thread pool for the O(n·d) conversion passes. Workers block on a condition
// variable (no spinning), so they never steal cycles from the BLAS threads that run between passes.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace geomfast::cpu {

class ThreadPool {
 public:
  static ThreadPool& instance();
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(part, nparts) on `nparts` threads (the caller is one of them) and waits for all of
  // them, also when one throws: then the first exception (by part) is rethrown after every part
  // has ended (a part still running must not outlive the caller's data, nor a worker's exception
  // end the process).
  void run(int nparts, const std::function<void(int, int)>& fn);
  ~ThreadPool();

 private:
  explicit ThreadPool(int nthreads);
  void loop(int id);
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one job at a time (callers may come from several Python threads)
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  int nparts_ = 0, pending_ = 0;
  std::vector<std::exception_ptr> errors_;  // [nparts] of the running job
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// Splits [0, n) into contiguous ranges, one per thread; fn(begin, end, part).
template <typename F>
void parallel_for(int64_t n, int64_t min_per_part, F&& fn) {
  auto& pool = ThreadPool::instance();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(pool.size(), n / std::max<int64_t>(min_per_part, 1)));
  if (parts == 1) {
    fn(int64_t{0}, n, 0);
    return;
  }
  pool.run(static_cast<int>(parts), [&](int p, int np) {
    const int64_t b = n * p / np, e = n * (p + 1) / np;
    fn(b, e, p);
  });
}

}  // namespace geomfast::cpu
