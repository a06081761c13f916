// A small persistent thread pool. Why our own: an exception escaping an OpenMP region calls
// std::terminate, and a second libgomp beside torch's oversubscribes small machines. Here an exception
// thrown by a task is captured and rethrown in the caller once every thread has stopped.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace selfext {

class ThreadPool {
 public:
  // n_threads counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(task) for every task in [0, n_tasks), tasks handed out dynamically; the caller takes part.
  // Rethrows the first exception any task threw (remaining tasks are skipped). Calls from two threads
  // at once are serialized; a call from inside a task runs inline (no nested parallelism).
  void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn);

 private:
  void worker_loop(int index);
  void run_tasks();

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time

  std::mutex mutex_;
  std::condition_variable wake_;
  uint64_t generation_ = 0;  // guarded by mutex_, mirrored in generation_seen_
  std::atomic<uint64_t> generation_atomic_{0};
  bool stop_ = false;

  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
  std::mutex error_mutex_;
};

// Threads this process may use: SELFEXT_NUM_THREADS if set, else the CPUs in our affinity mask.
int default_thread_count();

// The pool kernels called from Python use; resized by set_num_threads. Shared ownership, so a resize
// while another thread is inside a kernel leaves that kernel's pool alive until it returns.
std::shared_ptr<ThreadPool> default_pool();
void set_default_pool_threads(int n_threads);

}  // namespace selfext
