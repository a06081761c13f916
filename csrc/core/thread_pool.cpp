#include "thread_pool.h"

#include <cstdlib>
#include <memory>

#include "errors.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace selfext {

namespace {
thread_local bool t_inside_pool_task = false;
// Spin this many polls before sleeping: a decode step issues hundreds of short parallel_for calls, and
// waking a sleeping thread costs tens of microseconds.
constexpr int kSpinPolls = 20000;
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  SELFEXT_CHECK(n_threads >= 1, ArgumentError, "n_threads must be >= 1, got ", n_threads);
  SELFEXT_CHECK(n_threads <= 1024, ArgumentError, "n_threads must be <= 1024, got ", n_threads);
  workers_.reserve(n_threads - 1);
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    ++generation_;
    generation_atomic_.store(generation_, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_tasks() {
  const bool was_inside = t_inside_pool_task;
  t_inside_pool_task = true;
  for (;;) {
    if (failed_.load(std::memory_order_relaxed)) break;
    const int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (task >= n_tasks_) break;
    try {
      (*fn_)(task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  t_inside_pool_task = was_inside;
}

void ThreadPool::worker_loop(int) {
  uint64_t seen = 0;
  for (;;) {
    // Spin briefly for the next job, then sleep.
    int polls = 0;
    while (generation_atomic_.load(std::memory_order_acquire) == seen && polls < kSpinPolls) {
      ++polls;
#if defined(__x86_64__) || defined(_M_X64)
      __builtin_ia32_pause();
#endif
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (stop_) return;
    }
    run_tasks();
    busy_workers_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  if (n_threads_ == 1 || n_tasks == 1 || t_inside_pool_task) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  fn_ = &fn;
  n_tasks_ = n_tasks;
  next_task_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  busy_workers_.store(int(workers_.size()), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++generation_;
    generation_atomic_.store(generation_, std::memory_order_release);
  }
  wake_.notify_all();
  run_tasks();
  while (busy_workers_.load(std::memory_order_acquire) != 0) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }
  fn_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

int default_thread_count() {
  if (const char* env = std::getenv("SELFEXT_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    SELFEXT_CHECK(end != env && *end == '\0' && n >= 1 && n <= 1024, ArgumentError,
                  "SELFEXT_NUM_THREADS must be an integer in [1, 1024], got '", env, "'");
    return int(n);
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

namespace {
std::mutex g_pool_mutex;
std::shared_ptr<ThreadPool> g_pool;
}  // namespace

std::shared_ptr<ThreadPool> default_pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = std::make_shared<ThreadPool>(default_thread_count());
  return g_pool;
}

void set_default_pool_threads(int n_threads) {
  auto fresh = std::make_shared<ThreadPool>(n_threads);
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_pool = std::move(fresh);
}

}  // namespace selfext
