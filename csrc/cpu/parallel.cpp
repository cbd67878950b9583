#include "cpu/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "geomfast/gram.hpp"

namespace geomfast::cpu {

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool([] {
    if (const char* env = std::getenv("GEOMFAST_NUM_THREADS")) {
      const int v = std::atoi(env);
      if (v > 0) return v;
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return static_cast<int>(hc ? hc : 1);
  }());
  return pool;
}

ThreadPool::ThreadPool(int nthreads) {
  for (int i = 1; i < nthreads; ++i) workers_.emplace_back([this, i] { loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run(int nparts, const std::function<void(int, int)>& fn) {
  std::lock_guard<std::mutex> serial(run_mu_);
  nparts = std::min(nparts, size());
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    nparts_ = nparts;
    pending_ = nparts - 1;
    errors_.assign(static_cast<size_t>(std::max(nparts, 1)), nullptr);
    ++generation_;
  }
  cv_.notify_all();
  try {
    fn(0, nparts);
  } catch (...) {
    errors_[0] = std::current_exception();  // (only this thread writes part 0)
  }
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [this] { return pending_ == 0; });
  job_ = nullptr;
  for (const auto& e : errors_)
    if (e) std::rethrow_exception(e);
}

void ThreadPool::loop(int id) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int, int)>* job;
    int nparts;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      nparts = nparts_;
    }
    if (id < nparts) {
      std::exception_ptr err;
      try {
        (*job)(id, nparts);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(mu_);
      errors_[static_cast<size_t>(id)] = err;
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
}

}  // namespace geomfast::cpu

namespace geomfast {

ThreadPoolProbe cpu_thread_pool_probe(int nparts, const std::vector<int>& throw_parts, int sleep_ms) {
  auto& pool = cpu::ThreadPool::instance();
  std::atomic<int64_t> ended{0};
  ThreadPoolProbe out;
  out.size = pool.size();
  try {
    pool.run(nparts, [&](int part, int) {
      if (std::find(throw_parts.begin(), throw_parts.end(), part) != throw_parts.end())
        throw std::runtime_error("part " + std::to_string(part));
      std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
      ended.fetch_add(1);
    });
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  out.ended = ended.load();
  return out;
}

}  // namespace geomfast
